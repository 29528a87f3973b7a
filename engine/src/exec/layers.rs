//! The fp32 layers: each weighted layer on the kernel chosen for it, split over the team where
//! the work is large enough, and the element-wise and pooling layers.

use super::*;

/// Output rows `rows` of a direct convolution, output channels split over `threads`, with the
/// layer's `residual` (laid out as `y`) added where it has one: by the kernel to its sums, or
/// after a fused function (which comes before the addition).
#[allow(clippy::too_many_arguments)] // the layer, its tiles and the part
pub(super) fn conv_direct(
    isa: Isa,
    m: &MatMul,
    g: &Geometry,
    x: &[f32],
    residual: Option<&[f32]>,
    y: &mut [f32],
    rows: Range<usize>,
    team: &Team,
) {
    let threads = team.threads();
    let Some(taps) = m.kernels.taps() else { unreachable!("a direct convolution's taps") };
    let plane = g.out_hw[0] * g.out_hw[1] * g.w;
    let (fused, after) = residual_split(m, residual);
    let relu = kernel_relu(m, fused);
    // The rows `rows` of each channel of `y`, where a fused function applies, while they are in cache.
    let post = |y: &mut [f32]| {
        if let Some(f) = m.post {
            let row = g.out_hw[1] * g.w;
            y.chunks_mut(plane).for_each(|c| f.apply_in_place(isa, &mut c[rows.start * row..rows.end * row]));
        }
    };
    if !splits(m, rows.len() * g.out_hw[1] * g.w, threads) {
        direct::conv_direct_decoded(isa, taps, &m.bias, g, x, y, 0..m.rows, rows.clone(), relu, fused);
        post(&mut y[..m.rows * plane]);
    } else {
        // Parts of whole blocks where channels share taps (`direct::BLOCK` of them run together).
        let per_part = m.rows.div_ceil(threads * 2).next_multiple_of(if taps.shared_blocks().0 > 0 { direct::BLOCK } else { 1 });
        team.for_each(y[..m.rows * plane].chunks_mut(per_part * plane).enumerate().collect(), |(p, y)| {
            let channels = p * per_part..((p + 1) * per_part).min(m.rows);
            let fused = fused.map(|r| &r[channels.start * plane..]);
            direct::conv_direct_decoded(isa, taps, &m.bias, g, x, y, channels, rows.clone(), relu, fused);
            post(y);
        });
    }
    if let Some(r) = after {
        let row = g.out_hw[1] * g.w;
        let band = |c: usize| c * plane + rows.start * row..c * plane + rows.end * row;
        (0..m.rows).for_each(|c| add_residual(isa, m, Some(&r[band(c)]), &mut y[band(c)], team));
    }
}

/// A convolution on one whole image by Winograd's products, where its one-sample kernel is that
/// and `scratch` holds a part of them (else false, nothing done): parts over the team where the
/// layer's work splits, the residual added by the kernel (after a fused function, which comes
/// before the addition).
#[allow(clippy::too_many_arguments)]
fn conv_winograd(
    isa: Isa,
    m: &MatMul,
    g: &Geometry,
    x: &[f32],
    residual: Option<&[f32]>,
    y: &mut [f32],
    scratch: &mut [f32],
    team: &Team,
) -> bool {
    let Some(wg) = m.one_sample_winograd() else { return false };
    let plane = g.out_hw[0] * g.out_hw[1];
    let (fused, after) = residual_split(m, residual);
    let parts = if splits(m, plane, team.threads()) { team.threads() } else { 1 };
    let y = &mut y[..m.rows * plane];
    if !winograd::conv_winograd(isa, wg, &m.bias, g, x, fused, y, kernel_relu(m, fused), scratch, parts, |job| team.run_some(parts, job)) {
        return false;
    }
    post(isa, m.post, y, team);
    add_residual(isa, m, after, y, team);
    true
}

