//! Dense 3x3 convolutions at stride 1 by Winograd's minimal filtering F(2x2, 3x3), `f32-conv-winograd`
//! (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016): each 2x2 block
//! of outputs ("tile") comes from a 4x4 patch of the input through 16 products instead of 36,
//! so the multiply-adds of a dense layer drop 2.25-fold, at the price of three transforms.
//!
//! 1. Input: every channel's patches transformed, `V = Bt d B`, into `v` `[channels, 16, T]`
//!    (`T` = tiles times the tile's samples).
//! 2. Products: for each of the 16 positions `xi`, `M[xi] = U[xi] x V[xi]`, a dense GEMM of
//!    `[out, channels] x [channels, T]` (`U = G g Gt`, the weights transformed once per layer),
//!    into `m` `[out, 16, T]`.
//! 3. Output: `Y = At M A` plus the bias, into the output image `[out, oh, ow, w]`.
//!
//! Each step works on contiguous parts (input channels, then output channels), which the
//! executor runs over its threads. The scalar twin is the plain convolution (`im2col` and
//! `dense::dense_ref`); the tests compare within rounding (the transforms reassociate sums).

use std::ops::Range;

use super::Isa;
use super::dense;
use super::spmm::Ld;
use super::window::Geometry;

/// Products per tile: the 4x4 positions of the transformed patch.
const POSITIONS: usize = 16;

/// A 3x3 convolution's weights transformed for F(2x2, 3x3): `u` is `[16, rows, channels]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Winograd {
    pub rows: usize,
    pub channels: usize,
    u: Vec<f32>,
}

/// Whether the window is one this kernel computes: 3x3, stride 1, no dilation, padding of at
/// most 2 on each side (so that every tile's patch starts at most 2 pixels before the image).
pub fn applies(g: &Geometry) -> bool {
    let w = &g.window;
    w.kernel == [3, 3] && w.stride == [1, 1] && w.dilation == [1, 1] && w.pads.iter().all(|&p| p <= 2) && !w.ceil_mode
}

impl Winograd {
    /// `wt` is `[rows, channels * 9]` as im2col orders it (channel, kernel row, kernel column).
    pub fn new(wt: &[f32], rows: usize, channels: usize) -> Winograd {
        assert_eq!(wt.len(), rows * channels * 9, "weights of a 3x3 convolution");
        const G: [[f32; 3]; 4] = [[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]];
        let mut u = vec![0.0; POSITIONS * rows * channels];
        for o in 0..rows {
            for c in 0..channels {
                let k = &wt[(o * channels + c) * 9..][..9];
                let gk: [[f32; 3]; 4] = std::array::from_fn(|a| std::array::from_fn(|j| (0..3).map(|i| G[a][i] * k[i * 3 + j]).sum()));
                for a in 0..4 {
                    for b in 0..4 {
                        u[(a * 4 + b) * rows * channels + o * channels + c] = (0..3).map(|j| gk[a][j] * G[b][j]).sum();
                    }
                }
            }
        }
        Winograd { rows, channels, u }
    }

    pub fn bytes(&self) -> usize {
        4 * self.u.len()
    }

    /// Floats of scratch a whole image of `g` needs: the transformed input, then the products.
    pub fn scratch_len(&self, g: &Geometry) -> usize {
        POSITIONS * (self.channels + self.rows) * tile_columns(g)
    }
}

/// `T`: tiles of the output image times the samples of a tile.
pub fn tile_columns(g: &Geometry) -> usize {
    g.out_hw[0].div_ceil(2) * g.out_hw[1].div_ceil(2) * g.w
}

