//! Depth-wise convolutions of one sample on AVX-512 (`f32-conv-depthwise`): one input channel
//! per output channel. Each channel's plane is first staged with its zero padding, at stride 2
//! with each row split into its even and odd columns, so that every tap of every output vector
//! is one plain load at a fixed offset: output column `ox` of tap column `kx` reads staged
//! column `ox * S + kx` of the padded row, which at `S = 2` is entry `ox + kx / 2` of phase
//! `kx % 2`. A vector holds 16 output pixels of one row; four vectors (of one row, or of the next
//! rows where rows are short) are accumulated at once, so that their multiply-adds overlap.
//! `grouped::group_conv` is the scalar twin and runs every other grouped convolution (several
//! channels per group, other strides, tiles of several samples).

use std::ops::Range;

use super::Isa;
use super::window::Geometry;

/// Output vectors accumulated at once.
const UNITS: usize = 8;

/// Whether `depthwise` takes `g` under `isa`: one sample, stride 1 or 2 and no dilation across
/// a row (any stride and dilation down the columns).
pub fn takes(isa: Isa, g: &Geometry) -> bool {
    let w = g.window;
    isa == Isa::Avx512 && g.w == 1 && matches!(w.stride[1], 1 | 2) && w.dilation[1] == 1
}

/// A channel's padded plane as the taps read it: `rows` rows (padded input row `r` is input row
/// `r - top`), each of `stride` phases `phase` floats long (padded column `p` at entry `p /
/// stride` of phase `p % stride`), long enough that the last vector's taps stay inside.
struct Staging {
    rows: usize,
    stride: usize,
    phase: usize,
}

impl Staging {
    fn new(g: &Geometry) -> Staging {
        let ([kh, kw], [oh, ow]) = (g.window.kernel, g.out_hw);
        let stride = g.window.stride[1];
        Staging {
            rows: (oh - 1) * g.window.stride[0] + (kh - 1) * g.window.dilation[0] + 1,
            stride,
            phase: ow.div_ceil(16) * 16 + (kw - 1) / stride,
        }
    }

    fn row(&self) -> usize {
        self.stride * self.phase
    }

    /// Where tap `(ky, kx)` reads, from its output vector's start.
    fn tap(&self, g: &Geometry, ky: usize, kx: usize) -> usize {
        ky * g.window.dilation[0] * self.row() + kx % self.stride * self.phase + kx / self.stride
    }
}

/// One channel's work for the kernel: its plane staged by `s` in `buf`, every tap's offset
/// (`Staging::tap`), its weights and bias, and what its stores apply (the ReLU, then `clip`).
#[derive(Clone, Copy)]
struct Channel<'a> {
    g: &'a Geometry,
    s: &'a Staging,
    buf: &'a [f32],
    taps: &'a [usize],
    weights: &'a [f32],
    bias: f32,
    relu: bool,
    clip: Option<[f32; 2]>,
}

