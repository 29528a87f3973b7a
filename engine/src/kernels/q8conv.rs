//! Im2col for int8 convolutions on a quantized image: the layer quantizes its input image once,
//! then unfolds the uint8 image into the grouped layout the int8 kernels read (`q8`: four
//! consecutive im2col rows per 32-bit word). Quantizing the image instead of its im2col columns
//! does `kh * kw` times less arithmetic, and the unfolding only moves bytes. The result equals
//! `q8::quantize` of `window::im2col`'s output: padding is 0.0 there, which quantizes to the zero
//! point. At stride 1 along rows the image is quantized with its padding (`quantize_padded`), so
//! that each im2col row reads whole output rows of it (`im2col_u8_padded`); at other strides
//! tiles of 16 samples unfold 16 samples at a time (`im2col_u8`).

use std::ops::Range;

use super::window::Geometry;
use super::{Isa, q8};

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
/// can go to different threads. For tiles of a multiple of 16 samples at a stride along rows
/// (stride 1 unfolds a padded image, `im2col_u8_padded`).
pub fn im2col_u8(isa: Isa, g: &Geometry, xq: &[u8], rows: Range<usize>, groups: Range<usize>, zero: u8, out: &mut [u8]) {
    let (k, ld) = check(g, xq, &rows, &groups, out);
    if isa != Isa::Scalar && g.w.is_multiple_of(16) {
        return im2col_u8_strided(g, xq, rows, groups, zero, out, k, ld);
    }
    im2col_u8_ref(g, xq, rows, groups, zero, out)
}

/// Bytes past a padded image that `im2col_u8_padded`'s 16-byte loads may read.
const SLACK: usize = 16;

/// Rows and columns of the padded image: the input's, with the window's padding on each side.
fn padded_hw(g: &Geometry) -> [usize; 2] {
    let p = g.window.pads;
    [g.in_hw[0].saturating_add(p[0]).saturating_add(p[2]), g.in_hw[1].saturating_add(p[1]).saturating_add(p[3])]
}

/// Bytes of one channel's plane of the padded image of `g`'s tile (`[hp, wp, w]`).
pub fn padded_plane(g: &Geometry) -> usize {
    let [hp, wp] = padded_hw(g);
    hp.saturating_mul(wp).saturating_mul(g.w)
}

/// Bytes of the padded image (`[c, hp, wp, w]`) and the slack after it: what `quantize_padded`
/// writes and `im2col_u8_padded` reads.
pub fn padded_len(g: &Geometry) -> usize {
    g.channels.saturating_mul(padded_plane(g)).saturating_add(SLACK)
}

/// Quantizes the rows of the padded image that output rows `rows` read, of channels `channels`
/// of the f32 tile `x` (`[c, h, wd, w]`), into those channels' planes of the padded image `xp`
/// (`[hp, wp, w]` each, the first channel's first; `q`: scale and zero point). Padding holds the
/// zero point, which is what padding quantizes to; rows no output row reads are left as they are.
pub fn quantize_padded(isa: Isa, g: &Geometry, x: &[f32], rows: Range<usize>, channels: Range<usize>, q: (f32, u8), xp: &mut [u8]) {
    let ([h, wd], [_, wp], w) = (g.in_hw, padded_hw(g), g.w);
    let (top, left, plane, row) = (g.window.pads[0], g.window.pads[1], padded_plane(g), wd * w);
    assert!(g.holds_input(x.len()) && channels.end <= g.channels && rows.end <= g.out_hw[0], "image tile too small");
    assert!(xp.len() >= channels.len() * plane, "padded image too small");
    if rows.is_empty() {
        return;
    }
    let (sy, reach) = (g.window.stride[0], (g.window.kernel[0] - 1) * g.window.dilation[0]);
    let read = rows.start * sy..(rows.end - 1) * sy + reach + 1;
    for (c, xp) in channels.zip(xp.chunks_exact_mut(plane.max(1))) {
        for py in read.clone() {
            let padded_row = &mut xp[py * wp * w..(py + 1) * wp * w];
            match py.checked_sub(top).filter(|&iy| iy < h) {
                Some(iy) => {
                    let (before, rest) = padded_row.split_at_mut(left * w);
                    let (inside, after) = rest.split_at_mut(row);
                    before.fill(q.1);
                    after.fill(q.1);
                    q8::quantize_values(isa, &x[(c * h + iy) * row..][..row], q.0, q.1, inside);
                }
                None => padded_row.fill(q.1),
            }
        }
    }
}