/// Step 1 for input channels `channels` of the image `x` (`[c, h, wd, w]`): their transformed
/// patches, `v` `[channels.len(), 16, T]`.
pub fn transform_input(g: &Geometry, x: &[f32], channels: Range<usize>, v: &mut [f32]) {
    let ([h, wd], [oh, ow], s) = (g.in_hw, g.out_hw, g.w);
    let (top, left) = (g.window.pads[0], g.window.pads[1]);
    let (tiles_h, tiles_w) = (oh.div_ceil(2), ow.div_ceil(2));
    let t = tiles_h * tiles_w * s;
    let n = tiles_w * s;
    assert!(channels.end <= g.channels && g.holds_input(x.len()) && v.len() >= channels.len() * POSITIONS * t, "transform sizes");
    // A padded input row, its even and odd pixels (tiles start on even ones), and the column
    // transform of every padded row of the channel (each serves two rows of tiles).
    let padded_rows = 2 * tiles_h + 2;
    let mut padded = vec![0.0f32; (2 * tiles_w + 2) * s];
    let (mut even, mut odd) = (vec![0.0f32; (tiles_w + 1) * s], vec![0.0f32; (tiles_w + 1) * s]);
    let mut columns = vec![0.0f32; padded_rows * 4 * n];
    for (i, c) in channels.enumerate() {
        for (pr, col) in columns.chunks_exact_mut(4 * n).enumerate() {
            padded.fill(0.0);
            if let Some(r) = pr.checked_sub(top).filter(|&r| r < h) {
                let first = left.min(padded.len() / s);
                let len = wd.min(padded.len() / s - first);
                padded[first * s..(first + len) * s].copy_from_slice(&x[(c * h + r) * wd * s..][..len * s]);
            }
            deinterleave(&padded, s, &mut even, &mut odd);
            let (e0, e1, o0, o1) = (&even[..n], &even[s..s + n], &odd[..n], &odd[s..s + n]);
            let (c0, rest) = col.split_at_mut(n);
            let (c1, rest) = rest.split_at_mut(n);
            let (c2, c3) = rest.split_at_mut(n);
            for k in 0..n {
                c0[k] = e0[k] - e1[k];
                c1[k] = o0[k] + e1[k];
                c2[k] = e1[k] - o0[k];
                c3[k] = o0[k] - o1[k];
            }
        }
        // The row transform, position (a', b') from column b' of the tile's four rows.
        let out = &mut v[i * POSITIONS * t..][..POSITIONS * t];
        for ti in 0..tiles_h {
            let at = ti * n;
            for b in 0..4 {
                let r = |a: usize| &columns[((2 * ti + a) * 4 + b) * n..][..n];
                let (r0, r1, r2, r3) = (r(0), r(1), r(2), r(3));
                let row = |a: usize| (a * 4 + b) * t + at;
                out[row(0)..][..n].iter_mut().zip(r0.iter().zip(r2)).for_each(|(d, (p, q))| *d = p - q);
                out[row(1)..][..n].iter_mut().zip(r1.iter().zip(r2)).for_each(|(d, (p, q))| *d = p + q);
                out[row(2)..][..n].iter_mut().zip(r2.iter().zip(r1)).for_each(|(d, (p, q))| *d = p - q);
                out[row(3)..][..n].iter_mut().zip(r1.iter().zip(r3)).for_each(|(d, (p, q))| *d = p - q);
            }
        }
    }
}

