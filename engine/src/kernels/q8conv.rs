//! Im2col for int8 convolutions on a quantized image: the layer quantizes its input image once
//! (`q8::quantize` of `[c * h * wd * w]` values, one sample wide), then unfolds the uint8 image
//! into the grouped layout the int8 kernels read (`q8`: four consecutive im2col rows per 32-bit
//! word). Quantizing the image instead of its im2col columns does `kh * kw` times less
//! arithmetic, and the unfolding only moves bytes. The result equals `q8::quantize` of
//! `window::im2col`'s output: padding is 0.0 there, which quantizes to the zero point.

use std::ops::Range;

use super::Isa;
use super::window::Geometry;

/// The im2col rows `k` and columns `ld`, after checking the sizes for groups `groups` of them.
fn check(g: &Geometry, xq: &[u8], rows: &Range<usize>, groups: &Range<usize>, out: &[u8]) -> (usize, usize) {
    let k = g.channels * g.window.kernel[0] * g.window.kernel[1];
    let ld = rows.len() * g.out_hw[1] * g.w;
    assert!(rows.end <= g.out_hw[0], "im2col rows");
    assert!(groups.end <= k.div_ceil(4), "groups of im2col rows");
    assert!(xq.len() >= g.channels * g.in_hw[0] * g.in_hw[1] * g.w, "quantized image too small");
    assert!(out.len() >= groups.len() * ld * 4, "quantized columns too small");
    (k, ld)
}

/// One output row of one im2col row: where its bytes come from. Output bytes `valid` (of the
/// row's `ow * w`) copy the image from `start` on (stride 1), the rest hold the zero point.
#[derive(Clone, Copy)]
struct Run {
    valid: (usize, usize),
    start: usize,
}

/// The run of im2col row `f` (None past the last row) for output row `oy`, stride 1 only.
fn run(g: &Geometry, f: Option<usize>, oy: usize) -> Run {
    let empty = Run { valid: (0, 0), start: 0 };
    let Some((c, ky, kx)) = f.map(|f| g.tap(f)) else { return empty };
    let Some(iy) = g.source(0, oy, ky) else { return empty };
    let ([h, wd], w) = (g.in_hw, g.w);
    let (outs, ix0) = g.inside(1, kx);
    if outs.is_empty() {
        return empty;
    }
    Run { valid: (outs.start * w, outs.end * w), start: ((c * h + iy) * wd + ix0) * w }
}

/// Scalar twin of `im2col_u8`.
pub fn im2col_u8_ref(g: &Geometry, xq: &[u8], rows: Range<usize>, groups: Range<usize>, zero: u8, out: &mut [u8]) {
    let (k, ld) = check(g, xq, &rows, &groups, out);
    let ([h, wd], [_, ow], w) = (g.in_hw, g.out_hw, g.w);
    for f in 4 * groups.start..4 * groups.end {
        let (c, ky, kx) = g.tap(f);
        for (r, oy) in rows.clone().enumerate() {
            for ox in 0..ow {
                let pixel = (f < k).then(|| g.source(0, oy, ky).zip(g.source(1, ox, kx))).flatten();
                for s in 0..w {
                    let at = ((f / 4 - groups.start) * ld + (r * ow + ox) * w + s) * 4 + f % 4;
                    out[at] = pixel.map_or(zero, |(iy, ix)| xq[((c * h + iy) * wd + ix) * w + s]);
                }
            }
        }
    }
}

/// Unfolds output rows `rows` of the convolution `g` over the quantized image `xq`
/// (`[c, h, wd, w]` bytes) into grouped columns `[groups, rows.len() * ow * w, 4]`: the groups
/// `groups` of them (all are `0..k.div_ceil(4)`), group `groups.start` first in `out`, so parts
/// can go to different threads.
pub fn im2col_u8(isa: Isa, g: &Geometry, xq: &[u8], rows: Range<usize>, groups: Range<usize>, zero: u8, out: &mut [u8]) {
    let (k, ld) = check(g, xq, &rows, &groups, out);
    if isa != Isa::Scalar && g.window.stride[1] != 1 && g.w.is_multiple_of(16) {
        return im2col_u8_strided(g, xq, rows, groups, zero, out, k, ld);
    }
    if isa == Isa::Scalar || g.window.stride[1] != 1 {
        return im2col_u8_ref(g, xq, rows, groups, zero, out);
    }
    let row_len = g.out_hw[1] * g.w;
    for group in groups.clone() {
        for (r, oy) in rows.clone().enumerate() {
            let runs: [Run; 4] = std::array::from_fn(|j| run(g, (4 * group + j < k).then_some(4 * group + j), oy));
            let words = &mut out[((group - groups.start) * ld + r * row_len) * 4..][..row_len * 4];
            interleave(xq, &runs, zero, words);
        }
    }
}

