//! Dense 3x3 convolutions at stride 1 on one sample by Winograd's minimal filtering F(2x2, 3x3)
//! (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016),
//! `f32-conv-winograd`: each 2x2 block of outputs ("tile") comes from the 4x4 input patch under
//! it as `A^T [(G g G^T) . (B^T d B)] A`, 16 products per pair of channels where the direct
//! convolution does 36. Summed over the input channels, each of the 16 positions `xi` of the
//! transformed patch is a matrix product, `M[xi] = U[xi] V[xi]`: `U[xi]` the transformed weights
//! `[rows, channels]`, packed once for the product's register tile, `V[xi]` the transformed input
//! `[channels, tiles]`.
//!
//! The image's tile rows are worked in chunks whose transformed input and products stay in the
//! core's L2 cache: input transform, the 16 products, output transform (bias, residual, ReLU)
//! per chunk. The work splits over threads by tile rows where the image has more tiles than the
//! layer has output channels (every part reads all the weights), else by output channels (the
//! parts sharing one transformed input, each transforming its share of the input channels
//! first, where the image is one chunk).

use std::ops::Range;

use super::window::Geometry;
use super::{Isa, SharedMut};

/// Output channels in one register tile of the products (and the weights' packing unit).
const ROWS: usize = 8;

/// Tiles in one vector: tiles are padded to a multiple of it per chunk.
const LANES: usize = 16;

/// Floats between the 16 planes of a transformed input or products of `rows` rows of `padded`
/// tiles: a cache line more than their rows, so that the planes, which a transform reads or
/// writes at once, do not fall in the same L1 sets where the rows' bytes are a multiple of 4 KiB
/// (64 channels of 112 tiles).
fn plane(rows: usize, padded: usize) -> usize {
    rows * padded + LANES
}

/// Bytes of transformed input and products one chunk of tile rows may keep (in L2).
const CHUNK_BYTES: usize = 1 << 20;

/// A convolution's weights transformed for F(2x2, 3x3): `u[xi][block][channel][ROWS]`, the
/// output channels padded with zeros to whole blocks of `ROWS`.
#[derive(Debug)]
pub struct Winograd {
    pub rows: usize,
    pub channels: usize,
    blocks: usize,
    u: Vec<f32>,
}

/// Whether `g` is a convolution Winograd's F(2x2, 3x3) takes here: 3x3, stride 1, no dilation,
/// one sample, a non-empty output.
pub fn applies(g: &Geometry) -> bool {
    let w = g.window;
    w.kernel == [3, 3]
        && w.stride == [1, 1]
        && w.dilation == [1, 1]
        && !w.ceil_mode
        && g.w == 1
        && g.out_hw[0] > 0
        && g.out_hw[1] > 0
        && g.channels > 0
}

impl Winograd {
    /// The transform of dense weights `[rows, channels * 9]` (input channel, then kernel row and
    /// column, as im2col orders them).
    pub fn new(data: &[f32], rows: usize, channels: usize) -> Winograd {
        assert!(data.len() == rows * channels * 9, "3x3 weights of {rows} x {channels}");
        let blocks = rows.div_ceil(ROWS);
        let mut u = vec![0.0f32; 16 * blocks * channels * ROWS];
        for r in 0..rows {
            for c in 0..channels {
                let g = &data[(r * channels + c) * 9..][..9];
                // G g (4x3), then (G g) G^T (4x4), in f64.
                let mut gg = [[0.0f64; 3]; 4];
                for j in 0..3 {
                    let [a, b, d] = [g[j], g[3 + j], g[6 + j]].map(f64::from);
                    gg[0][j] = a;
                    gg[1][j] = (a + b + d) / 2.0;
                    gg[2][j] = (a - b + d) / 2.0;
                    gg[3][j] = d;
                }
                for (i, [a, b, d]) in gg.into_iter().enumerate() {
                    let row = [a, (a + b + d) / 2.0, (a - b + d) / 2.0, d];
                    for (j, v) in row.into_iter().enumerate() {
                        u[(((4 * i + j) * blocks + r / ROWS) * channels + c) * ROWS + r % ROWS] = v as f32;
                    }
                }
            }
        }
        Winograd { rows, channels, blocks, u }
    }