/// The layer's residual, where it adds one: for the kernel to add to its sums (`.0`), or after a
/// fused function, which comes before the addition (`.1`).
fn residual_split<'a>(m: &MatMul, residual: Option<&'a [f32]>) -> (Option<&'a [f32]>, Option<&'a [f32]>) {
    let residual = residual.filter(|_| m.residual.is_some());
    if m.post.is_none() { (residual, None) } else { (None, residual) }
}

/// A fused function (`MatMul::post`, or what is left of it after the matrix kernels:
/// `MatMul::post_after_kernel`) on `y`, split over the team where it is large.
pub(super) fn post(isa: Isa, f: Option<crate::ops::Unary>, y: &mut [f32], team: &Team) {
    if let Some(f) = f {
        let part = split_len(team, y.len(), 16);
        team.for_each(y.chunks_mut(part).collect(), |y| f.apply_in_place(isa, y));
    }
}

/// A convolution on whole images of `w` samples: its direct kernel, or the image as its own
/// im2col (1x1 at stride 1), or im2col into `scratch` (at least `m.cols * positions * w` values)
/// and the matrix kernel; `residual` is the layer's second input where it adds one.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv(
    isa: Isa,
    m: &MatMul,
    g: Geometry,
    w: usize,
    x: &[f32],
    residual: Option<&[f32]>,
    y: &mut [f32],
    scratch: &mut [f32],
    team: &Team,
) {
    let positions = g.out_hw[0] * g.out_hw[1];
    if m.runs_direct(isa, w) {
        return conv_direct(isa, m, &Geometry { w, ..g }, x, residual, y, 0..g.out_hw[0], team);
    }
    if w == 1 && conv_winograd(isa, m, &g, x, residual, y, scratch, team) {
        return;
    }
    if g.window.is_pointwise() {
        // The image is its own im2col: `[channels, positions * w]`.
        matmul(isa, m, x, positions * w, residual, y, team, w == 1);
    } else if m.unfolds(w) {
        let image = Unfold::new(&Geometry { w, ..g }, x, 0..g.out_hw[0]);
        matmul_unfolded(isa, m, &image, residual, y, positions * w, team, w == 1);
    } else {
        let scratch = &mut scratch[..m.cols * positions * w];
        im2col(&Geometry { w, ..g }, x, 0..g.out_hw[0], scratch, team);
        matmul(isa, m, scratch, positions * w, residual, y, team, w == 1);
    }
    post(isa, m.post_after_kernel(), &mut y[..m.rows * positions * w], team);
}

/// The ReLU a kernel applies to its sums: the residual addition's where it adds the residual
/// itself (`residual` given), else the layer's own (off where a residual follows).
fn kernel_relu(m: &MatMul, residual: Option<&[f32]>) -> bool {
    match (m.residual, residual) {
        (Some(add), Some(_)) => add.relu,
        _ => m.relu,
    }
}

/// `y = act(y + residual)` where the layer adds a residual (`MatMul::residual`) that its kernel
/// did not, on `y` (the layer's outputs or some of them, laid out as `residual`), split over the
/// team where large: bit for bit the addition it replaces.
pub(super) fn add_residual(isa: Isa, m: &MatMul, residual: Option<&[f32]>, y: &mut [f32], team: &Team) {
    let (Some(add), Some(r)) = (m.residual, residual) else { return };
    let part = split_len(team, y.len(), 16);
    team.for_each(y.chunks_mut(part).zip(r.chunks(part)).collect(), |(y, r)| {
        elementwise::add_in_place(isa, y, r, add.relu, add.fake_quant)
    });
}

/// `window::im2col_rows` into `cols`, its input channels split over the team where the copy is
/// large (at batch 1 a 3x3 convolution's im2col of a 56x56 image is a fifth of its time).
pub(super) fn im2col(g: &Geometry, x: &[f32], rows: Range<usize>, cols: &mut [f32], team: &Team) {
    let [kh, kw] = g.window.kernel;
    let per_channel = kh * kw * rows.len() * g.out_hw[1] * g.w;
    let part = split_len(team, g.channels * per_channel, per_channel) / per_channel.max(1);
    let parts = cols[..g.channels * per_channel].chunks_mut((part * per_channel).max(1)).enumerate().collect();
    team.for_each(parts, |(p, cols)| {
        let channels = p * part..((p + 1) * part).min(g.channels);
        window::im2col_channels(g, x, rows.clone(), channels, cols)
    });
}

