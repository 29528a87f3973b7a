//! The int8 side of the executor: which int8 layers pass activations on as int8 (requantized
//! between linear layers, codes through pools after a direct convolution), quantizing an int8
//! convolution's input, and running the int8 kernels over the team.

use super::*;
use crate::catalogue::Int8Layer;
use crate::kernels::q8amx;

/// How an int8 layer gets its quantized input and where its output goes.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Int8Flow {
    /// Which of the two quantized slots holds its input.
    pub(super) slot: usize,
    /// The input is already there (quantized from the samples, or by the previous layer).
    pub(super) prequantized: bool,
    /// The output is requantized straight into the next layer's input slot instead of written
    /// as f32: activations stay int8 between the two layers.
    pub(super) requantize: bool,
}

/// An int8 linear layer (int8 convolutions quantize their im2col buffers instead).
pub(super) fn int8_linear(layer: &Layer) -> bool {
    matches!(&layer.exec, Exec::MatMul(m) if m.int8().is_some() && m.conv.is_none())
}

/// Whether `value` is read by exactly one layer, `reader`, and is not the model's output.
pub(super) fn only_reader(model: &Model, value: usize, reader: usize) -> bool {
    value != model.output_value && model.layers.iter().enumerate().all(|(i, l)| (i == reader) == l.inputs.contains(&value))
}

/// Whether the first layer is an int8 linear layer that alone reads the model input.
pub(super) fn input_fuses_into_int8(model: &Model) -> bool {
    model.layers.first().is_some_and(|l| l.inputs == [0] && int8_linear(l)) && only_reader(model, 0, 0)
}

/// Chains of int8 linear layers where each is the only reader of the previous one's output: the
/// earlier layer requantizes into the later one's input, alternating between the two slots.
pub(super) fn int8_flows(model: &Model, fused_input: bool) -> Vec<Int8Flow> {
    let mut flows = vec![Int8Flow::default(); model.layers.len()];
    if fused_input {
        flows[0].prequantized = true;
    }
    for i in 0..model.layers.len().saturating_sub(1) {
        let (layer, next) = (&model.layers[i], &model.layers[i + 1]);
        let adds = matches!(&layer.exec, Exec::MatMul(m) if m.residual.is_some());
        if int8_linear(layer) && !adds && int8_linear(next) && next.inputs == [layer.output] && only_reader(model, layer.output, i + 1) {
            flows[i].requantize = true;
            flows[i + 1] = Int8Flow { slot: 1 - flows[i].slot, prequantized: true, requantize: false };
        }
    }
    flows
}

/// The values held as int8 codes instead of f32 where the direct int8 kernel runs (AVX-512
/// VNNI): the output of an int8 direct convolution whose chain of sole readers, max pools and
/// flattens, ends in an int8 layer that reads codes (a direct convolution or a linear layer), all
/// quantized with that layer's input quantization. The pools and flattens then move a quarter of
/// the bytes and the int8 layer skips quantizing, with the same result: the maximum of codes is
/// the code of the maximum. Banded columns run their layers row by row in f32 and keep out.
pub(super) fn code_values(model: &Model, schedule: &schedule::Plan) -> Vec<Option<(f32, u8)>> {
    let mut codes = vec![None; model.value_sizes.len()];
    let banded = |l: usize| schedule.columns.iter().any(|c| c.bands > 1 && c.layers.contains(&l));
    let sole_reader = |v: usize| (0..model.layers.len()).find(|&r| only_reader(model, v, r));
    for (l, layer) in model.layers.iter().enumerate() {
        let Exec::MatMul(m) = &layer.exec else { continue };
        // A layer adding a residual writes f32 (`int8_matmul`, `add_residual`).
        if !int8_direct_at_every_width(m) || banded(l) || m.residual.is_some() {
            continue;
        }
        let mut chain = vec![layer.output];
        let target = loop {
            let Some(r) = sole_reader(*chain.last().expect("a value")).filter(|&r| !banded(r)) else { break None };
            match &model.layers[r].exec {
                Exec::Pool { avg: None, .. } | Exec::Flatten => chain.push(model.layers[r].output),
                // Read as the layer's input, not as its residual.
                Exec::MatMul(next)
                    if model.layers[r].inputs[0] == *chain.last().expect("a value")
                        && (int8_direct_at_every_width(next) || int8_linear(&model.layers[r])) =>
                {
                    break next.int8().map(|q| (q.input_scale, q.input_zero));
                }
                _ => break None,
            }
        };
        if target.is_some() {
            chain.into_iter().for_each(|v| codes[v] = target);
        }
    }
    codes
}