    /// Bytes of the transformed weights.
    pub fn bytes(&self) -> usize {
        4 * self.u.len()
    }

    /// The weights of product `xi` for output block `block`: `[channels, ROWS]`.
    fn panel(&self, xi: usize, block: usize) -> &[f32] {
        &self.u[(xi * self.blocks + block) * self.channels * ROWS..][..self.channels * ROWS]
    }

    /// How `conv_winograd` works `g` on at most `parts` threads.
    fn plan(&self, isa: Isa, g: &Geometry, parts: usize) -> Plan {
        let [ty, tx] = g.out_hw.map(|n| n.div_ceil(2));
        // Split by output channels where the weights are more than the transformed input.
        let by_rows = self.rows > ty * tx;
        let parts = parts.clamp(1, if by_rows { self.blocks } else { ty });
        let blocks_per_part = if by_rows { self.blocks.div_ceil(parts) } else { self.blocks };
        let per_chunk = |rows: usize| 16 * (self.channels + blocks_per_part * ROWS) * (rows * tx).next_multiple_of(LANES) * 4;
        let most = if by_rows { ty } else { ty.div_ceil(parts) };
        // The most rows within the budget, or within one row's bytes where a row alone passes it
        // (tiles padded to a whole vector: 7x7 images' 16 tiles cost what one row of 4 does).
        let budget = CHUNK_BYTES.max(per_chunk(1));
        let fit = (1..=most).rev().find(|&r| per_chunk(r) <= budget).unwrap_or(1);
        // Among the chunk heights from half of that up, the one padding its tiles least.
        let waste = |r: usize| ((r * tx).next_multiple_of(LANES) - r * tx) as f64 / (r * tx) as f64;
        let chunk = ((fit.div_ceil(2))..=fit).rev().fold(fit, |best, r| if waste(r) < waste(best) { r } else { best });
        let padded = (chunk * tx).next_multiple_of(LANES);
        // Parts of output channels on a whole image in one chunk share its transformed input,
        // each transforming its share of the input channels first (AVX-512).
        let shared_input = by_rows && parts > 1 && chunk >= ty && isa == Isa::Avx512;
        let input_len = 16 * plane(self.channels, padded);
        // Transformed input (unless shared), products (and a vector to spare).
        let part_len = if shared_input { 0 } else { input_len } + 16 * plane(blocks_per_part * ROWS, padded) + LANES;
        let shared_len = if shared_input { input_len } else { 0 };
        Plan { ty, tx, by_rows, parts, blocks_per_part, chunk, part_len, shared_len }
    }

    /// Scratch floats `conv_winograd` needs on `g` to run as `parts` parts under `isa`.
    pub fn scratch_len(&self, isa: Isa, g: &Geometry, parts: usize) -> usize {
        let plan = self.plan(isa, g, parts);
        plan.shared_len + plan.part_len * plan.parts
    }
}

/// How one convolution is worked: its tiles, the split and the chunk height.
#[derive(Debug, Clone, Copy)]
struct Plan {
    ty: usize,
    tx: usize,
    /// Parts split the output channels (else the tile rows).
    by_rows: bool,
    parts: usize,
    blocks_per_part: usize,
    /// Tile rows per chunk.
    chunk: usize,
    /// Scratch floats per part.
    part_len: usize,
    /// Scratch floats of a transformed input the parts share (none: each transforms its own).
    shared_len: usize,
}