/// Below about this much work (a few microseconds) handing half of a layer to another thread
/// costs more than it saves, so small layers run on the calling thread. Counted in multiply-adds
/// for the kernels that run over a tile of samples (tens of them per nanosecond), and in
/// gathered weights for the batch-1 kernels (a few per nanosecond).
pub(super) const PARALLEL_WORK: usize = 256 * 1024;

pub(super) const PARALLEL_GATHERS: usize = 32 * 1024;

/// Whether `work` (multiply-adds over `w` columns) is worth splitting over threads.
pub(super) fn worth_splitting(threads: usize, work: usize, w: usize) -> bool {
    threads > 1 && work >= if w == 1 { PARALLEL_GATHERS } else { PARALLEL_WORK }
}

/// Whether a weighted layer splits its rows (or channels) over `threads` on a `[cols, cols_w]`
/// input (a convolution's output positions times the tile width): one rule for every kernel, and
/// for the executor deciding whether a run needs the thread pool at all. The work is the
/// catalogue's for the kernel of tiles of one column or wider ones.
pub(super) fn splits(m: &MatMul, cols_w: usize, threads: usize) -> bool {
    let work = match (m.int8(), m.kernels.f32(cols_w == 1)) {
        // At batch 1 the int8 kernel gathers one 4-byte group per stored group.
        (Some(q), _) if cols_w == 1 => q.matrix.stored_groups(),
        (Some(q), _) => 4 * q.matrix.stored_groups() * cols_w,
        (None, Some(k)) => k.work(m.rows, m.cols, cols_w),
        (None, None) => 0,
    };
    worth_splitting(threads, work, cols_w)
}

/// Each of consecutive row ranges with its part of the output, whose rows lie `ld` apart (the
/// last part keeps the rest).
pub(super) fn row_parts(ranges: Vec<Range<usize>>, y: &mut [f32], ld: usize) -> Vec<(Range<usize>, &mut [f32])> {
    let mut parts = Vec::with_capacity(ranges.len());
    let mut rest = y;
    let last = ranges.len().saturating_sub(1);
    for (i, r) in ranges.into_iter().enumerate() {
        let take = if i == last { rest.len() } else { (r.len() * ld).min(rest.len()) };
        let (head, tail) = rest.split_at_mut(take);
        parts.push((r, head));
        rest = tail;
    }
    parts
}

/// The fp32 kernel a layer runs on tiles of one sample (`one_sample`) or wider ones.
fn f32_kernel(m: &MatMul, one_sample: bool) -> &F32Kernel {
    let Some(k) = m.kernels.f32(one_sample) else { unreachable!("int8 layers run through int8_matmul") };
    k
}

/// `y = layer(x)` for one weighted layer on a `[cols, w]` tile, splitting rows over `threads`, on
/// the kernel chosen for tiles of one sample (`one_sample`: a convolution's columns are its
/// output positions) or for wider ones; `residual` (`[rows, w]`) where the layer adds one. Dense
/// layers of few rows and many columns (im2col of a large image) split by columns instead.
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul(isa: Isa, m: &MatMul, x: &[f32], w: usize, residual: Option<&[f32]>, y: &mut [f32], team: &Team, one_sample: bool) {
    let k = f32_kernel(m, one_sample);
    if let F32Kernel::Dense(wt) = k
        && w >= m.rows
        && splits(m, w, team.threads())
    {
        let parts = team.threads();
        dense::dense_by_columns(isa, wt, m.rows, m.cols, &m.bias, x, w, y, m.relu, parts, |job| team.run(job));
        // The fused Clip that the row kernels clamp as they store.
        post(isa, m.post.filter(|_| m.kernel_clip().is_some()), &mut y[..m.rows * w], team);
        return add_residual(isa, m, residual, &mut y[..m.rows * w], team);
    }
    matmul_rows(isa, m, x, w, residual, y, spmm::Ld::packed(w), team, one_sample)
}

