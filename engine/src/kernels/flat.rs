//! One-sample sparse direct convolution on small images, `f32-conv-direct-flat`: at stride 1
//! without dilation, output pixel `(oy, ox)` reads padded input pixel `(oy + ky, ox + kx)`, so
//! on the padded image laid out flat (rows `wp = left + width + right` floats long) output
//! position `oy * wp + ox` reads input position `oy * wp + ox + ky * wp + kx`: one offset per tap
//! for every output row at once. The kernel keeps up to 8 vectors of such positions (several
//! output rows, with the `kw - 1` padding columns of each row computed and dropped) in registers
//! and runs each output channel's taps over them. Where an output row is shorter than a vector
//! (ResNet's 7x7 and 14x14 stages), this fills the vectors that one row per vector leaves 44% or
//! 88% used, and gives each tap 4-8 vectors of work instead of 1-2.

use std::ops::Range;

use super::Isa;
use super::direct::Taps;
use super::window::Geometry;

/// Vectors of flat positions kept in registers at once.
const CHUNK: usize = 8;

/// Whether `conv_direct_flat` takes `g` under `isa`: one sample, stride 1, no dilation, and a
/// padded row that fits the vectors held at once.
pub fn takes(isa: Isa, g: &Geometry) -> bool {
    let w = g.window;
    let padded_width = w.pads[1] + g.in_hw[1] + w.pads[3];
    isa == Isa::Avx512 && g.w == 1 && w.stride == [1, 1] && w.dilation == [1, 1] && !w.ceil_mode && padded_width <= CHUNK * 16
}

/// Output rows `rows` of output channels `channels` (`y` holds those channels as
/// `[channels.len(), oh, ow]`), as `direct::conv_direct_ref` defines them.
#[allow(clippy::too_many_arguments)] // conv_direct's arguments
pub fn conv_direct_flat(
    isa: Isa,
    t: &Taps,
    bias: &[f32],
    g: &Geometry,
    x: &[f32],
    y: &mut [f32],
    channels: Range<usize>,
    rows: Range<usize>,
    relu: bool,
) {
    g.check();
    let [kh, kw] = g.window.kernel;
    assert!(takes(isa, g), "no flat kernel for {g:?}");
    assert!(t.cols() == g.channels * kh * kw && bias.len() == t.rows() && channels.end <= t.rows(), "weights do not match the geometry");
    assert!(rows.end <= g.out_hw[0] && g.holds_input(x.len()) && g.holds_output(y.len(), channels.len()), "input or output tile too small");
    if rows.is_empty() {
        return;
    }
    let [top, left, _, _] = g.window.pads;
    let ([oh, ow], [h, wd]) = (g.out_hw, g.in_hw);
    let wp = left + wd + g.window.pads[3];
    // Padded input rows rows.start .. rows.end + kh - 1 of every channel, flat, with a vector's
    // worth of zeros after them: the last vector of a chunk reads up to 15 positions past the
    // chunk's last output (and those positions' kernel columns kw - 1 beyond).
    let padded_rows = rows.len() + kh - 1;
    let plane = padded_rows * wp + 16 + kw;
    let mut buf = vec![0.0f32; g.channels * plane];
    for c in 0..g.channels {
        for pr in 0..padded_rows {
            let Some(iy) = (rows.start + pr).checked_sub(top).filter(|&iy| iy < h) else { continue };
            buf[c * plane + pr * wp + left..][..wd].copy_from_slice(&x[(c * h + iy) * wd..][..wd]);
        }
    }
    let per_chunk = (CHUNK * 16 / wp).max(1);
    let block = input_block(g.channels, (per_chunk + kh - 1) * wp);
    // Each output channel's sums over the chunk's positions, carried from one block of input
    // channels to the next.
    let mut sums = vec![0.0f32; channels.len() * CHUNK * 16];
    // Where each output channel's taps of the next block of input channels start.
    let mut next = vec![0usize; channels.len()];
    let mut a = rows.start;
    while a < rows.end {
        let b = (a + per_chunk).min(rows.end);
        let positions = (b - a) * wp;
        let first = (a - rows.start) * wp;
        for (out, o) in sums.as_chunks_mut::<{ CHUNK * 16 }>().0.iter_mut().zip(channels.clone()) {
            out.fill(bias[o]);
        }
        next.fill(0);
        // At least one block, so that the ReLU applies even without input channels.
        for c0 in (0..g.channels.max(1)).step_by(block) {
            let (c1, last) = ((c0 + block).min(g.channels), c0 + block >= g.channels);
            let outs = sums.as_chunks_mut::<{ CHUNK * 16 }>().0.iter_mut();
            for ((out, o), start) in outs.zip(channels.clone()).zip(next.iter_mut()) {
                // Channel o's taps on input channels c0..c1: the next ones, as taps come in
                // input-channel order (a binary search per block had read scattered taps from
                // L3 and doubled the time of a 512-channel layer).
                let taps = &t.of(o)[*start..];
                let taps = &taps[..taps.iter().position(|tap| tap.0 as usize >= c1).unwrap_or(taps.len())];
                *start += taps.len();
                if taps.is_empty() && !(last && relu) {
                    continue;
                }
                // SAFETY: every tap (c, ky, kx) has c < g.channels and ky < kh, kx < kw (decoded
                // for this window), so first + ky * wp + kx + 16 * n - 1 < (padded_rows - 1) * wp + wp
                // + 16 + kw <= plane for the n <= CHUNK vectors covering `positions`; the ISA was
                // checked by `takes`.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    x86::channel(&buf, plane, wp, first, positions, taps, relu && last, out)
                };
            }
        }
        for (i, out) in sums.as_chunks::<{ CHUNK * 16 }>().0.iter().enumerate() {
            for r in a..b {
                let from = (r - a) * wp;
                y[(i * oh + r) * ow..][..ow].copy_from_slice(&out[from..from + ow]);
            }
        }
        a = b;
    }
}