/// `y = act(conv(x) + bias (+ residual))` for a convolution `Winograd::applies` takes, on one
/// sample: `x` `[channels, h, w]`, `y` and `residual` `[rows, oh, ow]`, ReLU after the residual.
/// Runs as up to `parts` parts, through `run` (which calls the job on `0..parts`, on threads or
/// not), each in its own part of `scratch`; with fewer where `scratch` holds fewer (see
/// `Winograd::scratch_len`). Returns false, having done nothing, where it holds none.
pub fn conv_winograd(
    isa: Isa,
    wg: &Winograd,
    bias: &[f32],
    g: &Geometry,
    x: &[f32],
    residual: Option<&[f32]>,
    y: &mut [f32],
    relu: bool,
    scratch: &mut [f32],
    parts: usize,
    run: impl Fn(&(dyn Fn(usize) + Sync)),
) -> bool {
    assert!(applies(g) && g.channels == wg.channels && bias.len() == wg.rows, "a Winograd convolution's shape");
    assert!(g.holds_input(x.len()) && g.holds_output(y.len(), wg.rows), "input or output size");
    let plane = g.out_hw[0] * g.out_hw[1];
    assert!(residual.is_none_or(|r| r.len() >= wg.rows * plane), "residual size");
    let Some(parts) = (1..=parts.max(1)).rev().find(|&p| wg.scratch_len(isa, g, p) <= scratch.len()) else { return false };
    let plan = wg.plan(isa, g, parts);
    let (input, parts_scratch) = scratch.split_at_mut(plan.shared_len);
    // The parts write disjoint output rows or channels, each its own scratch, and in phase one
    // disjoint channels of the shared input.
    let (y_parts, scratch_parts) = (SharedMut::new(y), SharedMut::new(parts_scratch));
    if plan.shared_len > 0 {
        // Phase one: each part transforms its share of the input channels, whole image.
        let per = g.channels.div_ceil(plan.parts);
        let padded = (plan.ty * plan.tx).next_multiple_of(LANES);
        let v = SharedMut::new(input);
        run(&|p: usize| {
            let channels = (p * per).min(g.channels)..((p + 1) * per).min(g.channels);
            if p < plan.parts && !channels.is_empty() {
                // SAFETY: AVX-512F (a shared input is planned only with it); the input holds 16
                // planes of `channels x padded` floats, and the parts write disjoint channels.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    x86::transform_input(g, x, 0..plan.ty, plan.tx, padded, channels, v.at(0))
                };
            }
        });
    }
    let input = &*input;
    let job = |p: usize| {
        if p >= plan.parts {
            return;
        }
        let (tile_rows, blocks) = if plan.by_rows {
            let b = (p * plan.blocks_per_part).min(wg.blocks)..((p + 1) * plan.blocks_per_part).min(wg.blocks);
            (0..plan.ty, b)
        } else {
            let per = plan.ty.div_ceil(plan.parts);
            ((p * per).min(plan.ty)..((p + 1) * per).min(plan.ty), 0..wg.blocks)
        };
        if tile_rows.is_empty() || blocks.is_empty() {
            return;
        }
        // SAFETY: part p's scratch is its own `part_len` floats, inside `scratch` (the part count
        // was chosen so that they fit).
        let scratch = unsafe { std::slice::from_raw_parts_mut(scratch_parts.at(p * plan.part_len), plan.part_len) };
        let out = Output { y: &y_parts, len: wg.rows * plane };
        let input = (plan.shared_len > 0).then_some(input);
        run_part(isa, wg, bias, g, x, input, residual, out, relu, scratch, &plan, tile_rows, blocks);
    };
    run(&job);
    true
}

/// The output as the parts share it: `len` floats.
#[derive(Clone, Copy)]
struct Output<'a> {
    y: &'a SharedMut,
    len: usize,
}

impl<'a> Output<'a> {
    /// Output row `oy` of channel `r` (`ow` floats).
    ///
    /// # Safety
    /// No other part writes that row while the slice lives.
    unsafe fn row(self, r: usize, oy: usize, g: &Geometry) -> &'a mut [f32] {
        let [oh, ow] = g.out_hw;
        let at = (r * oh + oy) * ow;
        assert!(at + ow <= self.len, "output row inside the output");
        // SAFETY: inside the output (checked); the caller keeps it to one part.
        unsafe { std::slice::from_raw_parts_mut(self.y.at(at), ow) }
    }
}

