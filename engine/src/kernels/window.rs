//! Window operators on feature-major image tiles: im2col for convolutions (which then run through
//! the same dense and sparse kernels as linear layers), max and average pooling.
//!
//! An image tile of `w` samples with `c` channels of `h x wd` pixels is `[c, h, wd, w]`: the
//! sample index is innermost, so every inner loop runs over contiguous samples.

use super::Isa;
use crate::graph::Window;

/// Geometry of one windowed operator on a tile.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Geometry {
    pub channels: usize,
    pub in_hw: [usize; 2],
    pub out_hw: [usize; 2],
    pub window: Window,
    /// Samples in the tile.
    pub w: usize,
}

impl Geometry {
    /// The window's output for the input image is `out_hw` (the window's fields within the
    /// graph's bounds, see `Window::output`), and the tile's sizes fit in `usize`: the
    /// precondition every kernel's guard starts from. Panics otherwise.
    pub fn check(&self) {
        let fits = self.window.output(self.in_hw[0], self.in_hw[1], "").ok() == Some((self.out_hw[0], self.out_hw[1]));
        assert!(fits && self.channels > 0 && self.w > 0, "window geometry inconsistent: {self:?}");
        assert!(self.input_len().is_some() && self.output_len(self.channels).is_some(), "window geometry too large: {self:?}");
    }

    /// Elements of the input tile `[channels, h, wd, w]`, if that fits in `usize`.
    pub fn input_len(&self) -> Option<usize> {
        [self.in_hw[0], self.in_hw[1], self.w].iter().try_fold(self.channels, |a, &d| a.checked_mul(d))
    }

    /// Elements of an output tile of `channels` channels, `[channels, oh, ow, w]`.
    pub fn output_len(&self, channels: usize) -> Option<usize> {
        [self.out_hw[0], self.out_hw[1], self.w].iter().try_fold(channels, |a, &d| a.checked_mul(d))
    }

    /// `check`, then whether `x` elements hold the input tile.
    pub fn holds_input(&self, x: usize) -> bool {
        self.check();
        self.input_len().is_some_and(|n| x >= n)
    }

    /// `check`, then whether `y` elements hold `channels` output channels of the tile.
    pub fn holds_output(&self, y: usize, channels: usize) -> bool {
        self.check();
        self.output_len(channels).is_some_and(|n| y >= n)
    }

    /// For each output coordinate and kernel offset along one axis, the input coordinate, if it is
    /// inside the image (not padding).
    pub(crate) fn source(&self, axis: usize, out: usize, k: usize) -> Option<usize> {
        let pos = out * self.window.stride[axis] + k * self.window.dilation[axis];
        pos.checked_sub(self.window.pads[axis]).filter(|&p| p < self.in_hw[axis])
    }

    /// Im2col row `k`'s input channel and kernel row and column (`k = (c * kh + ky) * kw + kx`).
    pub(crate) fn tap(&self, k: usize) -> (usize, usize, usize) {
        let [kh, kw] = self.window.kernel;
        (k / (kh * kw), k / kw % kh, k % kw)
    }

    /// For kernel offset `k` along `axis`, the output coordinates whose input is inside the image
    /// (one contiguous range, possibly empty) and the input coordinate of the first.
    pub(crate) fn inside(&self, axis: usize, k: usize) -> (std::ops::Range<usize>, usize) {
        let (stride, pad, n_out) = (self.window.stride[axis], self.window.pads[axis], self.out_hw[axis]);
        let offset = k * self.window.dilation[axis];
        // out * stride + offset - pad must lie in 0..in: the first out with out * stride >= pad - offset.
        let lo = pad.saturating_sub(offset).div_ceil(stride).min(n_out);
        let hi = (self.in_hw[axis] + pad).checked_sub(offset + 1).map_or(0, |last| (last / stride + 1).min(n_out));
        let range = lo..hi.max(lo);
        (range.clone(), (range.start * stride + offset).saturating_sub(pad))
    }

    /// The input rows that output rows `out` read (padding excluded); empty if none.
    pub fn input_rows(&self, out: std::ops::Range<usize>) -> std::ops::Range<usize> {
        if out.is_empty() {
            return 0..0;
        }
        let (stride, dilation, pad) = (self.window.stride[0], self.window.dilation[0], self.window.pads[0]);
        let first = (out.start * stride).saturating_sub(pad);
        let last = ((out.end - 1) * stride + (self.window.kernel[0] - 1) * dilation).saturating_sub(pad);
        first.min(self.in_hw[0])..(last + 1).min(self.in_hw[0])
    }
}

/// Unfolds `x` `[c, h, wd, w]` into `cols` `[c * kh * kw, oh, ow, w]` (zeros where the window
/// covers padding), so a convolution is `[out, c * kh * kw] x cols`.
pub fn im2col(g: &Geometry, x: &[f32], cols: &mut [f32]) {
    im2col_rows(g, x, 0..g.out_hw[0], cols)
}