/// Whether `matmul_rows` takes the layer on `w` columns of rows apart: the fp32 kernels, on two
/// columns or more.
pub(super) fn has_strided_form(m: &MatMul, w: usize, one_sample: bool) -> bool {
    w >= 2 && m.kernels.f32(one_sample).is_some()
}

/// A fp32 layer on `w` columns of rows `ld.x` and `ld.y` apart (the residual's rows too; a
/// pointwise convolution on a band of rows reads and writes them in place in whole images;
/// packed on one column): the kernel's row parts over the team where
/// the work is large enough.
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul_rows(
    isa: Isa,
    m: &MatMul,
    x: &[f32],
    w: usize,
    residual: Option<&[f32]>,
    y: &mut [f32],
    ld: spmm::Ld,
    team: &Team,
    one_sample: bool,
) {
    let k = f32_kernel(m, one_sample);
    rows_over_team(m, k, w, residual, y, ld, team, |rows, y, sums| k.run_rows(isa, &m.bias, m.cols, x, w, y, rows, sums))
}

/// A convolution on the output rows `image` unfolds, on its column-blocked kernel (which
/// unfolds each panel from the image itself), into rows of `y` `ld_y` apart (the residual's
/// too): the kernel's row parts over the team where the work is large enough.
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul_unfolded(
    isa: Isa,
    m: &MatMul,
    image: &Unfold,
    residual: Option<&[f32]>,
    y: &mut [f32],
    ld_y: usize,
    team: &Team,
    one_sample: bool,
) {
    let k = f32_kernel(m, one_sample);
    let Some(blocked) = k.unfolding() else { unreachable!("an unfolding convolution's column-blocked kernel") };
    let (w, ld) = (image.columns(), spmm::Ld { x: image.columns(), y: ld_y });
    rows_over_team(m, k, w, residual, y, ld, team, |rows, y, sums| {
        kblocked::spmm_kblocked_unfolded(isa, blocked, &m.bias, image, y, rows, sums)
    })
}

/// `run(rows, y, sums)` over the rows of a layer on `w` columns, rows of `y` (and the residual)
/// `ld.y` apart: all of them on the calling thread, or kernel `k`'s row parts over the team
/// where the work is large enough.
#[allow(clippy::too_many_arguments)]
fn rows_over_team<'r>(
    m: &MatMul,
    k: &F32Kernel,
    w: usize,
    residual: Option<&'r [f32]>,
    y: &mut [f32],
    ld: spmm::Ld,
    team: &Team,
    run: impl Fn(Range<usize>, &mut [f32], spmm::Sums<'r>) + Sync,
) {
    let threads = team.threads();
    let residual = residual.filter(|_| m.residual.is_some());
    let sums = spmm::Sums::new(ld, kernel_relu(m, residual)).with_clip(m.kernel_clip());
    if !splits(m, w, threads) {
        return run(0..m.rows, y, sums.with_residual(residual));
    }
    // A part's rows of the residual: where its rows of `y` lie.
    let residual_of = |r: &Range<usize>| residual.map(|res| &res[r.start * ld.y..]);
    team.for_each(row_parts(k.parts(m.rows, threads), y, ld.y), |(r, y)| run(r.clone(), y, sums.with_residual(residual_of(&r))));
}

/// Below this many values an element-wise layer runs on the calling thread: handing work to the
/// team costs a few microseconds, about what a pass over this many values takes.
pub(super) const PARALLEL_VALUES: usize = 32 * 1024;