/// Bytes of the input rows that one block of input channels' taps read per chunk of positions:
/// what stays in L1 (48 KiB here) beside the weights streaming past. Every output channel runs its
/// taps of a block of input channels before the next block, its sums carried in `sums`; where
/// each tap had read all input channels' rows at once, ResNet-50's 28x28 to 7x7 layers (up to
/// 512 channels' rows, 92-166 KiB) read them from L2.
const BLOCK_BYTES: usize = 24 << 10;

/// Input channels per block for chunks that read `floats` padded input floats per channel.
fn input_block(channels: usize, floats: usize) -> usize {
    (BLOCK_BYTES / (4 * floats).max(1)).clamp(1, channels.max(1))
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::CHUNK;
    use crate::kernels::direct::Tap;

    /// One output channel over `positions` flat positions from `first`: `out` holds its sums
    /// so far (the bias, or the taps of the input channels before), and gets them with these
    /// taps added (and the ReLU where `relu`).
    ///
    /// # Safety
    /// AVX-512F; every tap reads inside `buf` (see the caller); `positions <= CHUNK * 16`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn channel(
        buf: &[f32],
        plane: usize,
        wp: usize,
        first: usize,
        positions: usize,
        taps: &[Tap],
        relu: bool,
        out: &mut [f32; CHUNK * 16],
    ) {
        macro_rules! go {
            ($($n:literal)*) => {
                match positions.div_ceil(16) {
                    $($n => unsafe { run::<$n>(buf, plane, wp, first, taps, relu, out) },)*
                    _ => unreachable!("chunks hold 1 to {CHUNK} vectors"),
                }
            };
        }
        go!(1 2 3 4 5 6 7 8)
    }

    /// # Safety
    /// As `channel`, with `N` vectors.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn run<const N: usize>(
        buf: &[f32],
        plane: usize,
        wp: usize,
        first: usize,
        taps: &[Tap],
        relu: bool,
        out: &mut [f32; CHUNK * 16],
    ) {
        // SAFETY: z < N <= CHUNK, so each vector lies inside `out`.
        let mut acc: [__m512; N] = std::array::from_fn(|z| unsafe { _mm512_loadu_ps(out.as_ptr().add(16 * z)) });
        let base = buf.as_ptr().wrapping_add(first);
        for &(c, ky, kx, value) in taps {
            let weight = _mm512_set1_ps(value);
            // SAFETY: the caller's contract: vectors 0..N from this tap's offset lie inside `buf`.
            let src = unsafe { base.add(c as usize * plane + ky as usize * wp + kx as usize) };
            for (z, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(weight, unsafe { _mm512_loadu_ps(src.add(16 * z)) }, *a);
            }
        }
        for (z, a) in acc.iter().enumerate() {
            let v = if relu { _mm512_max_ps(*a, _mm512_setzero_ps()) } else { *a };
            // SAFETY: z < N <= CHUNK, so the vector lies inside `out`.
            unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(16 * z), v) };
        }
    }
}