/// `im2col_u8` of a convolution of stride 1 along rows (any stride between rows) over its padded
/// image `xp` (`quantize_padded`, slack included): each of a group's four im2col rows reads one
/// contiguous run of `ow * w` bytes per output row, so whole output rows interleave sixteen
/// words at a time, whatever their width (one sample's 14-pixel rows included).
pub fn im2col_u8_padded(isa: Isa, g: &Geometry, xp: &[u8], rows: Range<usize>, groups: Range<usize>, zero: u8, out: &mut [u8]) {
    let ([kh, kw], [oh, ow], w) = (g.window.kernel, g.out_hw, g.w);
    let ([hp, wp], [sy, _], [dy, dx]) = (padded_hw(g), g.window.stride, g.window.dilation);
    let (k, row_len) = (g.channels * kh * kw, ow * w);
    let ld = rows.len() * row_len;
    assert!(g.window.stride[1] == 1 && rows.end <= oh && groups.end <= k.div_ceil(4), "padded im2col rows");
    assert!(xp.len() >= padded_len(g) && out.len() >= groups.len() * ld * 4, "padded image or columns too small");
    for group in groups.clone() {
        // Where each of the group's four im2col rows starts reading for output row 0.
        let first: [Option<usize>; 4] = std::array::from_fn(|j| {
            let (c, ky, kx) = g.tap(4 * group + j);
            (4 * group + j < k).then_some(((c * hp + ky * dy) * wp + kx * dx) * w)
        });
        for (r, oy) in rows.clone().enumerate() {
            let src = first.map(|s| s.map(|s| s + oy * sy * wp * w));
            let words = &mut out[((group - groups.start) * ld + r * row_len) * 4..][..row_len * 4];
            interleave_runs(isa, xp, src, zero, words);
        }
    }
}

/// Byte `i` of run `j` (`xp` from `src[j]` on, or the zero point) into byte `j` of word `i`, for
/// every word of `words`; sixteen words at a time, the last ones under a mask (AVX-512) or
/// through a buffer.
fn interleave_runs(isa: Isa, xp: &[u8], src: [Option<usize>; 4], zero: u8, words: &mut [u8]) {
    let n = words.len() / 4;
    // Every 16-byte load reads below `s + n + 15`.
    assert!(src.iter().flatten().all(|&s| s + n + SLACK <= xp.len()), "run outside the padded image");
    if isa == Isa::Scalar {
        for (i, word) in words.chunks_exact_mut(4).enumerate() {
            for (j, s) in src.iter().enumerate() {
                word[j] = s.map_or(zero, |s| xp[s + i]);
            }
        }
        return;
    }
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: each source has 16 bytes from s + i (asserted above); i + 16 <= n, so the 64
        // bytes written lie in `words`.
        unsafe { interleave16(xp.as_ptr(), src.map(|s| s.map(|s| s + i)), zero, words.as_mut_ptr().add(i * 4)) };
        i += 16;
    }
    if i == n {
        return;
    }
    let tail = src.map(|s| s.map(|s| s + i));
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        // SAFETY: as above for the sources (s + i + 16 <= s + n + 15); the store writes the
        // n - i words left; AVX-512 is present when `isa` is Avx512.
        return unsafe { x86::interleave_last(xp.as_ptr(), tail, zero, words.as_mut_ptr().add(i * 4), n - i) };
    }
    let mut buffer = [0u8; 64];
    // SAFETY: as above for the sources; the buffer holds 64 bytes.
    unsafe { interleave16(xp.as_ptr(), tail, zero, buffer.as_mut_ptr()) };
    words[i * 4..].copy_from_slice(&buffer[..(n - i) * 4]);
}

/// `im2col_u8` of a tile of a multiple of 16 samples: the 16-sample chunks
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

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// `interleave16` for the first `n` (< 16) of the sixteen words, stored under a mask.
    ///
    /// # Safety
    /// AVX-512F and BW; each source has 16 readable bytes; `out` has `4 * n` writable bytes.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn interleave_last(xq: *const u8, src: [Option<usize>; 4], zero: u8, out: *mut u8, n: usize) {
        let fill = _mm_set1_epi8(zero as i8);
        // SAFETY: the caller's contract.
        let load = |s: Option<usize>| s.map_or(fill, |s| unsafe { _mm_loadu_si128(xq.add(s) as *const __m128i) });
        let (a, b, c, d) = (load(src[0]), load(src[1]), load(src[2]), load(src[3]));
        let (ab_lo, ab_hi) = (_mm_unpacklo_epi8(a, b), _mm_unpackhi_epi8(a, b));
        let (cd_lo, cd_hi) = (_mm_unpacklo_epi8(c, d), _mm_unpackhi_epi8(c, d));
        let low = _mm512_inserti32x4::<1>(_mm512_castsi128_si512(_mm_unpacklo_epi16(ab_lo, cd_lo)), _mm_unpackhi_epi16(ab_lo, cd_lo));
        let high =
            _mm512_inserti32x4::<3>(_mm512_inserti32x4::<2>(low, _mm_unpacklo_epi16(ab_hi, cd_hi)), _mm_unpackhi_epi16(ab_hi, cd_hi));
        let mask: __mmask64 = (1u64 << (4 * n)) - 1;
        // SAFETY: the mask covers the 4 * n bytes `out` holds.
        unsafe { _mm512_mask_storeu_epi8(out as *mut i8, mask, high) };
    }
}
