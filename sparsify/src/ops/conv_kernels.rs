//! The training convolution's kernels, on plain NCHW `f32` slices: im2col, its adjoint col2im
//! and GEMM (the `gemm` crate, one thread each), over the batch's samples in parallel — the
//! forward pass, the input's gradient and the weight's gradient of a 2-D convolution with one
//! group. Each has a scalar twin in the tests.

use std::ops::Range;

use super::gemm::{Operand, matmul};

/// A convolution's sizes: input `[batch, channels, height, width]`, weight
/// `[out_channels, channels, kernel[0], kernel[1]]`, the same stride and zero padding on both
/// axes, no dilation; output `[batch, out_channels, out_h, out_w]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub batch: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub out_channels: usize,
    pub kernel: [usize; 2],
    pub stride: usize,
    pub pad: usize,
    pub out_h: usize,
    pub out_w: usize,
}

impl Geometry {
    /// The geometry of a convolution of `x` by `weight` (shapes as above), or `None` where the
    /// shapes do not fit each other, the window does not fit the padded input, or a size is zero.
    pub fn new(x: [usize; 4], weight: [usize; 4], stride: usize, pad: usize) -> Option<Geometry> {
        let [batch, channels, height, width] = x;
        let [out_channels, c, kh, kw] = weight;
        if c != channels || stride == 0 || x.iter().chain(&weight).any(|&d| d == 0) {
            return None;
        }
        let out = |size: usize, k: usize| pad.checked_mul(2)?.checked_add(size)?.checked_sub(k).map(|s| s / stride + 1);
        let (out_h, out_w) = (out(height, kh)?, out(width, kw)?);
        Some(Geometry { batch, channels, height, width, out_channels, kernel: [kh, kw], stride, pad, out_h, out_w })
    }

    /// Rows of the im2col matrix (one per input channel and kernel tap).
    fn taps(&self) -> usize {
        self.channels * self.kernel[0] * self.kernel[1]
    }

    /// Output positions of one sample (the im2col matrix's columns).
    fn positions(&self) -> usize {
        self.out_h * self.out_w
    }

    fn input_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    fn output_len(&self) -> usize {
        self.out_channels * self.positions()
    }

    /// A 1x1 window at stride 1 without padding: the input is its own im2col matrix.
    fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1] && self.stride == 1 && self.pad == 0
    }
}

/// The output coordinates `o < out` whose input coordinate `o * stride + tap - pad` lies in
/// `0..size`.
fn valid_outputs(out: usize, size: usize, stride: usize, tap: usize, pad: usize) -> std::ops::Range<usize> {
    let first = pad.saturating_sub(tap).div_ceil(stride).min(out);
    let end = (size + pad).checked_sub(tap).map_or(0, |limit| limit.div_ceil(stride)).min(out);
    first..end.max(first)
}

/// Where a stride-1 convolution keeps the image's width, each im2col row of a tap `(i, j)` is the
/// plane shifted by `(i - pad) * width + j - pad`, except at the borders: the positions
/// `block` whose source `position + shift` lies in the plane, among the valid output `rows`.
/// `None` where the row is wholly padding or the shape is another.
fn shifted_block(g: &Geometry, i: usize, j: usize, rows: &Range<usize>, cols: &Range<usize>) -> Option<(Range<usize>, isize)> {
    if g.stride != 1 || g.out_w != g.width || rows.is_empty() || cols.is_empty() {
        return None;
    }
    let w = g.width;
    let shift = (i as isize - g.pad as isize) * w as isize + j as isize - g.pad as isize;
    let start = (rows.start * w).max(usize::try_from(-shift).unwrap_or(0));
    let end = (rows.end * w).min(usize::try_from(g.height as isize * w as isize - shift).unwrap_or(0));
    Some((start..end.max(start), shift))
}

/// Zeroes the entries of an im2col row `[out_h * out_w]` in the valid `rows` but outside the
/// valid `cols` (where a shifted block wrapped around a line's end).
fn zero_outside_columns(row: &mut [f32], out_w: usize, rows: &Range<usize>, cols: &Range<usize>) {
    if cols.start == 0 && cols.end == out_w {
        return;
    }
    for line in row[rows.start * out_w..rows.end * out_w].chunks_exact_mut(out_w) {
        line[..cols.start].fill(0.0);
        line[cols.end..].fill(0.0);
    }
}