/// `im2col` for the output rows in `rows` only: `cols` is `[c * kh * kw, rows.len(), ow, w]`
/// (a band of a convolution's output, see `schedule`).
pub fn im2col_rows(g: &Geometry, x: &[f32], rows: std::ops::Range<usize>, cols: &mut [f32]) {
    im2col_channels(g, x, rows, 0..g.channels, cols)
}

/// `im2col_rows` for the input channels in `channels` only: `cols` holds their rows of the
/// unfolded matrix, `[channels.len() * kh * kw, rows.len(), ow, w]` (a part of the whole that a
/// thread fills while others fill the rest).
pub fn im2col_channels(g: &Geometry, x: &[f32], rows: std::ops::Range<usize>, channels: std::ops::Range<usize>, cols: &mut [f32]) {
    let [kh, kw] = g.window.kernel;
    let [oh, ow] = g.out_hw;
    let [h, wd] = g.in_hw;
    let w = g.w;
    let plane = rows.len() * ow * w;
    assert!(rows.end <= oh && channels.end <= g.channels, "im2col rows or channels");
    assert!(g.holds_input(x.len()) && cols.len() >= channels.len() * kh * kw * plane, "im2col sizes");
    // Per kernel column, the output columns inside the image, computed once.
    let inside: Vec<(std::ops::Range<usize>, usize)> = (0..kw).map(|kx| g.inside(1, kx)).collect();
    for (i, c) in channels.enumerate() {
        for ky in 0..kh {
            for (kx, (valid, ix0)) in inside.iter().enumerate() {
                let row = ((i * kh + ky) * kw + kx) * plane;
                for oy in rows.clone() {
                    let dst = &mut cols[row + (oy - rows.start) * ow * w..][..ow * w];
                    let Some(iy) = g.source(0, oy, ky).filter(|_| !valid.is_empty()) else {
                        dst.fill(0.0);
                        continue;
                    };
                    let src = &x[(c * h + iy) * wd * w..][..wd * w];
                    let (lo, hi) = (valid.start, valid.end);
                    dst[..lo * w].fill(0.0);
                    dst[hi * w..].fill(0.0);
                    if g.window.stride[1] == 1 {
                        // Neighbouring outputs read neighbouring inputs: one copy for the row.
                        dst[lo * w..hi * w].copy_from_slice(&src[ix0 * w..(ix0 + hi - lo) * w]);
                    } else if w == 1 {
                        // One sample (a batch-1 stem): a strided gather, not a copy call per value.
                        let stride = g.window.stride[1];
                        dst[lo..hi].iter_mut().zip(src[*ix0..].iter().step_by(stride)).for_each(|(d, s)| *d = *s);
                    } else {
                        for ox in lo..hi {
                            let ix = ix0 + (ox - lo) * g.window.stride[1];
                            dst[ox * w..(ox + 1) * w].copy_from_slice(&src[ix * w..(ix + 1) * w]);
                        }
                    }
                }
            }
        }
    }
}

/// The im2col columns of output rows `rows` (what `im2col_rows` writes) produced a block of
/// rows and a strip of columns at a time, for a kernel that packs panels of its input anyway
/// (`kblocked`): the whole unfolded image (nine times the image for a 3x3 window) is never
/// written, nor read back from memory.
pub struct Unfold<'a> {
    g: Geometry,
    x: &'a [f32],
    rows: std::ops::Range<usize>,
    /// Per kernel column: the output columns inside the image and the input column of the first.
    inside: Vec<(std::ops::Range<usize>, usize)>,
}

/// One output row's part of a strip of columns: `len` columns from `first` (of the row's
/// `ow * w`), at `at` in the strip.
#[derive(Clone, Copy, Default)]
struct Segment {
    at: usize,
    len: usize,
    oy: usize,
    first: usize,
}

impl<'a> Unfold<'a> {
    /// Most columns `fill` takes in one call.
    pub const MAX_STRIP: usize = 64;