/// One part: tile rows `tile_rows`, output blocks `blocks`, chunk by chunk; the input already
/// transformed where the parts share it (`input`, one chunk).
#[allow(clippy::too_many_arguments)]
fn run_part(
    isa: Isa,
    wg: &Winograd,
    bias: &[f32],
    g: &Geometry,
    x: &[f32],
    input: Option<&[f32]>,
    residual: Option<&[f32]>,
    out: Output,
    relu: bool,
    scratch: &mut [f32],
    plan: &Plan,
    tile_rows: Range<usize>,
    blocks: Range<usize>,
) {
    let tx = plan.tx;
    let padded_max = (plan.chunk * tx).next_multiple_of(LANES);
    let (own, rest) = scratch.split_at_mut(if input.is_some() { 0 } else { 16 * plane(wg.channels, padded_max) });
    let m = &mut rest[..16 * plane(plan.blocks_per_part * ROWS, padded_max) + LANES];
    let channels = blocks.start * ROWS..(blocks.end * ROWS).min(wg.rows);
    let mut start = tile_rows.start;
    while start < tile_rows.end {
        let chunk = start..(start + plan.chunk).min(tile_rows.end);
        let padded = (chunk.len() * tx).next_multiple_of(LANES);
        let v = match input {
            Some(v) => v,
            None => {
                transform_input(isa, g, x, chunk.clone(), tx, padded, own);
                &*own
            }
        };
        for xi in 0..16 {
            let v = &v[xi * plane(wg.channels, padded)..][..wg.channels * padded];
            let m = &mut m[xi * plane(plan.blocks_per_part * ROWS, padded)..][..blocks.len() * ROWS * padded];
            multiply(isa, wg, xi, blocks.clone(), v, padded, m);
        }
        let plane = plane(plan.blocks_per_part * ROWS, padded);
        let products = Products { g, m, plane, padded, tx, chunk: chunk.clone(), bias, residual, relu, out };
        transform_output(isa, &products, channels.clone());
        start = chunk.end;
    }
}

/// The transformed input of tile rows `chunk`: `v[xi][channel][t]`, `t` the tile's place in the
/// chunk (row-major, `tx` tiles a row), `padded` apart, zeros in the padding tiles (no stale
/// values, which could be subnormal, in the products' sums).
fn transform_input(isa: Isa, g: &Geometry, x: &[f32], chunk: Range<usize>, tx: usize, padded: usize, v: &mut [f32]) {
    let channels = g.channels;
    assert!(g.holds_input(x.len()) && v.len() >= 16 * plane(channels, padded) && chunk.len() * tx <= padded);
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        // SAFETY: AVX-512F was detected (the ISA is chosen from what the CPU reports); sizes
        // checked above, `v` borrowed mutably.
        return unsafe { x86::transform_input(g, x, chunk, tx, padded, 0..channels, v.as_mut_ptr()) };
    }
    let _ = isa;
    transform_input_plain(g, x, chunk, tx, padded, v);
}

/// Input pixel `(py, px)` of the padded image `image` (zero in the padding).
#[inline(always)]
fn padded_value(g: &Geometry, image: &[f32], py: usize, px: usize) -> f32 {
    let [h, w] = g.in_hw;
    match (py.checked_sub(g.window.pads[0]), px.checked_sub(g.window.pads[1])) {
        (Some(iy), Some(ix)) if iy < h && ix < w => image[iy * w + ix],
        _ => 0.0,
    }
}

/// `B^T d B` by the definition, tile by tile (without AVX-512).
fn transform_input_plain(g: &Geometry, x: &[f32], chunk: Range<usize>, tx: usize, padded: usize, v: &mut [f32]) {
    let [h, w] = g.in_hw;
    let channels = g.channels;
    for c in 0..channels {
        let image = &x[c * h * w..][..h * w];
        for (i, ty) in chunk.clone().enumerate() {
            for k in 0..tx {
                let d: [[f32; 4]; 4] = std::array::from_fn(|r| std::array::from_fn(|col| padded_value(g, image, 2 * ty + r, 2 * k + col)));
                // Across each patch row, then down each column: d0 - d2, d1 + d2, d2 - d1, d1 - d3.
                let across = d.map(|d| [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]);
                for j in 0..4 {
                    let down = [
                        across[0][j] - across[2][j],
                        across[1][j] + across[2][j],
                        across[2][j] - across[1][j],
                        across[1][j] - across[3][j],
                    ];
                    for (i4, value) in down.into_iter().enumerate() {
                        v[(4 * i4 + j) * plane(channels, padded) + c * padded + i * tx + k] = value;
                    }
                }
            }
        }
        for xi in 0..16 {
            v[xi * plane(channels, padded) + c * padded..][chunk.len() * tx..padded].fill(0.0);
        }
    }
}