/// `position + shift` for a position of a shifted block (inside the plane by construction).
fn source(position: usize, shift: isize) -> usize {
    (position as isize + shift) as usize
}

/// A kernel tap `(i, j)` as an im2col row of any input channel reads it: valid at the output
/// rows `rows` and columns `cols` (elsewhere the tap reads padding), and its shifted block
/// where it has one (`shifted_block`). The same for every channel and sample of a call.
struct Tap {
    i: usize,
    j: usize,
    rows: Range<usize>,
    cols: Range<usize>,
    shifted: Option<(Range<usize>, isize)>,
}

/// The kernel's taps in the im2col matrix's order within a channel: kernel row, then column.
fn kernel_taps(g: &Geometry) -> Vec<Tap> {
    let [kh, kw] = g.kernel;
    (0..kh)
        .flat_map(|i| (0..kw).map(move |j| (i, j)))
        .map(|(i, j)| {
            let rows = valid_outputs(g.out_h, g.height, g.stride, i, g.pad);
            let cols = valid_outputs(g.out_w, g.width, g.stride, j, g.pad);
            let shifted = shifted_block(g, i, j, &rows, &cols);
            Tap { i, j, rows, cols, shifted }
        })
        .collect()
}

/// The im2col matrix's rows `[positions]` in order (channel, then kernel row, then kernel
/// column), each with its channel and tap.
fn im2col_rows<'a>(taps: &'a [Tap], col: &'a mut [f32], positions: usize) -> impl Iterator<Item = (usize, &'a Tap, &'a mut [f32])> {
    col.chunks_exact_mut(positions).enumerate().map(move |(r, row)| (r / taps.len(), &taps[r % taps.len()], row))
}

/// One sample's im2col matrix, `[taps, positions]`: row `(c, i, j)`, column `(oy, ox)` holds
/// `x[c][oy * stride + i - pad][ox * stride + j - pad]`, zero in the padding.
fn im2col(g: &Geometry, taps: &[Tap], x: &[f32], col: &mut [f32]) {
    let (plane_len, s) = (g.height * g.width, g.stride);
    for (channel, Tap { i, j, rows, cols, shifted }, row) in im2col_rows(taps, col, g.positions()) {
        let (i, j) = (*i, *j);
        let plane = &x[channel * plane_len..][..plane_len];
        if let Some((block, shift)) = shifted {
            let shift = *shift;
            row[..block.start].fill(0.0);
            row[block.end..].fill(0.0);
            row[block.clone()].copy_from_slice(&plane[source(block.start, shift)..source(block.end, shift)]);
            zero_outside_columns(row, g.out_w, rows, cols);
            continue;
        }
        for (oy, out) in row.chunks_exact_mut(g.out_w).enumerate() {
            if !rows.contains(&oy) || cols.is_empty() {
                out.fill(0.0);
                continue;
            }
            let line = &plane[(oy * s + i - g.pad) * g.width..][..g.width];
            out[..cols.start].fill(0.0);
            out[cols.end..].fill(0.0);
            let first = cols.start * s + j - g.pad;
            if s == 1 {
                out[cols.clone()].copy_from_slice(&line[first..first + cols.len()]);
            } else {
                out[cols.clone()].iter_mut().zip(line[first..].iter().step_by(s)).for_each(|(o, v)| *o = *v);
            }
        }
    }
}

/// The adjoint of `im2col`: adds each entry of `col` to the input pixel it was read from
/// (`col`'s entries that map to padding may be overwritten).
fn col2im(g: &Geometry, taps: &[Tap], col: &mut [f32], dx: &mut [f32]) {
    let (plane_len, s) = (g.height * g.width, g.stride);
    for (channel, Tap { i, j, rows, cols, shifted }, row) in im2col_rows(taps, col, g.positions()) {
        let (i, j) = (*i, *j);
        let plane = &mut dx[channel * plane_len..][..plane_len];
        if let Some((block, shift)) = shifted {
            zero_outside_columns(row, g.out_w, rows, cols);
            let sources = &mut plane[source(block.start, *shift)..source(block.end, *shift)];
            sources.iter_mut().zip(&row[block.clone()]).for_each(|(d, v)| *d += v);
            continue;
        }
        if cols.is_empty() {
            continue;
        }
        for oy in rows.clone() {
            let line = &mut plane[(oy * s + i - g.pad) * g.width..][..g.width];
            let first = cols.start * s + j - g.pad;
            let values = &row[oy * g.out_w..][cols.clone()];
            if s == 1 {
                line[first..first + values.len()].iter_mut().zip(values).for_each(|(d, v)| *d += v);
            } else {
                for (d, v) in line[first..].iter_mut().step_by(s).zip(values) {
                    *d += v;
                }
            }
        }
    }
}