/// Output channels `channels` of a depth-wise convolution (`weight` `[channels, 1, kh, kw]`)
/// into `y`, as `grouped::group_conv` writes them (`[channels.len(), oh, ow]`), with the ReLU
/// where `relu`, then clamped to `clip` (`[lo, hi]`, as `elementwise::clamp`: a fused Clip, such
/// as ReLU6) where given.
#[allow(clippy::too_many_arguments)] // group_conv's arguments, and the fused Clip
pub fn depthwise(
    isa: Isa,
    g: &Geometry,
    weight: &[f32],
    bias: &[f32],
    x: &[f32],
    y: &mut [f32],
    channels: Range<usize>,
    relu: bool,
    clip: Option<[f32; 2]>,
) {
    g.check();
    let [kh, kw] = g.window.kernel;
    assert!(takes(isa, g), "no depth-wise kernel for {g:?}");
    assert!(bias.len() == g.channels && weight.len() == g.channels * kh * kw && channels.end <= g.channels, "not a depth-wise convolution");
    assert!(g.holds_input(x.len()) && g.holds_output(y.len(), channels.len()), "input or output tile too small");
    let ([oh, ow], [h, wd]) = (g.out_hw, g.in_hw);
    let [top, left, _, _] = g.window.pads;
    let s = Staging::new(g);
    // Padding stays zero: each channel writes the same input positions.
    let mut buf = vec![0.0f32; s.rows * s.row() + 16];
    let taps: Vec<usize> = (0..kh * kw).map(|t| s.tap(g, t / kw, t % kw)).collect();
    let vectors = ow.div_ceil(16);
    // Each output vector's output row and first column.
    let units: Vec<(usize, usize)> = (0..oh).flat_map(|oy| (0..vectors).map(move |v| (oy, v * 16))).collect();
    for (i, c) in channels.enumerate() {
        for r in 0..s.rows {
            let Some(iy) = r.checked_sub(top).filter(|&iy| iy < h) else { continue };
            let row = &mut buf[r * s.row()..][..s.row()];
            let src = &x[(c * h + iy) * wd..][..wd];
            if s.stride == 1 {
                // Columns past the row's last read (where the window leaves some out) are not staged.
                let n = wd.min(s.phase.saturating_sub(left));
                row[left..left + n].copy_from_slice(&src[..n]);
            } else {
                // SAFETY: `takes` checked the ISA; the row holds two phases of `s.phase`.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    x86::split_phases(src, left, s.phase, row)
                };
            }
        }
        let out = &mut y[i * oh * ow..][..oh * ow];
        let channel = Channel { g, s: &s, buf: &buf, taps: &taps, weights: &weight[c * kh * kw..][..kh * kw], bias: bias[c], relu, clip };
        for group in units.chunks(UNITS) {
            // SAFETY: `takes` checked the ISA; every tap of every unit reads inside `buf` (the
            // staging's rows and phases cover the window of every output), every unit writes
            // inside one row of `out`.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                x86::units(&channel, out, group)
            };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::Channel;

    /// Input row `src` as a staged row of two phases: padded column `p = ix + left` at entry
    /// `p / 2` of phase `p % 2`, 32 input columns at a time (entries past `phase`, never read,
    /// left out).
    ///
    /// # Safety
    /// AVX-512F; `row` holds `2 * phase` floats.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn split_phases(src: &[f32], left: usize, phase: usize, row: &mut [f32]) {
        assert!(row.len() >= 2 * phase, "staged row too short");
        let even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
        let odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
        let lanes = |n: usize| ((1u32 << n.min(16)) - 1) as u16;
        // Input column m0 + 2j (+1) is padded column p = m0 + 2j + left (+1): (phase, entry of j = 0).
        let first = |q: usize, m0: usize| ((m0 + q + left) % 2, (m0 + q + left) / 2);
        for m0 in (0..src.len()).step_by(32) {
            let n = (src.len() - m0).min(32);
            // SAFETY: the masks keep the loads inside `src` (lanes below n, and below n - 16).
            let (a, b) = unsafe {
                let at = src.as_ptr().add(m0);
                (_mm512_maskz_loadu_ps(lanes(n), at), _mm512_maskz_loadu_ps(lanes(n.saturating_sub(16)), at.wrapping_add(16)))
            };
            for (q, index, count) in [(0, even, n.div_ceil(2)), (1, odd, n / 2)] {
                let (p, entry) = first(q, m0);
                let count = count.min(phase.saturating_sub(entry));
                if count == 0 {
                    continue;
                }
                // SAFETY: entries entry .. entry + count < phase of phase p lie inside `row`.
                unsafe {
                    _mm512_mask_storeu_ps(row.as_mut_ptr().add(p * phase + entry), lanes(count), _mm512_permutex2var_ps(a, index, b))
                };
            }
        }
    }

    /// The output vectors `units` (`(row, first column)`) of one channel into `out`.
    ///
    /// # Safety
    /// AVX-512F; `c.buf` is the channel staged by `c.s`, `c.taps` every tap's offset; the units
    /// are outputs of `c.g` and at most `UNITS`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn units(c: &Channel, out: &mut [f32], units: &[(usize, usize)]) {
        macro_rules! go {
            ($($n:literal)*) => {
                match units.len() {
                    $($n => unsafe { run::<$n>(c, out, units) },)*
                    _ => unreachable!("1 to 8 vectors"),
                }
            };
        }
        go!(1 2 3 4 5 6 7 8)
    }

    /// # Safety
    /// As `units`, with `N` of them.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn run<const N: usize>(c: &Channel, out: &mut [f32], units: &[(usize, usize)]) {
        let Channel { g, s, buf, taps, weights, bias, relu, clip } = *c;
        let ow = g.out_hw[1];
        // Vector k's first output reads staged row oy * stride, entry ox of phase 0.
        let bases: [*const f32; N] = std::array::from_fn(|k| {
            let (oy, ox) = units[k];
            buf.as_ptr().wrapping_add(oy * g.window.stride[0] * s.row() + ox)
        });
        let mut acc = [_mm512_set1_ps(bias); N];
        for (&value, &tap) in weights.iter().zip(taps) {
            if value == 0.0 {
                continue;
            }
            let weight = _mm512_set1_ps(value);
            for k in 0..N {
                // SAFETY: the staging holds every position a tap of an output vector reads.
                acc[k] = _mm512_fmadd_ps(weight, unsafe { _mm512_loadu_ps(bases[k].wrapping_add(tap)) }, acc[k]);
            }
        }
        for k in 0..N {
            let (oy, ox) = units[k];
            let lanes = ((1u32 << (ow - ox).min(16)) - 1) as u16;
            let mut v = if relu { _mm512_max_ps(acc[k], _mm512_setzero_ps()) } else { acc[k] };
            if let Some([lo, hi]) = clip {
                // As `elementwise::clamp`: a NaN sum stays NaN (max and min return their second
                // operand where one is NaN).
                v = _mm512_min_ps(_mm512_set1_ps(hi), _mm512_max_ps(_mm512_set1_ps(lo), v));
            }
            // SAFETY: lanes cover columns ox .. min(ox + 16, ow) of row oy < oh, inside `out`.
            unsafe { _mm512_mask_storeu_ps(out.as_mut_ptr().add(oy * ow + ox), lanes, v) };
        }
    }
}