/// `m[r][t] = sum_c panel[c][r] v[c][t]` for the rows of output blocks `blocks` (`m` holds them
/// from the first, `ROWS * padded` apart): `v` `[channels, padded]`.
fn multiply(isa: Isa, wg: &Winograd, xi: usize, blocks: Range<usize>, v: &[f32], padded: usize, m: &mut [f32]) {
    let channels = wg.channels;
    assert!(v.len() >= channels * padded && m.len() >= blocks.len() * ROWS * padded && padded.is_multiple_of(LANES));
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        let vectors = padded / LANES;
        let mut t = 0;
        while t < vectors {
            // Three or two vectors of tiles per register tile; one only where one is left, with
            // two blocks of rows, so that 16 sums are in flight.
            let nv = match vectors - t {
                1 => 1,
                2 | 4 => 2,
                _ => 3,
            };
            let mut b = blocks.start;
            while b < blocks.end {
                let pair = nv == 1 && b + 1 < blocks.end;
                let panel = wg.panel(xi, b).as_ptr();
                let stride = channels * ROWS;
                // SAFETY: AVX-512F detected; the register tile's columns `16 t .. 16 (t + nv)` lie
                // inside `v`'s and `m`'s rows, its blocks' panels inside the weights and their rows
                // inside `m` (sizes checked above; `padded` a multiple of 16).
                unsafe {
                    let (v, m) = (v.as_ptr().add(t * LANES), m.as_mut_ptr().add((b - blocks.start) * ROWS * padded + t * LANES));
                    match (nv, pair) {
                        (1, true) => x86::multiply_block::<1, 2>(panel, stride, v, padded, channels, m),
                        (1, false) => x86::multiply_block::<1, 1>(panel, stride, v, padded, channels, m),
                        (2, _) => x86::multiply_block::<2, 1>(panel, stride, v, padded, channels, m),
                        _ => x86::multiply_block::<3, 1>(panel, stride, v, padded, channels, m),
                    }
                }
                b += if pair { 2 } else { 1 };
            }
            t += nv;
        }
        return;
    }
    let _ = isa;
    for (i, b) in blocks.enumerate() {
        let panel = wg.panel(xi, b);
        for r in 0..ROWS {
            let m = &mut m[(i * ROWS + r) * padded..][..padded];
            m.fill(0.0);
            for c in 0..channels {
                let a = panel[c * ROWS + r];
                m.iter_mut().zip(&v[c * padded..][..padded]).for_each(|(m, v)| *m += a * v);
            }
        }
    }
}

/// A chunk's products and what the output transform adds and where it writes: `m[xi][channel][t]`
/// for the part's output channels from its first, rows `padded` apart and planes `plane` apart
/// (with `LANES` floats to spare after the last), `tx` tiles a tile row, tile rows `chunk`; the
/// layer's bias, its residual (laid out as the output) and ReLU after it.
struct Products<'a> {
    g: &'a Geometry,
    m: &'a [f32],
    plane: usize,
    padded: usize,
    tx: usize,
    chunk: Range<usize>,
    bias: &'a [f32],
    residual: Option<&'a [f32]>,
    relu: bool,
    out: Output<'a>,
}