/// Values per part when a pass over `n` values is split over the team (whole multiples of
/// `unit`): one part per thread, or all of them where `n` is below `PARALLEL_VALUES`.
pub(super) fn split_len(team: &Team, n: usize, unit: usize) -> usize {
    if team.threads() < 2 || n < PARALLEL_VALUES { n.max(1) } else { n.div_ceil(team.threads()).next_multiple_of(unit.max(1)) }
}

/// `f` on matching parts of `x` and `y` of whole groups of `group` values each, split over the
/// team where there are enough values.
fn split_groups(team: &Team, x: &[f32], y: &mut [f32], group: usize, f: impl Fn(&[f32], &mut [f32]) + Sync) {
    let n = x.len().min(y.len());
    let part = split_len(team, n, group);
    team.for_each(y[..n].chunks_mut(part).zip(x[..n].chunks(part)).collect(), |(y, x)| f(x, y));
}

/// Layer normalization down the columns of a `[scale.len(), cols]` tile: the columns'
/// statistics split over the team by columns, then the rows written split by rows.
fn layer_norm_columns(isa: Isa, scale: &[f32], bias: &[f32], epsilon: f32, x: &[f32], y: &mut [f32], team: &Team) {
    let len = scale.len();
    let n = x.len().min(y.len());
    let cols = n / len.max(1);
    let (mut mean, mut inv) = (vec![0.0f32; cols], vec![0.0f32; cols]);
    let per_part = (split_len(team, n, 16 * len) / len.max(1)).max(1);
    let parts: Vec<_> = mean.chunks_mut(per_part).zip(inv.chunks_mut(per_part)).enumerate().collect();
    team.for_each(parts, |(p, (mean, inv))| {
        let start = p * per_part;
        sequence::column_stats(isa, x, len, cols, start..start + mean.len(), epsilon, mean, inv)
    });
    let rows_per_part = (split_len(team, n, cols) / cols.max(1)).max(1);
    let part = rows_per_part * cols.max(1);
    let parts: Vec<_> = y[..n].chunks_mut(part).zip(x[..n].chunks(part)).enumerate().collect();
    team.for_each(parts, |(p, (y, x))| {
        let first = p * rows_per_part;
        sequence::column_normalize(isa, x, cols, &mean, &inv, &scale[first..], &bias[first..], y)
    });
}

/// `f` on matching parts of `x` and `y`, split over the team where there are enough values.
fn split_values(team: &Team, x: &[f32], y: &mut [f32], f: impl Fn(&[f32], &mut [f32]) + Sync) {
    let n = x.len().min(y.len());
    let part = split_len(team, n, 16);
    team.for_each(y[..n].chunks_mut(part).zip(x[..n].chunks(part)).collect(), |(y, x)| f(x, y));
}

