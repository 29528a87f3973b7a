//! Row bands: a banded column runs layer by layer over the rows each band of its last output
//! needs (`band_steps`); at batch 1 on several threads, a part of the bands per thread, each on a
//! chunk of its own (`band_parts`, `run_band_parts`).

use super::*;

/// Layers and the output rows each computes, in the order they run (a banded column's steps).
pub(super) type Steps = Vec<(usize, Range<usize>)>;

/// A banded column's bands cut into one part per thread, for a batch of one tile on several
/// threads: each part's steps as in `band_steps` (its first band computing every row it needs,
/// border rows of the previous part included), the values the column reads from outside it, and
/// its last layer.
#[derive(Debug, Clone)]
pub(super) struct BandParts {
    pub(super) steps: Vec<Steps>,
    inputs: Vec<usize>,
    last: usize,
}

/// A banded column of a one-tile batch as `parts` on the team's threads: part 0 on the tile's
/// chunk, part k on `spare[k - 1]`. The column's inputs are copied into the spare chunks first,
/// and after the parts, each one's rows of the column's last output are copied into the tile's
/// chunk; both copies split over the team.
pub(super) fn run_band_parts(
    model: &Model,
    plan: &Plan,
    parts: &BandParts,
    chunk: &mut [f32],
    spare: &mut [&mut [f32]],
    team: &Team,
    solo: &Team,
) {
    let (inputs, last, parts) = (&parts.inputs, parts.last, &parts.steps);
    let ld = plan.ld(0);
    let region = |v: usize| plan.offsets[v]..plan.offsets[v] + model.value_sizes[v] * ld;
    let spare = &mut spare[..parts.len() - 1];
    {
        // Values that share a region (`shared_regions`), or lie inside another's (a
        // concatenation's inputs in its output, `concat_regions`), are copied once.
        let mut regions: Vec<Range<usize>> = inputs.iter().map(|&v| region(v)).collect();
        regions.sort_by_key(|r| (r.start, r.end));
        let regions = regions.into_iter().fold(Vec::<Range<usize>>::new(), |mut merged, r| {
            match merged.last_mut() {
                Some(last) if r.start < last.end => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
            merged
        });
        let source: &[f32] = chunk;
        let copies = spare
            .iter_mut()
            .flat_map(|part| disjoint_mut(part, regions.clone()).into_iter().zip(regions.iter().map(|r| &source[r.clone()])));
        copy_over(team, copies.collect());
    }
    {
        let chunks: Vec<Mutex<&mut [f32]>> =
            std::iter::once(&mut *chunk).chain(spare.iter_mut().map(|s| &mut **s)).map(Mutex::new).collect();
        team.run_some(parts.len(), &|k| {
            let mut part = chunks[k].lock().unwrap_or_else(|e| e.into_inner());
            for (l, rows) in &parts[k] {
                run_layer_rows(model, plan, *l, 0, &mut part, solo, rows.clone());
            }
        });
    }
    // Each spare part's rows of the last output, channel by channel: `[channels, height, row]`.
    let (v, shape) = (model.layers[last].output, &model.layers[last].out_shape);
    let (height, row) = (shape[1], shape[2] * ld);
    let mut ranges = Vec::new();
    let mut sources = Vec::new();
    for (part, steps) in spare.iter().zip(&parts[1..]) {
        for (_, rows) in steps.iter().filter(|(l, _)| *l == last) {
            for ch in 0..shape[0] {
                let at = plan.offsets[v] + (ch * height + rows.start) * row..plan.offsets[v] + (ch * height + rows.end) * row;
                sources.push(&part[at.clone()]);
                ranges.push(at);
            }
        }
    }
    copy_over(team, disjoint_mut(chunk, ranges).into_iter().zip(sources).collect());
}

/// Below this many floats a copy runs on the calling thread (waking the team costs more).
const PARALLEL_COPY: usize = 1 << 15;

/// A copy to do: destination and source, of one length.
type CopyJob<'a> = (&'a mut [f32], &'a [f32]);

/// Does every `(to, from)` copy, the work split evenly over the team's threads.
fn copy_over(team: &Team, copies: Vec<CopyJob>) {
    let total: usize = copies.iter().map(|(to, _)| to.len()).sum();
    let threads = team.threads().min(total.div_ceil(PARALLEL_COPY)).max(1);
    if threads == 1 {
        copies.into_iter().for_each(|(to, from)| to.copy_from_slice(from));
        return;
    }
    // Cut the copies into pieces so that each thread gets `share` floats.
    let share = total.div_ceil(threads);
    let mut jobs: Vec<Vec<CopyJob>> = (0..threads).map(|_| Vec::new()).collect();
    let (mut thread, mut filled) = (0, 0);
    for (mut to, mut from) in copies {
        while !to.is_empty() {
            let n = to.len().min(share - filled);
            let (head, tail) = std::mem::take(&mut to).split_at_mut(n);
            jobs[thread].push((head, &from[..n]));
            (to, from) = (tail, &from[n..]);
            filled += n;
            if filled == share && thread + 1 < threads {
                (thread, filled) = (thread + 1, 0);
            }
        }
    }
    let jobs: Vec<Mutex<Vec<CopyJob>>> = jobs.into_iter().map(Mutex::new).collect();
    team.run_some(threads, &|k| {
        for (to, from) in jobs[k].lock().unwrap_or_else(|e| e.into_inner()).iter_mut() {
            to.copy_from_slice(from);
        }
    });
}

/// Mutable views of the given non-overlapping `ranges` of `buf`, in the order given.
fn disjoint_mut(buf: &mut [f32], ranges: Vec<Range<usize>>) -> Vec<&mut [f32]> {
    let mut order: Vec<usize> = (0..ranges.len()).collect();
    order.sort_by_key(|&i| ranges[i].start);
    let mut views: Vec<Option<&mut [f32]>> = (0..ranges.len()).map(|_| None).collect();
    let (mut rest, mut at) = (buf, 0);
    for i in order {
        let r = &ranges[i];
        assert!(r.start >= at, "overlapping ranges");
        let (_, tail) = std::mem::take(&mut rest).split_at_mut(r.start - at);
        let (view, tail) = tail.split_at_mut(r.len());
        views[i] = Some(view);
        (rest, at) = (tail, r.end);
    }
    views.into_iter().map(|v| v.expect("every range has a view")).collect()
}

/// A banded column's bands in one part per thread (`BandParts`), for a batch of one tile on
/// several threads; none where the column has one band, or where a value it computes other than
/// its last layer's output is read after it (parts compute only the rows their bands need, and
/// only the last layer's rows are gathered back).
pub(super) fn band_parts(model: &Model, column: &schedule::Column, tiles: usize, threads: usize) -> Option<BandParts> {
    let parts = threads.min(column.bands);
    if tiles != 1 || parts < 2 {
        return None;
    }
    let last = model.layers[column.layers.end - 1].output;
    let escapes = |l: usize| {
        let v = model.layers[l].output;
        v == model.output_value
            || model.layers.iter().enumerate().any(|(r, reader)| !column.layers.contains(&r) && reader.inputs.contains(&v))
    };
    if column.layers.clone().any(|l| model.layers[l].output != last && escapes(l)) {
        return None;
    }
    let produced: Vec<usize> = column.layers.clone().map(|l| model.layers[l].output).collect();
    let mut inputs: Vec<usize> =
        column.layers.clone().flat_map(|l| model.layers[l].inputs.clone()).filter(|v| !produced.contains(v)).collect();
    inputs.sort_unstable();
    inputs.dedup();
    let steps = (0..parts).map(|k| band_steps(model, column, k * column.bands / parts..(k + 1) * column.bands / parts)).collect();
    Some(BandParts { steps, inputs, last: column.layers.end - 1 })
}

/// The steps of bands `bands` of a banded column (see `Plan::band_steps`).
pub(super) fn band_steps(model: &Model, column: &schedule::Column, bands: Range<usize>) -> Steps {
    let layers = column.layers.clone();
    let mut done = vec![0usize; layers.len()];
    let mut steps = Vec::new();
    for band in bands {
        let need = schedule::band_rows(model, layers.clone(), column.bands, band);
        for (i, l) in layers.clone().enumerate() {
            // Bands move down the image, so the rows a band needs never start above those an
            // earlier band needed: everything above `done` is already there.
            let rows = need[i].start.max(done[i])..need[i].end;
            if !rows.is_empty() {
                done[i] = rows.end;
                steps.push((l, rows));
            }
        }
    }
    steps
}

/// Output rows `rows` of a spatial layer (convolution, pool or element-wise) on tile `t`.
pub(super) fn run_layer_rows(model: &Model, plan: &Plan, l: usize, t: usize, chunk: &mut [f32], team: &Team, rows: Range<usize>) {
    let layer = &model.layers[l];
    let w = plan.ld(t);
    let isa = model.options.isa;
    let range = |v: usize| plan.offsets[v]..plan.offsets[v] + model.value_sizes[v] * w;
    let ins: Vec<Range<usize>> = layer.inputs.iter().map(|&v| range(v)).collect();
    // Output rows of every channel: `[channels, height, width, w]`, one band per channel.
    let (height, row_len) = (layer.out_shape[1], layer.out_shape[2] * w);
    let band = |c: usize| c * height * row_len + rows.start * row_len..c * height * row_len + rows.end * row_len;
    let channels = layer.out_shape[0];
    if let Exec::MatMul(m) = &layer.exec {
        let g = Geometry { w, ..m.conv.expect("a spatial matmul is a convolution") };
        let band_cols = rows.len() * g.out_hw[1] * w;
        let (values, rest) = chunk.split_at_mut(plan.scratch.start);
        // A residual the kernel does not add itself: each channel's band rows get it after.
        let add_band_residual = |xs: &[&[f32]], y: &mut [f32]| {
            (0..m.rows).for_each(|c| add_residual(isa, m, xs.get(1).map(|r| &r[band(c)]), &mut y[band(c)], team))
        };
        if m.runs_direct(isa, w) {
            let (xs, y) = regions(values, &ins, range(layer.output));
            return conv_direct(isa, m, &g, xs[0], xs.get(1).copied(), y, rows.clone(), team);
        }
        if has_strided_form(m, band_cols, w == 1) {
            // The kernel reads the band's columns (unfolded from the image by the kernel itself,
            // a 1x1 convolution's own rows of each channel in place, else im2col's) and writes
            // each channel's band rows in place (planes apart), adding the residual as it stores:
            // no copy of the band, no pass of its own for the residual.
            let (plane, at) = (height * row_len, rows.start * row_len);
            let (unfolds, pointwise) = (m.unfolds(w), g.window.is_pointwise());
            let cols = &mut rest[..if unfolds || pointwise { 0 } else { m.cols * band_cols }];
            if !unfolds && !pointwise {
                im2col(&g, &values[ins[0].clone()], rows.clone(), cols, team);
            }
            let (xs, y) = regions(values, &ins, range(layer.output));
            let residual = xs.get(1).map(|r| &r[at..]);
            if unfolds {
                let image = Unfold::new(&g, xs[0], rows.clone());
                matmul_unfolded(isa, m, &image, residual, &mut y[at..], plane, team, w == 1);
            } else {
                let (x, ld) = if pointwise {
                    (&xs[0][at..], spmm::Ld { x: plane, y: plane })
                } else {
                    (&cols[..], spmm::Ld { x: band_cols, y: plane })
                };
                matmul_rows(isa, m, x, band_cols, residual, &mut y[at..], ld, team, w == 1);
            }
            for c in 0..m.rows {
                post(isa, m.post_after_kernel(), &mut y[c * plane + at..c * plane + rows.end * row_len], team);
            }
            return;
        }
        let (scratch, slots) = rest.split_at_mut(plan.quantized - plan.scratch.start);
        if uses_int8_direct(m, g.w) {
            // Banded columns hold no codes (`code_values`).
            let (xs, y) = regions(values, &ins, range(layer.output));
            let Some(q) = m.int8() else { unreachable!("an int8 convolution") };
            let x = q8direct::Source::F32 { x: xs[0], scale: q.input_scale, zero: q.input_zero };
            let bufs = (bytemuck::cast_slice_mut(scratch), bytemuck::cast_slice_mut(&mut slots[..plan.quantized_len]));
            conv_q8_direct(isa, m, &g, x, q8direct::Out::F32(&mut *y), rows.clone(), bufs, team);
            return add_band_residual(&xs, y);
        }
        // The band's output goes to scratch space first, then the f32 columns (or for int8, the
        // quantized image).
        let (band_out, cols) = scratch.split_at_mut(m.rows * band_cols);
        let x = &values[ins[0].clone()];
        match m.int8() {
            Some(q) => {
                // The int8 kernel writes the band's rows of each channel straight into the image.
                let qx: &mut [u8] = bytemuck::cast_slice_mut(&mut slots[..q8::quantized_len(m.cols, band_cols).div_ceil(4)]);
                quantized_im2col(isa, q, &g, x, rows.clone(), cols, qx, team);
                let (xs, y) = regions(values, &ins, range(layer.output));
                let out = q8::Output::F32Rows { y: &mut y[band(0).start..], stride: height * row_len };
                return int8_matmul(isa, m, qx, band_cols, g.w, out, xs.get(1).map(|r| &r[band(0).start..]), team);
            }
            None => {
                im2col(&g, x, rows.clone(), cols, team);
                matmul(isa, m, cols, band_cols, None, band_out, team, g.w == 1);
                post(isa, m.post_after_kernel(), band_out, team);
            }
        }
        let views = disjoint_mut(&mut values[range(layer.output)], (0..m.rows).map(band).collect());
        copy_over(team, views.into_iter().zip(band_out.chunks_exact(band_cols)).collect());
        if m.residual.is_some() {
            let (xs, y) = regions(values, &ins, range(layer.output));
            add_band_residual(&xs, y);
        }
        return;
    }
    let (xs, y) = regions(chunk, &ins, range(layer.output));
    match &layer.exec {
        Exec::Pool { geometry, avg } => window::pool_rows(isa, &Geometry { w, ..*geometry }, xs[0], y, *avg, rows),
        Exec::Affine { scale, shift, relu, .. } => {
            (0..channels).for_each(|c| elementwise::affine(&xs[0][band(c)], scale[c], shift[c], &mut y[band(c)], *relu))
        }
        Exec::Relu => (0..channels).for_each(|c| elementwise::relu_tile(&xs[0][band(c)], &mut y[band(c)])),
        Exec::Add { relu, fake_quant } => (0..channels)
            .for_each(|c| elementwise::add_fake_quantized(isa, &xs[0][band(c)], &xs[1][band(c)], &mut y[band(c)], *relu, *fake_quant)),
        Exec::Unary(f) => (0..channels).for_each(|c| f.apply(isa, &xs[0][band(c)], &mut y[band(c)])),
        _ => unreachable!("only spatial layers run in row bands"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_over_the_team_land_where_serial_ones_do() {
        let team = Team::new(2).unwrap();
        // Ranges out of order, of sizes below, at and above a thread's share, some empty.
        let ranges = [300_000..301_000, 0..40_000, 50_000..50_000, 100_000..170_001, 40_000..40_007, 200_000..299_999];
        let source: Vec<f32> = (0..400_000).map(|i| i as f32).collect();
        for threads_team in [&team, &Team::new(1).unwrap()] {
            let mut got = vec![-1.0f32; source.len()];
            let views = disjoint_mut(&mut got, ranges.to_vec());
            copy_over(threads_team, views.into_iter().zip(ranges.iter().map(|r| &source[r.clone()])).collect());
            let mut want = vec![-1.0f32; source.len()];
            ranges.iter().for_each(|r| want[r.clone()].copy_from_slice(&source[r.clone()]));
            assert!(got == want, "{} threads", threads_team.threads());
        }
    }
}