    pub fn new(g: &Geometry, x: &'a [f32], rows: std::ops::Range<usize>) -> Unfold<'a> {
        assert!(rows.start <= rows.end && rows.end <= g.out_hw[0] && g.holds_input(x.len()), "unfold sizes");
        let inside = (0..g.window.kernel[1]).map(|kx| g.inside(1, kx)).collect();
        Unfold { g: *g, x, rows, inside }
    }

    /// Rows of the unfolded matrix: input channels times kernel taps.
    pub fn taps(&self) -> usize {
        self.g.channels * self.g.window.kernel[0] * self.g.window.kernel[1]
    }

    /// Columns of the unfolded matrix: the rows' output positions times the samples.
    pub fn columns(&self) -> usize {
        self.rows.len() * self.g.out_hw[1] * self.g.w
    }

    /// Rows `taps` of the unfolded matrix, columns `cols` of them (at most `MAX_STRIP`), into the
    /// first `cols.len()` values of `panel`'s rows, `row_len` apart.
    pub fn fill(&self, taps: std::ops::Range<usize>, cols: std::ops::Range<usize>, panel: &mut [f32], row_len: usize) {
        let (g, n) = (&self.g, cols.len());
        assert!(taps.end <= self.taps() && cols.end <= self.columns() && n <= Self::MAX_STRIP, "unfold strip");
        assert!(row_len >= n && panel.len() >= taps.len().saturating_sub(1) * row_len + n, "unfold panel");
        // The strip's pieces of output rows, worked out once for all its taps.
        let row_cols = g.out_hw[1] * g.w;
        let mut segments = [Segment::default(); Self::MAX_STRIP];
        let mut count = 0;
        let mut j = cols.start;
        while j < cols.end {
            let oy = j / row_cols;
            let end = cols.end.min((oy + 1) * row_cols);
            segments[count] = Segment { at: j - cols.start, len: end - j, oy: self.rows.start + oy, first: j - oy * row_cols };
            count += 1;
            j = end;
        }
        let [kh, kw] = g.window.kernel;
        let (mut c, mut ky, mut kx) = g.tap(taps.start);
        for row in panel.chunks_mut(row_len).take(taps.len()) {
            for s in &segments[..count] {
                self.fill_segment(c, ky, kx, s, &mut row[s.at..s.at + s.len]);
            }
            kx += 1;
            if kx == kw {
                (kx, ky) = (0, ky + 1);
                if ky == kh {
                    (ky, c) = (0, c + 1);
                }
            }
        }
    }

    /// Tap `(c, ky, kx)` of one segment: zeros where the window covers padding, the image's
    /// values elsewhere.
    fn fill_segment(&self, c: usize, ky: usize, kx: usize, s: &Segment, out: &mut [f32]) {
        let g = &self.g;
        let [h, wd] = g.in_hw;
        let w = g.w;
        let Some(iy) = g.source(0, s.oy, ky) else {
            out.fill(0.0);
            return;
        };
        let (valid, ix0) = &self.inside[kx];
        // The row's columns that read the image, clipped to the segment's.
        let (a, b) = (s.first, s.first + s.len);
        let lo = (valid.start * w).clamp(a, b);
        let hi = (valid.end * w).clamp(lo, b);
        out[..lo - a].fill(0.0);
        out[hi - a..].fill(0.0);
        if lo == hi {
            return;
        }
        let src = &self.x[(c * h + iy) * wd * w..][..wd * w];
        let stride = g.window.stride[1];
        let out = &mut out[lo - a..hi - a];
        if stride == 1 {
            // Neighbouring outputs read neighbouring inputs.
            let from = ix0 * w + (lo - valid.start * w);
            super::kblocked::copy_row(out, &src[from..from + out.len()]);
        } else if w == 1 {
            // One sample: a strided gather.
            let from = ix0 + (lo - valid.start) * stride;
            out.iter_mut().zip(src[from..].iter().step_by(stride)).for_each(|(v, s)| *v = *s);
        } else {
            // Output column `m` (of the row) is sample `m % w` of output pixel `m / w`: the
            // pixel's samples in one copy, the first and last pixels possibly in part.
            let mut m = lo;
            while m < hi {
                let (ox, sample) = (m / w, m % w);
                let n = (w - sample).min(hi - m);
                let from = (ix0 + (ox - valid.start) * stride) * w + sample;
                super::kblocked::copy_row(&mut out[m - lo..m - lo + n], &src[from..from + n]);
                m += n;
            }
        }
    }
}

/// Max (`avg = None`) or average pooling (`avg = Some(count_include_pad)`) of `x` into `y`
/// `[c, oh, ow, w]`.
pub fn pool(isa: Isa, g: &Geometry, x: &[f32], y: &mut [f32], avg: Option<bool>) {
    pool_rows(isa, g, x, y, avg, 0..g.out_hw[0])
}

/// `pool` for the output rows in `rows` only (the rest of `y` is left as it is). Tiles of
/// several samples fold whole sample vectors per window tap: with AVX-512, 16 samples per
/// instruction (the portable loop compiles to 4-wide SSE).
pub fn pool_rows(isa: Isa, g: &Geometry, x: &[f32], y: &mut [f32], avg: Option<bool>, rows: std::ops::Range<usize>) {
    assert!(rows.end <= g.out_hw[0], "pool rows");
    assert!(g.holds_input(x.len()) && g.holds_output(y.len(), g.channels), "pool sizes");
    if g.w == 1 {
        return pool_one(isa, g, x, y, avg, rows);
    }
    match isa {
        // Max pooling folds each output pixel in a register over its window.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if avg.is_none() => max_pool_with(g, x, y, rows, max_f32_avx512),
        // SAFETY: sizes checked above; the CPU supports AVX-512 (chosen from what it reports).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::avg_pool_tiles_avx512(g, x, y, avg, rows) },
        _ => pool_tiles(g, x, y, avg, rows, fold),
    }
}

/// Max pooling of codes (`[c, h, wd, w]` bytes, an int8 convolution's output quantized for the
/// next int8 layer), output rows `rows`: the maximum of the codes is the code of the maximum,
/// since quantization never reverses an order, so this equals quantizing the f32 pool. Each
/// output pixel's samples are folded in a register over the window's taps (`max_codes`).
pub fn max_pool_codes(isa: Isa, g: &Geometry, x: &[u8], y: &mut [u8], rows: std::ops::Range<usize>) {
    if g.w == 1 {
        assert!(rows.end <= g.out_hw[0] && g.holds_input(x.len()) && g.holds_output(y.len(), g.channels), "pool sizes");
        return max_pool_codes_one(isa, g, x, y, rows);
    }
    max_pool_with(g, x, y, rows, |out, x, bases, taps| max_codes(isa, out, x, bases, taps))
}

/// Max pooling, output rows `rows`, each output row handed to `fold(out, x, bases, taps)`: output
/// pixel `p` of `out` is the maximum over the input pixels at `bases[p] + t`, `t` in `taps` (the
/// offsets of a window's pixels from its first, for rows whose windows are all inside the image;
/// pixel by pixel, with only the pixels inside, over the padding).
fn max_pool_with<T>(g: &Geometry, x: &[T], y: &mut [T], rows: std::ops::Range<usize>, fold: impl Fn(&mut [T], &[T], &[usize], &[usize])) {
    let ([kh, kw], [oh, ow], [h, wd], w) = (g.window.kernel, g.out_hw, g.in_hw, g.w);
    assert!(rows.end <= oh, "pool rows");
    assert!(g.holds_input(x.len()) && g.holds_output(y.len(), g.channels), "pool sizes");
    // Offsets of a window's pixels from its first, for windows wholly inside the image, and per
    // output column, the first input column of such a window (all of them, or the row's pixels
    // go one by one).
    let dilation = g.window.dilation;
    let whole: Vec<usize> = (0..kh).flat_map(|ky| (0..kw).map(move |kx| (ky * dilation[0] * wd + kx * dilation[1]) * w)).collect();
    let first_columns: Option<Vec<usize>> = (0..ow).map(|ox| g.source(1, ox, 0).filter(|_| g.source(1, ox, kw - 1).is_some())).collect();
    let (mut bases, mut taps) = (Vec::with_capacity(ow), Vec::with_capacity(kh * kw));
    for c in 0..g.channels {
        for oy in rows.clone() {
            let out = &mut y[(c * oh + oy) * ow * w..][..ow * w];
            let first_row = g.source(0, oy, 0).filter(|_| g.source(0, oy, kh - 1).is_some());
            if let (Some(iy), Some(columns)) = (first_row, &first_columns) {
                bases.clear();
                bases.extend(columns.iter().map(|ix| ((c * h + iy) * wd + ix) * w));
                fold(out, x, &bases, &whole);
                continue;
            }
            // Windows over the padding: each pixel's taps inside the image only.
            for (ox, out) in out.chunks_exact_mut(w).enumerate() {
                taps.clear();
                for iy in (0..kh).filter_map(|ky| g.source(0, oy, ky)) {
                    taps.extend((0..kw).filter_map(|kx| g.source(1, ox, kx)).map(|ix| ((c * h + iy) * wd + ix) * w));
                }
                fold(out, x, &[0], &taps);
            }
        }
    }
}

/// The f32 twin of `max_codes` for AVX-512 (-inf where a window holds no pixel; an input NaN
/// is skipped, as `f32::max` does).
#[cfg(target_arch = "x86_64")]
fn max_f32_avx512(out: &mut [f32], x: &[f32], bases: &[usize], taps: &[usize]) {
    let w = pixel_width(out.len(), x.len(), bases, taps);
    // SAFETY: every pixel read lies inside `x` (asserted); the caller chose AVX-512 from the CPU.
    unsafe { x86::max_f32_avx512(out, x, bases, taps, w) }
}

/// Pixel `p` of `out` (`w = out.len() / bases.len()` samples each) gets, sample by sample, the
/// largest of the pixels of `x` at `bases[p] + t` for the offsets `t` in `taps` (0 if none): 64
/// samples per instruction with AVX-512 (BW), else one at a time (codes pass only between the
/// AVX-512 VNNI kernels).
fn max_codes(isa: Isa, out: &mut [u8], x: &[u8], bases: &[usize], taps: &[usize]) {
    let w = pixel_width(out.len(), x.len(), bases, taps);
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && is_x86_feature_detected!("avx512bw") {
        // SAFETY: every pixel read lies inside `x` (asserted); AVX-512BW was detected.
        return unsafe { x86::max_codes_avx512(out, x, bases, taps, w) };
    }
    for (p, &base) in bases.iter().enumerate() {
        for s in 0..w {
            out[p * w + s] = taps.iter().map(|&t| x[base + t + s]).max().unwrap_or(0);
        }
    }
}

/// The samples per pixel of an output of `out_len` values holding one pixel per base, checking
/// that every pixel read (`base + tap`, that many samples) lies inside an input of `x_len`.
fn pixel_width(out_len: usize, x_len: usize, bases: &[usize], taps: &[usize]) -> usize {
    let w = out_len / bases.len().max(1);
    assert_eq!(out_len, bases.len() * w, "one output pixel per base");
    let reach = bases.iter().max().zip(taps.iter().max()).map_or(0, |(b, t)| b + t + w);
    assert!(reach <= x_len, "pool window outside the input");
    w
}

/// Folds the input vector `s` into the output vector `o`: a sum, or a running maximum (which
/// starts at -inf and skips NaN inputs, as `f32::max` does).
fn fold(o: &mut [f32], s: &[f32], sum: bool) {
    if sum {
        o.iter_mut().zip(s).for_each(|(o, s)| *o += s);
    } else {
        o.iter_mut().zip(s).for_each(|(o, s)| *o = o.max(*s));
    }
}

/// `pool_rows` for `w > 1`, each tap's vectors combined by `fold(output, input, sum)`.
#[inline(always)]
fn pool_tiles(
    g: &Geometry,
    x: &[f32],
    y: &mut [f32],
    avg: Option<bool>,
    rows: std::ops::Range<usize>,
    fold: impl Fn(&mut [f32], &[f32], bool),
) {
    let [kh, kw] = g.window.kernel;
    let [oh, ow] = g.out_hw;
    let [h, wd] = g.in_hw;
    let w = g.w;
    // Per kernel column, the output columns inside the image, computed once; each tap then
    // combines whole `w`-sample vectors.
    let inside: Vec<(std::ops::Range<usize>, usize)> = (0..kw).map(|kx| g.inside(1, kx)).collect();
    let stride = g.window.stride[1];
    let mut count = vec![0usize; ow];
    for c in 0..g.channels {
        for oy in rows.clone() {
            let out = &mut y[(c * oh + oy) * ow * w..][..ow * w];
            out.fill(if avg.is_some() { 0.0 } else { f32::NEG_INFINITY });
            count.fill(0);
            for ky in 0..kh {
                let Some(iy) = g.source(0, oy, ky) else { continue };
                let src = &x[(c * h + iy) * wd * w..][..wd * w];
                for (valid, ix0) in &inside {
                    for (i, ox) in valid.clone().enumerate() {
                        fold(&mut out[ox * w..][..w], &src[(ix0 + i * stride) * w..][..w], avg.is_some());
                        count[ox] += 1;
                    }
                }
            }
            if let Some(include_pad) = avg {
                for (o, n) in out.chunks_exact_mut(w).zip(&count) {
                    let n = if include_pad { kh * kw } else { (*n).max(1) } as f32;
                    o.iter_mut().for_each(|o| *o /= n);
                }
            }
        }
    }
}

/// The window positions of one-sample pooling, output row by output row: for each output row
/// `oy` of `rows` and channel `c`, `row(c * oh + oy, plane, whole, partial)` gets channel `c`'s
/// input plane (`[h, wd]`), the starts in it of the positions whose inputs lie inside the image
/// for every output of the row, and for each kernel column whose positions reach into the padding
/// for some outputs, the outputs they do not and their starts (one per kernel row inside the
/// image; folded in one pass). The positions are worked out once per output row, for every
/// channel.
fn one_sample_rows<T>(
    g: &Geometry,
    x: &[T],
    rows: std::ops::Range<usize>,
    mut row: impl FnMut(usize, &[T], &[usize], &[(std::ops::Range<usize>, Vec<usize>)]),
) {
    let [kh, kw] = g.window.kernel;
    let [oh, ow] = g.out_hw;
    let plane = g.in_hw[0] * g.in_hw[1];
    let inside: Vec<(std::ops::Range<usize>, usize)> = (0..kw).map(|kx| g.inside(1, kx)).collect();
    let (whole_columns, partial_columns): (Vec<_>, Vec<_>) =
        inside.into_iter().filter(|(valid, _)| !valid.is_empty()).partition(|(valid, _)| valid.len() == ow);
    let mut whole = Vec::with_capacity(kh * kw);
    let mut partial: Vec<(std::ops::Range<usize>, Vec<usize>)> =
        partial_columns.iter().map(|(valid, _)| (valid.clone(), Vec::with_capacity(kh))).collect();
    for oy in rows {
        whole.clear();
        partial.iter_mut().for_each(|(_, starts)| starts.clear());
        for iy in (0..kh).filter_map(|ky| g.source(0, oy, ky)) {
            whole.extend(whole_columns.iter().map(|(_, ix0)| iy * g.in_hw[1] + ix0));
            for ((_, starts), (_, ix0)) in partial.iter_mut().zip(&partial_columns) {
                starts.push(iy * g.in_hw[1] + ix0);
            }
        }
        for c in 0..g.channels {
            row(c * oh + oy, &x[c * plane..][..plane], &whole, &partial);
        }
    }
}

/// `pool` for one sample: the same arithmetic, without a slice per pixel; the window positions
/// inside the image for a whole output row fold into it together (`fold_rows`, one load and
/// store of the output per 16 pixels), the others one at a time.
fn pool_one(isa: Isa, g: &Geometry, x: &[f32], y: &mut [f32], avg: Option<bool>, rows: std::ops::Range<usize>) {
    if avg.is_none()
        && rows == (0..g.out_hw[0])
        && let Some((padded, plain)) = padded_for_max(g, x)
    {
        return pool_one(isa, &plain, &padded, y, None, rows);
    }
    let [kh, kw] = g.window.kernel;
    let ow = g.out_hw[1];
    let stride = g.window.stride[1];
    // Per output, the window's pixels inside the image (for the average).
    let mut count = vec![0usize; if avg.is_some() { ow } else { 0 }];
    one_sample_rows(g, x, rows, |r, x, whole, partial| {
        let out = &mut y[r * ow..][..ow];
        out.fill(if avg.is_some() { 0.0 } else { f32::NEG_INFINITY });
        for (valid, starts) in partial {
            fold_rows(isa, &mut out[valid.clone()], x, starts, stride, avg.is_some());
        }
        fold_rows(isa, out, x, whole, stride, avg.is_some());
        if let Some(include_pad) = avg {
            count.fill(whole.len());
            for (valid, starts) in partial {
                count[valid.clone()].iter_mut().for_each(|n| *n += starts.len());
            }
            for (o, n) in out.iter_mut().zip(&count) {
                *o /= if include_pad { kh * kw } else { *n }.max(1) as f32;
            }
        }
    });
}

/// Images narrower than this are max-pooled on a copy padded with -inf (`padded_for_max`).
const PADDED_MAX_WIDTH: usize = 64;

/// For a max pool of one sample with padding on images narrower than `PADDED_MAX_WIDTH`: the
/// input copied into planes whose padding is written, -inf (which no maximum keeps), and the same
/// pool on them without padding, so that every window lies wholly inside. On small images most
/// windows reach into the padding and were folded a window column at a time (YOLOv5s's SPPF,
/// 5x5 at stride 1 on 10x10 images: about 0.2 ms a pool on 2 threads). None where that does not
/// apply, or where the unpadded window would not give the same output size (`ceil_mode`).
fn padded_for_max(g: &Geometry, x: &[f32]) -> Option<(Vec<f32>, Geometry)> {
    let [top, left, bottom, right] = g.window.pads;
    if g.w != 1 || g.window.pads == [0; 4] || g.window.ceil_mode || g.in_hw[1] >= PADDED_MAX_WIDTH {
        return None;
    }
    let [h, wd] = g.in_hw;
    let (ph, pw) = (h + top + bottom, wd + left + right);
    let plain = Geometry { in_hw: [ph, pw], window: Window { pads: [0; 4], ..g.window }, ..*g };
    if plain.window.output(ph, pw, "").ok() != Some((g.out_hw[0], g.out_hw[1])) {
        return None;
    }
    let mut padded = vec![f32::NEG_INFINITY; plain.input_len()?];
    for (c, plane) in padded.chunks_exact_mut(ph * pw).enumerate() {
        for (r, row) in x[c * h * wd..][..h * wd].chunks_exact(wd).enumerate() {
            plane[(top + r) * pw + left..][..wd].copy_from_slice(row);
        }
    }
    Some((padded, plain))
}

/// `max_pool_codes` for one sample: as `pool_one`, on codes (0 where a window holds no pixel).
fn max_pool_codes_one(isa: Isa, g: &Geometry, x: &[u8], y: &mut [u8], rows: std::ops::Range<usize>) {
    let (ow, stride) = (g.out_hw[1], g.window.stride[1]);
    one_sample_rows(g, x, rows, |r, x, whole, partial| {
        let out = &mut y[r * ow..][..ow];
        out.fill(0);
        for (valid, starts) in partial {
            fold_codes(isa, &mut out[valid.clone()], x, starts, stride);
        }
        fold_codes(isa, out, x, whole, stride);
    });
}

/// `out[i] = max(out[i], x[s + i * stride])` for every start `s` of `starts` and `i < out.len()`,
/// on codes. With AVX-512BW, 64 outputs at a time at stride 1 and 32 at stride 2 (the even
/// bytes of 64, narrowed from 16-bit lanes).
fn fold_codes(isa: Isa, out: &mut [u8], x: &[u8], starts: &[usize], stride: usize) {
    let n = out.len();
    if n == 0 || starts.is_empty() {
        return;
    }
    assert!(starts.iter().all(|s| s + (n - 1) * stride < x.len()), "pooling reads past its input");
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && (stride == 1 || stride == 2) && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vl") {
        // SAFETY: every read x[s + i * stride] (i < n) is inside `x` (asserted); AVX-512BW and VL
        // were detected.
        return unsafe { x86::fold_codes_avx512(out, x, starts, stride) };
    }
    for &s in starts {
        out.iter_mut().zip(x[s..].iter().step_by(stride.max(1))).for_each(|(o, v)| *o = (*o).max(*v));
    }
}