/// Samples per parallel task: the batch split evenly over the team's threads.
fn samples_per_task(batch: usize) -> usize {
    batch.div_ceil(super::threads()).max(1)
}

/// A task's im2col buffer (none for pointwise convolutions).
fn scratch(g: &Geometry) -> Vec<f32> {
    vec![0.0; if g.is_pointwise() { 0 } else { g.taps() * g.positions() }]
}

/// One sample's im2col matrix: the sample itself for a pointwise convolution, else built in `col`.
fn columns<'a>(g: &Geometry, taps: &[Tap], x: &'a [f32], col: &'a mut [f32]) -> &'a [f32] {
    if g.is_pointwise() {
        return x;
    }
    im2col(g, taps, x, col);
    col
}

/// `y = conv(x, weight)`, `[batch, out_channels, out_h, out_w]`.
pub fn forward(g: &Geometry, x: &[f32], weight: &[f32]) -> Vec<f32> {
    let mut y = super::zeros(g.batch * g.output_len());
    let w = Operand::rows(weight, g.taps());
    let dims = [g.out_channels, g.taps(), g.positions()];
    let (chunk, taps) = (samples_per_task(g.batch), kernel_taps(g));
    super::for_each(y.chunks_mut(chunk * g.output_len()).zip(x.chunks(chunk * g.input_len())), |(ys, xs)| {
        let mut col = scratch(g);
        for (y, x) in ys.chunks_mut(g.output_len()).zip(xs.chunks(g.input_len())) {
            matmul(y, false, w, Operand::rows(columns(g, &taps, x, &mut col), g.positions()), dims);
        }
    });
    y
}

/// The gradient of the loss with respect to `x`, given its gradient `dy` with respect to `y`:
/// `col2im(weight^T dy)` per sample.
pub fn input_grad(g: &Geometry, weight: &[f32], dy: &[f32]) -> Vec<f32> {
    let mut dx = super::zeros(g.batch * g.input_len());
    let wt = Operand::transposed(weight, g.taps());
    let dims = [g.taps(), g.out_channels, g.positions()];
    let (chunk, taps) = (samples_per_task(g.batch), kernel_taps(g));
    super::for_each(dx.chunks_mut(chunk * g.input_len()).zip(dy.chunks(chunk * g.output_len())), |(dxs, dys)| {
        let mut col = scratch(g);
        for (dx, dy) in dxs.chunks_mut(g.input_len()).zip(dys.chunks(g.output_len())) {
            let dy = Operand::rows(dy, g.positions());
            if g.is_pointwise() {
                matmul(dx, false, wt, dy, dims);
            } else {
                matmul(&mut col, false, wt, dy, dims);
                col2im(g, &taps, &mut col, dx);
            }
        }
    });
    dx
}