/// `im2col_u8` of a tile of a multiple of 16 samples at any stride along rows: the 16-sample chunks
/// of one input pixel are contiguous, so each output position's chunks take four of them at once.
#[allow(clippy::too_many_arguments)] // im2col_u8's arguments and the sizes it checked
fn im2col_u8_strided(g: &Geometry, xq: &[u8], rows: Range<usize>, groups: Range<usize>, zero: u8, out: &mut [u8], k: usize, ld: usize) {
    let ([h, wd], [_, ow], w) = (g.in_hw, g.out_hw, g.w);
    for group in groups.clone() {
        for (r, oy) in rows.clone().enumerate() {
            for ox in 0..ow {
                // Where each of the group's four im2col rows reads this position's samples.
                let src: [Option<usize>; 4] = std::array::from_fn(|j| {
                    let f = 4 * group + j;
                    let (c, ky, kx) = g.tap(f);
                    let pixel = (f < k).then(|| g.source(0, oy, ky).zip(g.source(1, ox, kx))).flatten();
                    pixel.map(|(iy, ix)| ((c * h + iy) * wd + ix) * w)
                });
                let at = ((group - groups.start) * ld + (r * ow + ox) * w) * 4;
                assert!(at + w * 4 <= out.len(), "quantized columns too small");
                for s in (0..w).step_by(16) {
                    // SAFETY: a source is a pixel of the image `check` verified, whose w samples
                    // (w >= s + 16) lie in `xq`; the 64 bytes written lie below at + w * 4.
                    unsafe { interleave16(xq.as_ptr(), src.map(|p| p.map(|p| p + s)), zero, out.as_mut_ptr().add(at + s * 4)) };
                }
            }
        }
    }
}

/// Byte `i` of each of the four runs into byte `j` of word `i`. The runs' span boundaries cut
/// the row into segments where each run is a source throughout or the zero point throughout;
/// each segment goes sixteen words at a time, its last few bytes one at a time.
fn interleave(xq: &[u8], runs: &[Run; 4], zero: u8, words: &mut [u8]) {
    let n = words.len() / 4;
    for r in runs {
        assert!(r.valid.0 >= r.valid.1 || r.start + (r.valid.1 - r.valid.0) <= xq.len(), "run outside the image");
    }
    let mut cuts = [0usize; 10];
    cuts[1] = n;
    for (j, r) in runs.iter().enumerate() {
        (cuts[2 + 2 * j], cuts[3 + 2 * j]) = (r.valid.0.min(n), r.valid.1.min(n));
    }
    cuts.sort_unstable();
    for seg in cuts.windows(2).filter(|c| c[0] < c[1]) {
        let (a, b) = (seg[0], seg[1]);
        let src: [Option<usize>; 4] = std::array::from_fn(|j| {
            let r = &runs[j];
            (a >= r.valid.0 && b <= r.valid.1).then(|| r.start + a - r.valid.0)
        });
        let mut i = a;
        while i + 16 <= b {
            let at = src.map(|s| s.map(|s| s + i - a));
            // SAFETY: each source lies inside its run's span (b <= valid end), so 16 bytes from it
            // are inside `xq` (asserted above); i + 16 <= n, so 64 output bytes fit in `words`.
            unsafe { interleave16(xq.as_ptr(), at, zero, words.as_mut_ptr().add(i * 4)) };
            i += 16;
        }
        for i in i..b {
            for (j, s) in src.iter().enumerate() {
                words[i * 4 + j] = s.map_or(zero, |s| xq[s + i - a]);
            }
        }
    }
}

/// Sixteen words from four 16-byte sources at `xq + offset` (None: the zero point).
///
/// # Safety
/// Each source has 16 readable bytes; `out` has 64 writable bytes.
#[inline]
pub(super) unsafe fn interleave16(xq: *const u8, src: [Option<usize>; 4], zero: u8, out: *mut u8) {
    #[cfg(target_arch = "x86_64")]
    {
        // SSE2 (part of x86-64): byte then word unpacks turn four 16-byte rows into 16 words.
        use std::arch::x86_64::*;
        // SAFETY: the caller's contract; SSE2 is part of x86-64.
        unsafe {
            let fill = _mm_set1_epi8(zero as i8);
            let load = |s: Option<usize>| s.map_or(fill, |s| _mm_loadu_si128(xq.add(s) as *const __m128i));
            let (a, b, c, d) = (load(src[0]), load(src[1]), load(src[2]), load(src[3]));
            let (ab_lo, ab_hi) = (_mm_unpacklo_epi8(a, b), _mm_unpackhi_epi8(a, b));
            let (cd_lo, cd_hi) = (_mm_unpacklo_epi8(c, d), _mm_unpackhi_epi8(c, d));
            let p = out as *mut __m128i;
            _mm_storeu_si128(p, _mm_unpacklo_epi16(ab_lo, cd_lo));
            _mm_storeu_si128(p.add(1), _mm_unpackhi_epi16(ab_lo, cd_lo));
            _mm_storeu_si128(p.add(2), _mm_unpacklo_epi16(ab_hi, cd_hi));
            _mm_storeu_si128(p.add(3), _mm_unpackhi_epi16(ab_hi, cd_hi));
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    for i in 0..16 {
        for (j, s) in src.iter().enumerate() {
            // SAFETY: the caller's contract.
            unsafe { *out.add(i * 4 + j) = s.map_or(zero, |s| *xq.add(s + i)) };
        }
    }
}