/// An int8 convolution's quantized columns for output rows `rows`, the work split over the team.
/// A 1x1 convolution over all rows quantizes its image, which is its own im2col. Others of stride
/// 1 along rows quantize the input rows the band reads into a padded image in `scratch`
/// (`q8conv::quantize_padded`) and unfold its bytes, whole output rows at a time; at other
/// strides, tiles of a multiple of 16 samples quantize the image and unfold its bytes 16 samples
/// at a time, and narrower ones (batch 1: pixels a byte apart) unfold f32 columns into `scratch`
/// and quantize those.
#[allow(clippy::too_many_arguments)] // the layer's input, its quantization and the team
pub(crate) fn quantized_im2col(
    isa: Isa,
    q: &Int8Layer,
    g: &Geometry,
    x: &[f32],
    rows: Range<usize>,
    scratch: &mut [f32],
    qx: &mut [u8],
    team: &Team,
) {
    let cols = q.matrix.cols;
    if g.window.is_pointwise() && rows == (0..g.out_hw[0]) {
        let positions = g.out_hw[0] * g.out_hw[1] * g.w;
        return quantize_split(isa, q, &x[..cols * positions], positions, qx, team);
    }
    let padded = g.window.stride[1] == 1;
    if !padded && !g.w.is_multiple_of(16) {
        let band = rows.len() * g.out_hw[1] * g.w;
        im2col(g, x, rows, &mut scratch[..cols * band], team);
        return quantize_split(isa, q, &scratch[..cols * band], band, qx, team);
    }
    // Both steps split over the team: the image by channels, the unfolding by groups.
    let (image, plane) = if padded {
        let image: &mut [u8] = bytemuck::cast_slice_mut(&mut scratch[..q8conv::padded_len(g).div_ceil(4)]);
        (image, q8conv::padded_plane(g))
    } else {
        (bytemuck::cast_slice_mut(&mut scratch[..x.len().div_ceil(4)]), g.in_hw[0] * g.in_hw[1] * g.w)
    };
    let per_part = split_len(team, g.channels * plane, plane) / plane.max(1);
    team.for_each(image[..g.channels * plane].chunks_mut((per_part * plane).max(1)).enumerate().collect(), |(p, image)| {
        let channels = p * per_part..((p + 1) * per_part).min(g.channels);
        if padded {
            return q8conv::quantize_padded(isa, g, x, rows.clone(), channels, (q.input_scale, q.input_zero), image);
        }
        let (row, input) = (g.in_hw[1] * g.w, g.input_rows(rows.clone()));
        for (c, image) in channels.zip(image.chunks_mut(plane)) {
            let span = input.start * row..input.end * row;
            q8::quantize_values(isa, &x[c * plane..][span.clone()], q.input_scale, q.input_zero, &mut image[span]);
        }
    });
    let (groups, band) = (cols.div_ceil(4), rows.len() * g.out_hw[1] * g.w);
    let per_part = split_len(team, groups * band, band) / band.max(1);
    let image = &*image;
    team.for_each(qx[..groups * band * 4].chunks_mut((per_part * band * 4).max(1)).enumerate().collect(), |(p, qx)| {
        let part = p * per_part..((p + 1) * per_part).min(groups);
        match padded {
            true => q8conv::im2col_u8_padded(isa, g, image, rows.clone(), part, q.input_zero, qx),
            false => q8conv::im2col_u8(isa, g, image, rows.clone(), part, q.input_zero, qx),
        }
    });
}

/// `q8::quantize` of a `[features, ld]` tile with the layer's input quantization, its features
/// split over the team in whole groups of four.
fn quantize_split(isa: Isa, q: &Int8Layer, x: &[f32], ld: usize, qx: &mut [u8], team: &Team) {
    let k = x.len() / ld.max(1);
    let per_part = (split_len(team, k * ld, 4 * ld) / ld.max(1)).next_multiple_of(4);
    let parts = qx[..q8::quantized_len(k, ld)].chunks_mut(per_part * ld).enumerate().collect();
    team.for_each(parts, |(p, out)| {
        let features = p * per_part..((p + 1) * per_part).min(k);
        let x = &x[features.start * ld..features.end * ld];
        q8::quantize(isa, x, features.len(), ld, q.input_scale, q.input_zero, out)
    });
}