/// `out[i] = max(out[i], x[s + i * stride])` for every start `s` of `starts` and `i < out.len()`
/// (an input NaN is skipped, as `f32::max` does), or with `sum`, `out[i] += ...`. With AVX-512, 16
/// outputs at a time folded in a register over the starts: contiguous loads at stride 1, two loads
/// and a permutation at stride 2, a gather else.
fn fold_rows(isa: Isa, out: &mut [f32], x: &[f32], starts: &[usize], stride: usize, sum: bool) {
    let n = out.len();
    if n == 0 || starts.is_empty() {
        return;
    }
    assert!(starts.iter().all(|s| s + (n - 1) * stride < x.len()), "pooling reads past its input");
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && stride < 1 << 26 {
        // SAFETY: every read x[s + i * stride] (i < n) is inside `x` (asserted); 16 * stride fits
        // the gather's 32-bit indices; AVX-512 was chosen from what the CPU reports.
        return unsafe { x86::fold_rows_avx512(out, x, starts, stride, sum) };
    }
    for &s in starts {
        let taps = x[s..].iter().step_by(stride.max(1));
        if sum {
            out.iter_mut().zip(taps).for_each(|(o, v)| *o += v);
        } else {
            out.iter_mut().zip(taps).for_each(|(o, v)| *o = o.max(*v));
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::Geometry;

    /// Average pooling (`avg` is `Some`; max pooling runs `super::max_f32_avx512`).
    ///
    /// # Safety
    /// AVX-512F must be available; sizes as `super::pool_rows` checks.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn avg_pool_tiles_avx512(g: &Geometry, x: &[f32], y: &mut [f32], avg: Option<bool>, rows: std::ops::Range<usize>) {
        assert!(avg.is_some(), "max pooling folds in registers");
        // SAFETY: `add16` only touches the first min(o.len(), s.len()) floats of each slice.
        super::pool_tiles(g, x, y, avg, rows, |o, s, _| unsafe { add16(o, s) })
    }

    /// `super::max_codes`, 64 bytes at a time, the last vector of a pixel masked.
    ///
    /// # Safety
    /// AVX-512F and BW; `out` holds `bases.len() * w` bytes, and `x` every pixel read:
    /// `base + tap + w` bytes for each base and tap.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn max_codes_avx512(out: &mut [u8], x: &[u8], bases: &[usize], taps: &[usize], w: usize) {
        for (p, &base) in bases.iter().enumerate() {
            let mut s = 0;
            while s < w {
                let m: __mmask64 = if w - s >= 64 { !0 } else { (1u64 << (w - s)) - 1 };
                // SAFETY: the masked lanes are bytes s..min(s + 64, w) of pixel p and of each tap.
                unsafe {
                    let mut acc = _mm512_setzero_si512();
                    for &t in taps {
                        acc = _mm512_max_epu8(acc, _mm512_maskz_loadu_epi8(m, x.as_ptr().add(base + t + s) as *const i8));
                    }
                    _mm512_mask_storeu_epi8(out.as_mut_ptr().add(p * w + s) as *mut i8, m, acc);
                }
                s += 64;
            }
        }
    }

    /// `super::fold_codes` at stride 1 or 2, the last step masked.
    ///
    /// # Safety
    /// AVX-512F, BW and VL; `out` is not empty, `stride` is 1 or 2, and `s + (out.len() - 1) *
    /// stride < x.len()` for every start `s`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn fold_codes_avx512(out: &mut [u8], x: &[u8], starts: &[usize], stride: usize) {
        let n = out.len();
        let (op, xp) = (out.as_mut_ptr() as *mut i8, x.as_ptr() as *const i8);
        let lanes = |k: usize| -> __mmask64 { if k >= 64 { !0 } else { (1u64 << k) - 1 } };
        let mut i = 0;
        // SAFETY (both loops): lane j < k of a step reads x[s + (i + j) * stride], inside `x` by
        // the contract (at stride 2 the loads cover x[s + 2i .. s + 2i + 2k - 1] only); lanes of
        // `out` past k are neither read nor written.
        unsafe {
            if stride == 1 {
                while i < n {
                    let m = lanes(n - i);
                    let mut acc = _mm512_maskz_loadu_epi8(m, op.add(i));
                    for &s in starts {
                        acc = _mm512_max_epu8(acc, _mm512_maskz_loadu_epi8(m, xp.add(s + i)));
                    }
                    _mm512_mask_storeu_epi8(op.add(i), m, acc);
                    i += 64;
                }
                return;
            }
            let low_bytes = _mm512_set1_epi16(0xff);
            while i < n {
                let k = (n - i).min(32);
                let m = lanes(k) as __mmask32;
                let mut acc = _mm256_maskz_loadu_epi8(m, op.add(i));
                for &s in starts {
                    let v = _mm512_maskz_loadu_epi8(lanes(2 * k - 1), xp.add(s + 2 * i));
                    acc = _mm256_max_epu8(acc, _mm512_cvtepi16_epi8(_mm512_and_si512(v, low_bytes)));
                }
                _mm256_mask_storeu_epi8(op.add(i), m, acc);
                i += 32;
            }
        }
    }

    /// `super::max_f32_avx512`: per pixel, 16 samples at a time folded in a register over the
    /// taps, the last vector masked.
    ///
    /// # Safety
    /// AVX-512F; `out` holds `bases.len() * w` floats, and `x` every pixel read.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn max_f32_avx512(out: &mut [f32], x: &[f32], bases: &[usize], taps: &[usize], w: usize) {
        for (p, &base) in bases.iter().enumerate() {
            let mut s = 0;
            while s < w {
                let m: __mmask16 = if w - s >= 16 { 0xffff } else { (1u16 << (w - s)) - 1 };
                // SAFETY: the masked lanes are floats s..min(s + 16, w) of pixel p and of each tap.
                unsafe {
                    let mut acc = _mm512_set1_ps(f32::NEG_INFINITY);
                    for &t in taps {
                        acc = _mm512_max_ps(_mm512_maskz_loadu_ps(m, x.as_ptr().add(base + t + s)), acc);
                    }
                    _mm512_mask_storeu_ps(out.as_mut_ptr().add(p * w + s), m, acc);
                }
                s += 16;
            }
        }
    }

    /// `super::fold_rows`, 16 outputs at a time, the last step masked.
    ///
    /// # Safety
    /// AVX-512F; `out` is not empty, `s + (out.len() - 1) * stride < x.len()` for every start `s`,
    /// and `16 * stride < 2^31`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn fold_rows_avx512(out: &mut [f32], x: &[f32], starts: &[usize], stride: usize, sum: bool) {
        let n = out.len();
        let (op, xp) = (out.as_mut_ptr(), x.as_ptr());
        let lanes = |k: usize| -> __mmask16 { ((1u32 << k.min(16)) - 1) as __mmask16 };
        let evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        // Gather offsets, for strides above 2 only (a 32-bit multiply is slow).
        let offsets = if stride > 2 {
            _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(stride as i32))
        } else {
            _mm512_setzero_si512()
        };
        let mut i = 0;
        while i < n {
            let k = (n - i).min(16);
            let m = lanes(k);
            // SAFETY: lane j < k reads x[s + (i + j) * stride], inside `x` by the contract; at
            // stride 2 the loads cover x[s + 2i .. s + 2i + 2k - 1] only. Lanes of `out` past k
            // are neither read nor written.
            unsafe {
                let mut acc = _mm512_maskz_loadu_ps(m, op.add(i));
                for &s in starts {
                    let p = xp.add(s + i * stride);
                    let v = match stride {
                        1 => _mm512_maskz_loadu_ps(m, p),
                        2 => {
                            let reach = 2 * k - 1;
                            let lo = _mm512_maskz_loadu_ps(lanes(reach), p);
                            let hi = _mm512_maskz_loadu_ps(lanes(reach.saturating_sub(16)), p.add(16));
                            _mm512_permutex2var_ps(lo, evens, hi)
                        }
                        _ => _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), m, offsets, p),
                    };
                    // max(v, acc) returns acc where v is NaN: NaN inputs are skipped, as f32::max does.
                    acc = if sum { _mm512_add_ps(acc, v) } else { _mm512_max_ps(v, acc) };
                }
                _mm512_mask_storeu_ps(op.add(i), m, acc);
            }
            i += 16;
        }
    }

    /// `o += s`, 16 samples at a time, the last vector masked (`super::fold`'s sum).
    ///
    /// # Safety
    /// AVX-512F must be available.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn add16(o: &mut [f32], s: &[f32]) {
        let n = o.len().min(s.len());
        let (op, sp) = (o.as_mut_ptr(), s.as_ptr());
        let combine = |a: __m512, b: __m512| _mm512_add_ps(a, b);
        let mut k = 0;
        // SAFETY: k + 16 <= n, and the masked tail covers lanes below n only.
        unsafe {
            while k + 16 <= n {
                _mm512_storeu_ps(op.add(k), combine(_mm512_loadu_ps(op.add(k)), _mm512_loadu_ps(sp.add(k))));
                k += 16;
            }
            if k < n {
                let m: __mmask16 = (1u16 << (n - k)) - 1;
                let v = combine(_mm512_maskz_loadu_ps(m, op.add(k)), _mm512_maskz_loadu_ps(m, sp.add(k)));
                _mm512_mask_storeu_ps(op.add(k), m, v);
            }
        }
    }
}