/// The gradient of the loss with respect to the weight: the sum over samples of
/// `dy im2col(x)^T`, `[out_channels, taps]`.
pub fn weight_grad(g: &Geometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let dims = [g.out_channels, g.positions(), g.taps()];
    let (chunk, taps) = (samples_per_task(g.batch), kernel_taps(g));
    let partial = |(xs, dys): (&[f32], &[f32])| {
        let mut dw = vec![0.0; g.out_channels * g.taps()];
        let mut col = scratch(g);
        for (x, dy) in xs.chunks(g.input_len()).zip(dys.chunks(g.output_len())) {
            let columns = columns(g, &taps, x, &mut col);
            matmul(&mut dw, true, Operand::rows(dy, g.positions()), Operand::transposed(columns, g.positions()), dims);
        }
        dw
    };
    let partials = super::map(x.chunks(chunk * g.input_len()).zip(dy.chunks(chunk * g.output_len())), partial);
    partials
        .into_iter()
        .reduce(|mut sum, p| {
            sum.iter_mut().zip(p).for_each(|(s, v)| *s += v);
            sum
        })
        .unwrap_or_else(|| vec![0.0; g.out_channels * g.taps()])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Input coordinate of output `o` at kernel tap `t`, if inside the image.
    fn source(o: usize, t: usize, g: &Geometry, size: usize) -> Option<usize> {
        (o * g.stride + t).checked_sub(g.pad).filter(|&v| v < size)
    }

    /// The convolution and both gradients by their definitions, one multiply-add at a time.
    fn scalar(g: &Geometry, x: &[f32], w: &[f32], dy: &[f32]) -> [Vec<f32>; 3] {
        let [kh, kw] = g.kernel;
        let (mut y, mut dx, mut dw) = (vec![0.0; g.batch * g.output_len()], vec![0.0; x.len()], vec![0.0; w.len()]);
        for b in 0..g.batch {
            for o in 0..g.out_channels {
                for oy in 0..g.out_h {
                    for ox in 0..g.out_w {
                        let yi = ((b * g.out_channels + o) * g.out_h + oy) * g.out_w + ox;
                        for c in 0..g.channels {
                            for i in 0..kh {
                                for j in 0..kw {
                                    let (Some(iy), Some(ix)) = (source(oy, i, g, g.height), source(ox, j, g, g.width)) else { continue };
                                    let xi = ((b * g.channels + c) * g.height + iy) * g.width + ix;
                                    let wi = ((o * g.channels + c) * kh + i) * kw + j;
                                    y[yi] += x[xi] * w[wi];
                                    dx[xi] += w[wi] * dy[yi];
                                    dw[wi] += x[xi] * dy[yi];
                                }
                            }
                        }
                    }
                }
            }
        }
        [y, dx, dw]
    }

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.5 - 1.0).collect()
    }

    #[test]
    fn kernels_match_their_definitions_on_edge_shapes() {
        // (batch, channels, side h, side w, out, kernel h, kernel w, stride, pad)
        let cases = [
            (3, 2, 7, 5, 4, 3, 3, 1, 1),
            (2, 3, 8, 8, 5, 3, 3, 2, 1),
            (5, 4, 6, 6, 3, 1, 1, 1, 0),
            (2, 4, 7, 7, 3, 1, 1, 2, 0),
            (1, 1, 5, 9, 2, 5, 5, 1, 2),
            (3, 2, 9, 9, 2, 3, 2, 3, 2),
            (4, 3, 3, 3, 2, 3, 3, 1, 2),
            (2, 1, 1, 1, 3, 1, 1, 1, 0),
            (1, 2, 4, 4, 1, 4, 4, 1, 0),
            // Stride 1 keeping the width: rows copied as shifted blocks.
            (2, 2, 4, 1, 3, 3, 3, 1, 1),
            (2, 3, 6, 6, 2, 5, 5, 1, 2),
            (1, 2, 2, 3, 2, 3, 3, 1, 1),
        ];
        for (batch, channels, h, w, out, kh, kw, stride, pad) in cases {
            let g = Geometry::new([batch, channels, h, w], [out, channels, kh, kw], stride, pad).unwrap();
            let x = values(batch * channels * h * w, 1);
            let weight = values(out * channels * kh * kw, 2);
            let dy = values(batch * g.output_len(), 3);
            let [y, dx, dw] = scalar(&g, &x, &weight, &dy);
            for (name, got, want) in
                [("y", forward(&g, &x, &weight), y), ("dx", input_grad(&g, &weight, &dy), dx), ("dw", weight_grad(&g, &x, &dy), dw)]
            {
                assert_eq!(got.len(), want.len(), "{g:?} {name}");
                for (a, b) in got.iter().zip(&want) {
                    assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{g:?} {name}: {a} against {b}");
                }
            }
        }
        assert_eq!(Geometry::new([1, 2, 3, 3], [1, 2, 5, 5], 1, 0), None, "window larger than the image");
        assert_eq!(Geometry::new([1, 2, 3, 3], [1, 3, 3, 3], 1, 1), None, "channels differ");
        assert_eq!(Geometry::new([1, 2, 3, 3], [1, 2, 3, 3], 0, 1), None, "stride 0");
    }
}