/// Whether an int8 convolution runs the direct kernel on tiles of one sample and on wider ones:
/// the codes it writes or reads (`code_values`) must be there whatever the width of a tile (a
/// batch's last tile may hold one sample where the others hold more).
fn int8_direct_at_every_width(m: &MatMul) -> bool {
    m.kernel(true) == Kernel::Int8Direct && m.kernel(false) == Kernel::Int8Direct
}

/// Whether an int8 convolution runs the direct kernel on tiles of `w` samples (else im2col and
/// the grouped kernel; the compiler timed the two where the CPU has AVX-512 VNNI).
pub(super) fn uses_int8_direct(m: &MatMul, w: usize) -> bool {
    m.kernel(w == 1) == Kernel::Int8Direct
}

/// Output rows `rows` of an int8 convolution by the direct kernel: the input rows they read are
/// quantized into the shifted image (`bufs`: a row buffer and the image), then the output
/// channels split over the team.
#[allow(clippy::too_many_arguments)] // conv_direct's arguments plus the two buffers
pub(super) fn conv_q8_direct(
    isa: Isa,
    m: &MatMul,
    g: &Geometry,
    x: q8direct::Source,
    y: q8direct::Out,
    rows: Range<usize>,
    bufs: (&mut [u8], &mut [u8]),
    team: &Team,
) {
    let threads = team.threads();
    let (Some(q), Some(sc)) = (m.int8(), m.kernels.shift()) else { unreachable!("an int8 convolution on the direct kernel") };
    let (row_buf, xs) = bufs;
    q8direct::shift_image(isa, g, sc, x, rows.clone(), row_buf, xs);
    let xs = &*xs;
    if !splits(m, rows.len() * g.out_hw[1] * g.w, threads) {
        return q8direct::conv_q8_direct(isa, sc, &q.dequant, g, xs, y, 0..m.rows, rows);
    }
    let per_part = m.rows.div_ceil(threads * 2);
    team.for_each(y.split(per_part * g.out_hw[0] * g.out_hw[1] * g.w).into_iter().enumerate().collect(), |(p, y)| {
        let channels = p * per_part..((p + 1) * per_part).min(m.rows);
        q8direct::conv_q8_direct(isa, sc, &q.dequant, g, xs, y, channels, rows.clone())
    });
}

/// The int8 kernel on a quantized `[groups, w, 4]` tile (the columns of a tile of `samples`
/// samples), splitting rows over `threads` (in whole groups of four when the output is
/// requantized): the AMX tiles where the layer runs them at that many samples, else the grouped
/// kernel.
///
/// `residual` (laid out as the f32 output) is the layer's second input where it adds one
/// (`MatMul::residual`): each part of the rows split over the team gets it as soon as the kernel
/// has written the part, while the part is in cache; other outputs get it in a pass after.
#[allow(clippy::too_many_arguments)] // the kernel's arguments, the residual and the team
pub(super) fn int8_matmul(
    isa: Isa,
    layer: &MatMul,
    x: &[u8],
    w: usize,
    samples: usize,
    out: q8::Output,
    residual: Option<&[f32]>,
    team: &Team,
) {
    let threads = team.threads();
    let Some(q) = layer.int8() else { unreachable!("an int8 layer") };
    let residual = residual.filter(|_| layer.residual.is_some());
    let m = &q.matrix;
    let tiles = match layer.kernels.int8_kernel(samples == 1) {
        Some(Int8Kernel::Tiles(tiles)) => Some(&**tiles),
        _ => None,
    };
    let add = |y: &mut [f32], r: &[f32]| {
        let Some(a) = layer.residual else { unreachable!("a layer adding a residual") };
        elementwise::add_in_place(isa, y, r, a.relu, a.fake_quant)
    };
    match (out, residual) {
        (q8::Output::F32(y), Some(r)) if splits(layer, w, threads) => {
            let ranges = match tiles {
                Some(t) => t.row_parts(threads * 2),
                None => balanced_ranges(&m.row_ptr, threads * 4),
            };
            team.for_each(output_parts(q8::Output::F32(y), ranges, w), |(rows, out)| {
                let q8::Output::F32(y) = out else { unreachable!("f32 parts") };
                let at = rows.start * w..rows.end * w;
                match tiles {
                    Some(t) => q8amx::matmul_into(t, x, w, q8::Output::F32(&mut *y), rows, &q.dequant),
                    None => q8::spmm_q8_into(isa, m, x, w, q8::Output::F32(&mut *y), rows, &q.dequant),
                }
                add(y, &r[at]);
            });
        }
        (q8::Output::F32(y), Some(r)) => {
            int8_matmul_rows(isa, layer, x, w, q8::Output::F32(&mut *y), tiles, team);
            add_residual(isa, layer, Some(r), &mut y[..m.rows * w], team);
        }
        (q8::Output::F32Rows { y, stride }, Some(r)) => {
            int8_matmul_rows(isa, layer, x, w, q8::Output::F32Rows { y: &mut *y, stride }, tiles, team);
            for o in 0..m.rows {
                let at = o * stride..o * stride + w;
                add(&mut y[at.clone()], &r[at]);
            }
        }
        (q8::Output::Quantized { .. }, Some(_)) => unreachable!("a layer adding a residual writes f32 (`int8_flows`)"),
        (out, None) => int8_matmul_rows(isa, layer, x, w, out, tiles, team),
    }
}