/// `A^T m A` of the chunk's tiles into `y`, for output channels `channels` (the part's, from the
/// first of its products), plus bias, residual and ReLU.
fn transform_output(isa: Isa, p: &Products, channels: Range<usize>) {
    let Products { g, m, plane, padded, tx, bias, residual, relu, out, .. } = *p;
    let [oh, ow] = g.out_hw;
    assert!(m.len() >= 15 * plane + channels.len() * padded + LANES && p.chunk.len() * tx <= padded && ow <= 2 * tx);
    assert!(residual.is_none_or(|r| r.len() >= out.len) && bias.len() * oh * ow <= out.len && channels.end <= bias.len());
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        // SAFETY: AVX-512F detected; sizes checked above.
        return unsafe { x86::transform_output(p, channels) };
    }
    let _ = isa;
    for (i, r) in channels.enumerate() {
        for (j, ty) in p.chunk.clone().enumerate() {
            for k in 0..tx {
                let mm: [f32; 16] = std::array::from_fn(|xi| m[xi * plane + i * padded + j * tx + k]);
                // Down each column: m0 + m1 + m2 and m1 - m2 - m3; then across each result.
                let down = |c: usize| [mm[c] + mm[4 + c] + mm[8 + c], mm[4 + c] - mm[8 + c] - mm[12 + c]];
                let [s0, s1, s2, s3] = [down(0), down(1), down(2), down(3)];
                let rows = [0, 1].map(|d| [s0[d] + s1[d] + s2[d], s1[d] - s2[d] - s3[d]]);
                for (d, pair) in rows.into_iter().enumerate() {
                    let oy = 2 * ty + d;
                    for (e, sum) in pair.into_iter().enumerate() {
                        let ox = 2 * k + e;
                        if oy < oh && ox < ow {
                            let at = (r * oh + oy) * ow + ox;
                            let v = sum + bias[r] + residual.map_or(0.0, |res| res[at]);
                            // SAFETY: this part alone writes channel r's rows of its tile rows.
                            unsafe { out.row(r, oy, g)[ox] = if relu { v.max(0.0) } else { v } };
                        }
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Geometry, LANES, Products, ROWS, Range};
    use std::arch::x86_64::*;

    /// Lanes `0 .. n` (at most 16).
    #[inline(always)]
    fn mask(n: usize) -> __mmask16 {
        if n >= 16 { 0xffff } else { (1u16 << n) - 1 }
    }

    /// Padded columns `j0 .. j0 + 16` of an input row (`left` columns of zeros before its
    /// values, zeros after them): one masked load.
    ///
    /// # Safety
    /// AVX-512F.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn padded_columns(row: &[f32], left: usize, j0: usize) -> __m512 {
        // Lanes l with 0 <= j0 + l - left < row.len().
        let first = left.saturating_sub(j0).min(LANES);
        let end = (row.len() + left).saturating_sub(j0).min(LANES);
        if first >= end {
            return _mm512_setzero_ps();
        }
        // SAFETY: the load reads lanes `first..end` only, row values `j0 + l - left` inside the
        // row (masked lanes are not accessed; the pointer is formed without leaving it in
        // arithmetic, by wrapping).
        unsafe { _mm512_maskz_loadu_ps(mask(end) & !mask(first), row.as_ptr().wrapping_add(j0).wrapping_sub(left)) }
    }

    /// One patch row across, for tiles `k0 .. k0 + 16`: d0 - d2, d1 + d2, d2 - d1, d1 - d3, with
    /// `d` the row's padded columns `2k .. 2k + 4`, that is even columns `k` and `k + 1` and odd
    /// columns `k` and `k + 1`, deinterleaved and shifted in registers.
    ///
    /// # Safety
    /// AVX-512F.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn across(row: &[f32], left: usize, k0: usize) -> [__m512; 4] {
        let evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odds = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        // SAFETY: AVX-512F (this function's).
        let (a, b, c) =
            unsafe { (padded_columns(row, left, 2 * k0), padded_columns(row, left, 2 * k0 + 16), padded_columns(row, left, 2 * k0 + 32)) };
        let (e, o) = (_mm512_permutex2var_ps(a, evens, b), _mm512_permutex2var_ps(a, odds, b));
        // Even and odd columns k + 1: shifted a lane, the next ones from `c`.
        let e1 = _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(c), _mm512_castps_si512(e), 1));
        let c1 = _mm512_alignr_epi32(_mm512_castps_si512(c), _mm512_castps_si512(c), 1);
        let o1 = _mm512_castsi512_ps(_mm512_alignr_epi32(c1, _mm512_castps_si512(o), 1));
        [_mm512_sub_ps(e, e1), _mm512_add_ps(o, e1), _mm512_sub_ps(e1, o), _mm512_sub_ps(o, o1)]
    }

    /// `transform_input`'s `B^T d B` for input channels `channels`, 16 tiles at a time: tile `k`
    /// reads padded columns `2k .. 2k + 4` of four rows, that is their even columns `k` and
    /// `k + 1` and odd columns `k` and `k + 1`, deinterleaved and shifted in registers from
    /// masked loads of the rows (zeros in the padding); zeros in the padding tiles.
    ///
    /// # Safety
    /// AVX-512F; the sizes `transform_input` checks, `v` holding 16 planes of `g.channels x
    /// padded` floats, and no other thread touching the rows of `channels` while it runs.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn transform_input(
        g: &Geometry,
        x: &[f32],
        chunk: Range<usize>,
        tx: usize,
        padded: usize,
        channels: Range<usize>,
        v: *mut f32,
    ) {
        let [h, w] = g.in_hw;
        let (top, left) = (g.window.pads[0], g.window.pads[1]);
        let stride = super::plane(g.channels, padded);
        assert!(channels.end <= g.channels && chunk.len() * tx <= padded);
        let zero = _mm512_setzero_ps();
        for c in channels {
            let image = &x[c * h * w..][..h * w];
            for (i, ty) in chunk.clone().enumerate() {
                let rows: [Option<&[f32]>; 4] =
                    std::array::from_fn(|r| (2 * ty + r).checked_sub(top).filter(|&iy| iy < h).map(|iy| &image[iy * w..][..w]));
                for k0 in (0..tx).step_by(LANES) {
                    let mut hs = [[zero; 4]; 4];
                    for (h, row) in hs.iter_mut().zip(rows) {
                        if let Some(row) = row {
                            // SAFETY: AVX-512F (this function's).
                            *h = unsafe { across(row, left, k0) };
                        }
                    }
                    let keep = mask(tx - k0);
                    // Down each column j of the rows' results.
                    let columns: [[__m512; 4]; 4] = std::array::from_fn(|j| std::array::from_fn(|r| hs[r][j]));
                    for (j, [h0, h1, h2, h3]) in columns.into_iter().enumerate() {
                        // SAFETY: tile `i * tx + k0 + l` (l below `keep`'s count) of channel c's row
                        // of plane `xi`, inside `v` (the caller's sizes).
                        let store = |xi: usize, value: __m512| unsafe {
                            _mm512_mask_storeu_ps(v.add(xi * stride + c * padded + i * tx + k0), keep, value)
                        };
                        store(j, _mm512_sub_ps(h0, h2));
                        store(4 + j, _mm512_add_ps(h1, h2));
                        store(8 + j, _mm512_sub_ps(h2, h1));
                        store(12 + j, _mm512_sub_ps(h1, h3));
                    }
                }
            }
            for xi in 0..16 {
                // SAFETY: channel c's row of plane xi, from the chunk's last tile to `padded`.
                unsafe { std::slice::from_raw_parts_mut(v.add(xi * stride + c * padded + chunk.len() * tx), padded - chunk.len() * tx) }
                    .fill(0.0);
            }
        }
    }

    /// `m[p][r][0 .. 16 NV] = sum_c panel_p[c][r] v[c][0 .. 16 NV]` for `P` blocks of `ROWS`
    /// rows (`panel_p` at `panel + p * stride`, its rows of `m` from `m + p * ROWS * ld`):
    /// `P x ROWS x NV` vectors of sums in registers, one broadcast weight per row and channel.
    ///
    /// # Safety
    /// AVX-512F; each panel holds `channels * ROWS` floats, `v` `channels` rows `ld` apart and
    /// `m` `P * ROWS` rows `ld` apart, each row at least `16 NV` floats.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn multiply_block<const NV: usize, const P: usize>(
        panel: *const f32,
        stride: usize,
        v: *const f32,
        ld: usize,
        channels: usize,
        m: *mut f32,
    ) {
        let mut acc = [[[_mm512_setzero_ps(); NV]; ROWS]; P];
        for c in 0..channels {
            // SAFETY: the caller's sizes.
            unsafe {
                let b: [__m512; NV] = std::array::from_fn(|j| _mm512_loadu_ps(v.add(c * ld + j * LANES)));
                for (p, acc) in acc.iter_mut().enumerate() {
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let a = _mm512_set1_ps(*panel.add(p * stride + c * ROWS + r));
                        for (acc, b) in acc.iter_mut().zip(b) {
                            *acc = _mm512_fmadd_ps(a, b, *acc);
                        }
                    }
                }
            }
        }
        for (p, acc) in acc.iter().enumerate() {
            for (r, acc) in acc.iter().enumerate() {
                for (j, acc) in acc.iter().enumerate() {
                    // SAFETY: the caller's sizes.
                    unsafe { _mm512_storeu_ps(m.add((p * ROWS + r) * ld + j * LANES), *acc) };
                }
            }
        }
    }

    /// `transform_output` 16 tiles at a time: each output row pair's 32 columns interleaved
    /// from the even and odd columns' sums, residual, ReLU and stores masked at the row's end.
    ///
    /// # Safety
    /// AVX-512F; the sizes `transform_output` checks.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn transform_output(p: &Products, channels: Range<usize>) {
        let Products { g, m, plane, padded, tx, bias, residual, relu, out, .. } = *p;
        let [oh, ow] = g.out_hw;
        let low = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        let high = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
        let zero = _mm512_setzero_ps();
        for (i, r) in channels.enumerate() {
            let b = _mm512_set1_ps(bias[r]);
            for (j, ty) in p.chunk.clone().enumerate() {
                let at = i * padded + j * tx;
                for d in 0..2 {
                    let oy = 2 * ty + d;
                    if oy >= oh {
                        continue;
                    }
                    // SAFETY: this part alone writes channel r's rows of its tile rows.
                    let y = unsafe { out.row(r, oy, g) };
                    let res = residual.map(|res| &res[(r * oh + oy) * ow..][..ow]);
                    for k0 in (0..tx).step_by(LANES) {
                        // SAFETY: `m` holds 16 planes and a vector to spare (checked by the caller).
                        let mm: [__m512; 16] = std::array::from_fn(|xi| unsafe { _mm512_loadu_ps(m.as_ptr().add(xi * plane + at + k0)) });
                        // Down each column: m0 + m1 + m2 (row 0) or m1 - m2 - m3 (row 1).
                        let down = |c: usize| {
                            if d == 0 {
                                _mm512_add_ps(_mm512_add_ps(mm[c], mm[4 + c]), mm[8 + c])
                            } else {
                                _mm512_sub_ps(_mm512_sub_ps(mm[4 + c], mm[8 + c]), mm[12 + c])
                            }
                        };
                        let (s0, s1, s2, s3) = (down(0), down(1), down(2), down(3));
                        let even = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), s2), b);
                        let odd = _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(s1, s2), s3), b);
                        for (half, value) in
                            [_mm512_permutex2var_ps(even, low, odd), _mm512_permutex2var_ps(even, high, odd)].into_iter().enumerate()
                        {
                            let col = 2 * k0 + half * LANES;
                            if col >= ow {
                                break;
                            }
                            let keep = mask(ow - col);
                            // SAFETY: columns `col .. col + 16` masked to the row's `ow`.
                            unsafe {
                                let mut value = value;
                                if let Some(res) = res {
                                    value = _mm512_add_ps(value, _mm512_maskz_loadu_ps(keep, res.as_ptr().add(col)));
                                }
                                if relu {
                                    value = _mm512_max_ps(value, zero);
                                }
                                _mm512_mask_storeu_ps(y.as_mut_ptr().add(col), keep, value);
                            }
                        }
                    }
                }
            }
        }
    }
}