pub(crate) fn run_layer(isa: Isa, exec: &Exec, xs: &[&[f32]], y: &mut [f32], w: usize, team: &Team) {
    let x = xs[0];
    match exec {
        Exec::MatMul(m) => matmul(isa, m, x, w, xs.get(1).copied(), y, team, w == 1),
        Exec::Affine { scale, shift, relu, per_channel } => {
            let n = per_channel * w;
            let channels_per_part = split_len(team, scale.len() * n, 1).div_ceil(n.max(1)).max(1);
            let parts: Vec<_> =
                y[..scale.len() * n].chunks_mut(channels_per_part * n).zip(x.chunks(channels_per_part * n)).enumerate().collect();
            team.for_each(parts, |(p, (y, x))| {
                for (k, (x, y)) in x.chunks(n).zip(y.chunks_mut(n)).enumerate() {
                    let c = p * channels_per_part + k;
                    elementwise::affine(x, scale[c], shift[c], y, *relu);
                }
            });
        }
        Exec::Relu => split_values(team, x, y, elementwise::relu_tile),
        Exec::Flatten => y.copy_from_slice(x),
        Exec::GroupConv { weight, bias, geometry, groups, relu, post, expand } => {
            let g = Geometry { w, ..*geometry };
            let conv = GroupConv { weight, bias, groups: *groups, relu: *relu, post: *post };
            let plane = g.out_hw[0] * g.out_hw[1] * w;
            let out = bias.len();
            let per_part = out.div_ceil(team.threads() * 2).max(1);
            let parts: Vec<_> = y[..out * plane].chunks_mut(per_part * plane).enumerate().collect();
            team.for_each(parts, |(p, y)| {
                let channels = p * per_part..((p + 1) * per_part).min(out);
                match expand {
                    None => group_conv_channels(isa, &g, &conv, x, y, channels),
                    Some(m) => expanded_depthwise(isa, &g, &conv, m, x, y, channels),
                }
            });
        }
        Exec::Unary(f) => split_values(team, x, y, |x, y| f.apply(isa, x, y)),
        Exec::Binary { kind, shape, a_strides, b_strides, constant, constant_first } => {
            let b = match constant {
                Some(c) => elementwise::Operand::Constant(c),
                None => elementwise::Operand::Tile(xs[1]),
            };
            // Whole stretches (`elementwise::stretches`) split over the team.
            let (run, count) = elementwise::stretches(shape, a_strides, b_strides);
            let per_part = split_len(team, count * run * w, run * w) / (run * w).max(1);
            let parts: Vec<_> = y[..count * run * w].chunks_mut(per_part.max(1) * run * w).enumerate().collect();
            team.for_each(parts, |(p, y)| {
                let part = p * per_part..((p + 1) * per_part).min(count);
                elementwise::binary(isa, *kind, shape, x, a_strides, b, b_strides, *constant_first, w, y, part)
            })
        }
        Exec::Concat { outer, blocks } => elementwise::concat(xs, *outer, blocks, w, y),
        Exec::Gather { swap: Some(s), .. } if w == 1 => {
            // One sample: per outer block, parts of its output rows (columns of the input).
            let row = s.rows * s.inner;
            let part = split_len(team, s.cols * row, row) / row;
            let blocks = y[..s.outer * s.cols * row].chunks_mut(s.cols * row).enumerate();
            let parts: Vec<_> =
                blocks.flat_map(|(o, b)| b.chunks_mut(part * row).enumerate().map(move |(k, y)| (o, k * part, y))).collect();
            team.for_each(parts, |(o, c0, y)| transpose::swap_axes(isa, *s, x, o, c0, y));
        }
        Exec::Gather { runs: Some(runs), .. } if w == 1 => {
            // Parts of whole runs, about even in length.
            let total: usize = runs.iter().map(|r| r.len).sum();
            let part = split_len(team, total, 1);
            let (mut parts, mut rest, mut first, mut filled) = (Vec::new(), &mut y[..total], 0, 0);
            for (i, r) in runs.iter().enumerate() {
                filled += r.len;
                if filled >= part || i + 1 == runs.len() {
                    let (head, tail) = std::mem::take(&mut rest).split_at_mut(filled);
                    parts.push((&runs[first..=i], head));
                    (rest, first, filled) = (tail, i + 1, 0);
                }
            }
            team.for_each(parts, |(runs, y)| elementwise::gather_runs(runs, x, y));
        }
        Exec::Gather { sources, .. } => {
            let part = split_len(team, sources.len() * w, 16 * w.max(1)) / w.max(1);
            let parts: Vec<_> = y[..sources.len() * w].chunks_mut(part.max(1) * w).zip(sources.chunks(part.max(1))).collect();
            team.for_each(parts, |(y, sources)| elementwise::gather_rows(sources, x, w, y));
        }
        Exec::Add { relu, fake_quant } => {
            let n = x.len().min(xs[1].len()).min(y.len());
            let part = split_len(team, n, 16);
            let parts: Vec<_> = y[..n].chunks_mut(part).zip(x[..n].chunks(part).zip(xs[1][..n].chunks(part))).collect();
            team.for_each(parts, |(y, (a, b))| elementwise::add_fake_quantized(isa, a, b, y, *relu, *fake_quant));
        }
        Exec::Pool { geometry, avg } => {
            // Channels split over the team where there is enough work (window taps read).
            let g = Geometry { w, ..*geometry };
            let (plane_in, plane_out) = (g.in_hw[0] * g.in_hw[1] * w, g.out_hw[0] * g.out_hw[1] * w);
            let reads = g.channels * plane_out * g.window.kernel[0] * g.window.kernel[1];
            let per_part = if reads < PARALLEL_VALUES { g.channels } else { g.channels.div_ceil(team.threads()) };
            let parts: Vec<_> = y[..g.channels * plane_out].chunks_mut(per_part * plane_out).zip(x.chunks(per_part * plane_in)).collect();
            team.for_each(parts, |(y, x)| window::pool(isa, &Geometry { channels: y.len() / plane_out, ..g }, x, y, *avg));
        }
        Exec::GlobalAvgPool { channels, pixels } => {
            // Channels split over the team where the images are large.
            let image = pixels * w;
            let per_part = split_len(team, channels * image, image).div_ceil(image.max(1)).max(1);
            let parts: Vec<_> = y[..channels * w].chunks_mut(per_part * w.max(1)).zip(x.chunks((per_part * image).max(1))).collect();
            team.for_each(parts, |(y, x)| elementwise::channel_means(isa, x, *pixels, w, y));
        }
        Exec::Softmax { len, masked, zero_nan } => {
            // Parts of whole repeats of the mask, so that each starts at the mask's first element.
            let mask = masked.then(|| xs[1]);
            let group = mask.map_or(len * w, |m| m.len().max(len * w));
            split_groups(team, x, y, group, |x, y| sequence::softmax(isa, x, mask, *len, w, *zero_nan, y))
        }
        Exec::LayerNorm { scale, bias, epsilon, columns: false } => {
            split_groups(team, x, y, scale.len() * w, |x, y| sequence::layer_norm(isa, x, scale, bias, *epsilon, w, y))
        }
        Exec::LayerNorm { scale, bias, epsilon, columns: true } => layer_norm_columns(isa, scale, bias, *epsilon, x, y, team),
        Exec::Embed { table, width } => {
            let part = split_len(team, y.len(), width * w) / (width * w).max(1);
            let parts: Vec<_> = y.chunks_mut(part.max(1) * width * w).zip(x.chunks(part.max(1) * w)).collect();
            team.for_each(parts, |(y, x)| sequence::embed(table, *width, x, w, y));
        }
        Exec::BatchMatMul { product, slices } => {
            let size = product.m * product.n * w;
            let work = slices.len() * product.m * product.k * product.n * w;
            let per_part = if worth_splitting(team.threads(), work, 2) { slices.len().div_ceil(team.threads()) } else { slices.len() };
            let parts: Vec<_> = y[..slices.len() * size].chunks_mut(per_part.max(1) * size).zip(slices.chunks(per_part.max(1))).collect();
            team.for_each(parts, |(y, slices)| sequence::matmul_slices(isa, *product, x, xs[1], slices, w, y));
        }
        Exec::Where { shape, strides, x: on, y: off } => {
            let mut rest = xs[1..].iter().map(|v| sequence::Source::Tile(v));
            let on = on.as_deref().map(sequence::Source::Constant).or_else(|| rest.next()).expect("an input per missing constant");
            let off = off.as_deref().map(sequence::Source::Constant).or_else(|| rest.next()).expect("an input per missing constant");
            let operands = [(sequence::Source::Tile(x), &strides[0][..]), (on, &strides[1][..]), (off, &strides[2][..])];
            if !sequence::is_flat(shape, &operands) {
                return sequence::select(shape, operands, w, y);
            }
            // One flat loop: parts of the elements over the threads.
            let n: usize = shape.iter().product();
            let part = split_len(team, n, 16).max(1);
            let parts: Vec<_> = y[..n * w].chunks_mut(part * w).enumerate().collect();
            team.for_each(parts, |(k, y)| {
                let range = k * part..(k * part + y.len() / w.max(1)).min(n);
                let [a, b, c] = operands.map(|(source, _)| source.part(range.clone(), w));
                sequence::select(&[range.len()], [a, b, c], w, y);
            });
        }
    }
}