/// `int8_matmul` without a residual: the AMX kernel where the layer has `tiles`, else the int8
/// kernel, its rows split over the team where the work is large enough.
fn int8_matmul_rows(isa: Isa, layer: &MatMul, x: &[u8], w: usize, out: q8::Output, tiles: Option<&q8amx::TileMatrix>, team: &Team) {
    let threads = team.threads();
    let Some(q) = layer.int8() else { unreachable!("an int8 layer") };
    if let Some(tiles) = tiles {
        return tiles_matmul(tiles, q, x, w, out, splits(layer, w, threads).then_some(team));
    }
    let m = &q.matrix;
    if !splits(layer, w, threads) {
        return q8::spmm_q8_into(isa, m, x, w, out, 0..m.rows, &q.dequant);
    }
    match out {
        // Band rows come from band steps, which run on one thread (see `Session::execute`).
        rows @ q8::Output::F32Rows { .. } => q8::spmm_q8_into(isa, m, x, w, rows, 0..m.rows, &q.dequant),
        out => {
            let ranges = balanced_ranges(&m.row_ptr, threads * 4);
            let ranges = match out {
                q8::Output::Quantized { .. } => ranges.into_iter().filter_map(|r| whole_groups(r, m.rows)).collect(),
                _ => ranges,
            };
            team.for_each(output_parts(out, ranges, w), |(r, out)| q8::spmm_q8_into(isa, m, x, w, out, r, &q.dequant));
        }
    }
}

/// The AMX kernel on a quantized tile, its rows split over the team (in whole tiles of 16 rows)
/// when given one.
fn tiles_matmul(tiles: &q8amx::TileMatrix, q: &Int8Layer, x: &[u8], w: usize, out: q8::Output, team: Option<&Team>) {
    match (out, team) {
        (out @ q8::Output::F32Rows { .. }, _) | (out, None) => q8amx::matmul_into(tiles, x, w, out, 0..tiles.rows, &q.dequant),
        (out, Some(team)) => team.for_each(output_parts(out, tiles.row_parts(team.threads()), w), |(r, out)| {
            q8amx::matmul_into(tiles, x, w, out, r, &q.dequant)
        }),
    }
}

/// `out` (f32 rows or requantized rows, `w` samples each) cut along consecutive row ranges, the
/// first starting at row 0 (requantized ranges start on a multiple of 4): each range with its part.
fn output_parts<'y>(out: q8::Output<'y>, ranges: Vec<Range<usize>>, w: usize) -> Vec<(Range<usize>, q8::Output<'y>)> {
    let mut parts = Vec::with_capacity(ranges.len());
    match out {
        q8::Output::F32(mut rest) => {
            for r in ranges {
                let (head, tail) = rest.split_at_mut(r.len() * w);
                parts.push((r, q8::Output::F32(head)));
                rest = tail;
            }
        }
        q8::Output::Quantized { y: mut rest, inv_scale, zero } => {
            for r in ranges {
                let (head, tail) = rest.split_at_mut(q8::quantized_len(r.len(), w));
                parts.push((r, q8::Output::Quantized { y: head, inv_scale, zero }));
                rest = tail;
            }
        }
        q8::Output::F32Rows { .. } => unreachable!("rows `stride` apart are not split"),
    }
    parts
}