/// Steps 2 and 3 for output channels `rows`: their products from the transformed input `v`
/// (all channels), into `m` (`[rows.len(), 16, T]`), and their outputs into `y`
/// (`[rows.len(), oh, ow, w]`), with the bias and an optional ReLU.
pub fn multiply_and_transform_output(
    isa: Isa,
    wg: &Winograd,
    bias: &[f32],
    g: &Geometry,
    v: &[f32],
    rows: Range<usize>,
    m: &mut [f32],
    y: &mut [f32],
    relu: bool,
) {
    let ([oh, ow], s) = (g.out_hw, g.w);
    let (tiles_h, tiles_w) = (oh.div_ceil(2), ow.div_ceil(2));
    let t = tiles_h * tiles_w * s;
    let (k, count) = (wg.channels, rows.len());
    assert!(wg.rows == bias.len() && rows.end <= wg.rows && g.channels == k, "weights, bias or rows");
    assert!(v.len() >= k * POSITIONS * t && m.len() >= count * POSITIONS * t && y.len() >= count * oh * ow * s, "scratch or output");
    let zero = vec![0.0f32; count];
    let ld = Ld { x: POSITIONS * t, y: POSITIONS * t };
    for xi in 0..POSITIONS {
        let u = &wg.u[xi * wg.rows * k + rows.start * k..][..count * k];
        dense::dense_strided(isa, u, count, k, &zero, &v[xi * t..], t, &mut m[xi * t..], false, ld);
    }
    let n = tiles_w * s;
    let mut e = [
        [vec![0.0f32; n], vec![0.0f32; n], vec![0.0f32; n], vec![0.0f32; n]],
        [vec![0.0f32; n], vec![0.0f32; n], vec![0.0f32; n], vec![0.0f32; n]],
    ];
    let (mut left, mut right) = (vec![0.0f32; n], vec![0.0f32; n]);
    for (i, o) in rows.enumerate() {
        let products = &m[i * POSITIONS * t..][..POSITIONS * t];
        let at = |xi: usize, ti: usize| &products[xi * t + ti * n..][..n];
        for ti in 0..tiles_h {
            // Rows of At M: output row 2 ti from positions 0, 1, 2 and row 2 ti + 1 from 1, 2, 3.
            for b in 0..4 {
                let [m0, m1, m2, m3] = [at(b, ti), at(4 + b, ti), at(8 + b, ti), at(12 + b, ti)];
                for k in 0..n {
                    e[0][b][k] = m0[k] + m1[k] + m2[k];
                    e[1][b][k] = m1[k] - m2[k] - m3[k];
                }
            }
            for (a, ea) in e.iter().enumerate() {
                let oy = 2 * ti + a;
                if oy >= oh {
                    break;
                }
                let bias = bias[o];
                for k in 0..n {
                    let (l, r) = (ea[0][k] + ea[1][k] + ea[2][k] + bias, ea[1][k] - ea[2][k] - ea[3][k] + bias);
                    (left[k], right[k]) = if relu { (l.max(0.0), r.max(0.0)) } else { (l, r) };
                }
                interleave(&left, &right, s, &mut y[(i * oh + oy) * ow * s..][..ow * s]);
            }
        }
    }
}

/// Pixels (`s` floats each) of `row` at even and odd positions into `even` and `odd`, as many as
/// they hold.
fn deinterleave(row: &[f32], s: usize, even: &mut [f32], odd: &mut [f32]) {
    if s == 1 {
        for ((pair, e), o) in row.chunks_exact(2).zip(even.iter_mut()).zip(odd.iter_mut()) {
            (*e, *o) = (pair[0], pair[1]);
        }
        return;
    }
    for ((pair, e), o) in row.chunks_exact(2 * s).zip(even.chunks_exact_mut(s)).zip(odd.chunks_exact_mut(s)) {
        e.copy_from_slice(&pair[..s]);
        o.copy_from_slice(&pair[s..]);
    }
}

/// The inverse of `deinterleave`: `row` (`s` floats per pixel) from its even pixels `left` and
/// odd ones `right`, up to its length.
fn interleave(left: &[f32], right: &[f32], s: usize, row: &mut [f32]) {
    if s == 1 {
        let half = row.len() / 2;
        let mut pairs = row.chunks_exact_mut(2);
        for ((pair, l), r) in (&mut pairs).zip(left).zip(right) {
            (pair[0], pair[1]) = (*l, *r);
        }
        if let ([last], Some(l)) = (pairs.into_remainder(), left.get(half)) {
            *last = *l;
        }
        return;
    }
    for (j, pixel) in row.chunks_exact_mut(s).enumerate() {
        pixel.copy_from_slice(if j % 2 == 0 { &left[j / 2 * s..][..s] } else { &right[j / 2 * s..][..s] });
    }
}

/// The whole convolution on the calling thread; `scratch` holds `wg.scratch_len(g)` floats.
pub fn conv_winograd(isa: Isa, wg: &Winograd, bias: &[f32], g: &Geometry, x: &[f32], y: &mut [f32], relu: bool, scratch: &mut [f32]) {
    let (v, m) = scratch.split_at_mut(POSITIONS * wg.channels * tile_columns(g));
    transform_input(g, x, 0..wg.channels, v);
    multiply_and_transform_output(isa, wg, bias, g, v, 0..wg.rows, m, y, relu);
}