/// A grouped convolution's weights and what follows its sums (`Exec::GroupConv`).
struct GroupConv<'a> {
    weight: &'a [f32],
    bias: &'a [f32],
    groups: usize,
    relu: bool,
    post: Option<crate::ops::Unary>,
}

/// Output channels `channels` of a grouped convolution into `y` (those channels' planes): the
/// depth-wise kernel where it takes the layer, a fused Clip (ReLU6) clamped in its stores, else
/// the grouped one; then the fused function, while the part is in cache.
fn group_conv_channels(isa: Isa, g: &Geometry, conv: &GroupConv, x: &[f32], y: &mut [f32], channels: Range<usize>) {
    let (mut post, relu) = (conv.post, conv.relu);
    if conv.groups == g.channels && conv.bias.len() == g.channels && depthwise::takes(isa, g) {
        let clip = match post {
            Some(crate::ops::Unary::Clip(c)) => {
                post = None;
                Some([c.lo, c.hi])
            }
            _ => None,
        };
        depthwise::depthwise(isa, g, conv.weight, conv.bias, x, y, channels, relu, clip)
    } else {
        grouped::group_conv(g, conv.groups, conv.weight, conv.bias, x, y, channels, relu)
    }
    if let Some(f) = post {
        f.apply_in_place(isa, y);
    }
}