/// A range of rows widened to whole groups of four: each start moves down to a multiple of 4,
/// each end too (or stays at `rows`); a range left empty is dropped. Applied to consecutive
/// ranges that cover `0..rows`, the results still cover it without overlapping.
pub(super) fn whole_groups(r: Range<usize>, rows: usize) -> Option<Range<usize>> {
    let end = if r.end == rows { rows } else { r.end / 4 * 4 };
    let start = r.start / 4 * 4;
    (end > start).then_some(start..end)
}

#[cfg(test)]
mod tests {
    use super::{Int8Layer, quantized_im2col, whole_groups};
    use crate::graph::Window;
    use crate::kernels::q8::{self, Dequant, Q8Matrix};
    use crate::kernels::window::{self, Geometry};
    use crate::kernels::{Isa, active_isa};
    use crate::team::Team;

    /// An int8 layer of `cols` inputs quantized with scale 0.05 and zero point 7 (weights unused).
    fn layer(cols: usize) -> Int8Layer {
        let dequant = Dequant { bias: vec![0.0], mult: vec![1.0], zero_corr: vec![0], relu: false, fake_quant: None };
        Int8Layer { matrix: Q8Matrix::from_int8(&vec![0; cols], 1, cols), dequant, input_scale: 0.05, input_zero: 7 }
    }

    #[test]
    fn quantized_columns_match_im2col_then_quantize_on_any_team_and_band() {
        let isa = active_isa().unwrap_or(Isa::Scalar);
        // The last three are large enough to split over two threads (`PARALLEL_VALUES`): in parts
        // of whole groups of four features out of 201 and 207, and by channels and groups.
        for (kernel, pads, channels, w) in
            [(1, 0, 6, 1), (1, 0, 9, 3), (3, 1, 5, 1), (3, 1, 3, 16), (1, 0, 8, 16), (1, 0, 201, 1), (3, 1, 23, 1), (3, 1, 12, 16)]
        {
            let (h, wd) = (15, 13);
            let window = Window { kernel: [kernel; 2], stride: [1, 1], pads: [pads; 4], dilation: [1, 1], ceil_mode: false };
            let g = Geometry { channels, in_hw: [h, wd], out_hw: [h, wd], window, w };
            let q = layer(channels * kernel * kernel);
            let x: Vec<f32> = (0..channels * h * wd * w).map(|i| ((i * 37) % 101) as f32 * 0.013 - 0.4).collect();
            for rows in [0..h, 2..9] {
                let band = rows.len() * wd * w;
                let mut cols = vec![0.0; q.matrix.cols * band];
                window::im2col_rows(&g, &x, rows.clone(), &mut cols);
                let mut want = vec![0u8; q8::quantized_len(q.matrix.cols, band)];
                q8::quantize_ref(&cols, q.matrix.cols, band, q.input_scale, q.input_zero, &mut want);
                for threads in [1, 2] {
                    let team = Team::new(threads).unwrap();
                    let mut scratch = vec![0.0; q.matrix.cols * band + x.len()];
                    let mut got = vec![0u8; want.len()];
                    quantized_im2col(isa, &q, &g, &x, rows.clone(), &mut scratch, &mut got, &team);
                    assert_eq!(got, want, "kernel {kernel}, {channels} channels, {w} samples, rows {rows:?}, {threads} threads");
                }
            }
        }
    }

    #[test]
    fn row_ranges_widen_to_whole_groups_of_four_and_still_cover_the_rows() {
        assert_eq!(whole_groups(0..6, 10), Some(0..4));
        assert_eq!(whole_groups(6..10, 10), Some(4..10));
        assert_eq!(whole_groups(5..7, 10), None);
        assert_eq!(whole_groups(0..3, 3), Some(0..3));
        for rows in 1..40 {
            for cut in 0..=rows {
                let parts: Vec<_> =
                    [0..cut, cut..rows].into_iter().filter(|r| !r.is_empty()).filter_map(|r| whole_groups(r, rows)).collect();
                assert_eq!(parts.first().unwrap().start, 0);
                assert_eq!(parts.last().unwrap().end, rows);
                assert!(parts.windows(2).all(|p| p[0].end == p[1].start && p[1].start % 4 == 0));
            }
        }
    }
}