/// Bytes of expanded channels a fused pointwise convolution makes at once (`expanded_depthwise`):
/// small enough to stay in L2 beside the pointwise convolution's input while the depth-wise one
/// reads them.
const EXPANSION_CHUNK_BYTES: usize = 256 << 10;

thread_local! {
    /// Each thread's chunk of expanded channels, kept between calls.
    static EXPANDED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Output channels `channels` of a depth-wise convolution whose input channels come from the
/// pointwise convolution `m` fused before it (`Exec::GroupConv::expand`), on that convolution's
/// input `x`: a chunk of channels at a time, each made by `m`'s kernel (its ReLU and function
/// applied) into a buffer and convolved from there.
fn expanded_depthwise(isa: Isa, g: &Geometry, conv: &GroupConv, m: &MatMul, x: &[f32], y: &mut [f32], channels: Range<usize>) {
    let in_plane = g.in_hw[0] * g.in_hw[1] * g.w;
    let out_plane = g.out_hw[0] * g.out_hw[1] * g.w;
    let taps = g.window.kernel[0] * g.window.kernel[1];
    let chunk = (EXPANSION_CHUNK_BYTES / (4 * in_plane).max(1)).max(1);
    let kernel = f32_kernel(m, g.w == 1);
    let (sums, post) = (spmm::Sums::new(spmm::Ld::packed(in_plane), m.relu).with_clip(m.kernel_clip()), m.post_after_kernel());
    EXPANDED.with_borrow_mut(|buf| {
        if buf.len() < chunk.min(channels.len()) * in_plane {
            buf.resize(chunk.min(channels.len()) * in_plane, 0.0);
        }
        for c0 in channels.clone().step_by(chunk) {
            let c1 = (c0 + chunk).min(channels.end);
            let xs = &mut buf[..(c1 - c0) * in_plane];
            kernel.run_rows(isa, &m.bias, m.cols, x, in_plane, xs, c0..c1, sums);
            if let Some(f) = post {
                f.apply_in_place(isa, xs);
            }
            let part = GroupConv { weight: &conv.weight[c0 * taps..c1 * taps], bias: &conv.bias[c0..c1], groups: c1 - c0, ..*conv };
            let ys = &mut y[(c0 - channels.start) * out_plane..(c1 - channels.start) * out_plane];
            group_conv_channels(isa, &Geometry { channels: c1 - c0, ..*g }, &part, xs, ys, 0..c1 - c0);
        }
    });
}
