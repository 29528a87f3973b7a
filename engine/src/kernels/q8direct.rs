//! Direct int8 convolution, `q8-conv-direct`, for stride 1 and no dilation: no im2col buffer.
//!
//! The layer quantizes its input image once into a padded, *shifted* layout in which each 32-bit
//! lane holds four horizontally consecutive pixels of one sample: lane `(c, y, x, s)` of `xs`
//! (`[c, hp, wp, w]` lanes, `hp x wp` the padded image) holds bytes `q[c][y][x + j][s]` for
//! `j = 0..4`, with the zero point for padding and past the right edge. Four taps `kx0..kx0 + 4` of
//! one kernel row and input channel are then one lane for every output position, the unit of
//! VNNI's `vpdpbusd`. The weights are regrouped to match (`ShiftConv`): each output channel's
//! non-zero taps, kernel row by kernel row, covered greedily by groups of four columns (weights
//! past the kernel's width are zero). Output row `oy` of channel `o` is then, over the contiguous
//! lanes `(ox, s)`, the sum of `dpbusd(xs[c][oy + ky][ox + kx0][s], group)` over its groups,
//! dequantized as `q8` does (or requantized into codes for the next int8 layer, `Out`). The
//! lanes of a row are vectors of 16, the row's last few masked, so tiles of any width run it.
//!
//! The shifted image is 4x the bytes of the quantized image but, for kernels 3 wide and up,
//! smaller than the im2col columns (LeNet-5's first convolution: 128 KB instead of 686 KB for 32
//! samples), and the rows an output row reads stay in L1 while every output channel uses them.
//! Groups cover one kernel row, so they hold fewer non-zeros than im2col's groups of four
//! consecutive columns where a row's taps are few; `ShiftConv::worthwhile` weighs the two.

use std::ops::Range;

use super::Isa;
use super::q8::{Dequant, has_bw, has_vnni, quantize_value, quantize_values};
use super::q8conv::interleave16;
use super::window::Geometry;

/// A convolution's int8 weights regrouped for the shifted image: groups of four consecutive
/// kernel columns of one input channel and kernel row.
#[derive(Debug, Clone)]
pub struct ShiftConv {
    /// Output channel `o`'s groups are `row_ptr[o]..row_ptr[o + 1]`.
    pub row_ptr: Vec<u32>,
    /// Where each group reads, in lanes per sample: `(c * hp + ky) * wp + kx0`.
    pub offset: Vec<u32>,
    /// The group's four weights, byte `j` (little-endian) for kernel column `kx0 + j`.
    pub packed: Vec<i32>,
    /// Padded image height and width.
    pub hp: usize,
    pub wp: usize,
}

impl ShiftConv {
    /// Regroups row-major int8 weights `[rows, channels * kh * kw]` of the convolution `g`; None
    /// unless it has stride 1 and no dilation.
    pub fn new(values: &[i8], rows: usize, g: &Geometry) -> Option<ShiftConv> {
        let win = &g.window;
        if win.stride != [1, 1] || win.dilation != [1, 1] {
            return None;
        }
        let [kh, kw] = win.kernel;
        let (hp, wp) = (g.in_hw[0] + win.pads[0] + win.pads[2], g.in_hw[1] + win.pads[1] + win.pads[3]);
        let cols = g.channels * kh * kw;
        assert_eq!(values.len(), rows * cols, "int8 weight does not match the convolution");
        let (mut row_ptr, mut offset, mut packed) = (vec![0u32], Vec::new(), Vec::new());
        for o in 0..rows {
            for (c, ky) in (0..g.channels).flat_map(|c| (0..kh).map(move |ky| (c, ky))) {
                let taps = &values[o * cols + (c * kh + ky) * kw..][..kw];
                let mut kx = 0;
                while kx < kw {
                    if taps[kx] == 0 {
                        kx += 1;
                        continue;
                    }
                    let bytes: [u8; 4] = std::array::from_fn(|j| taps.get(kx + j).map_or(0, |&v| v as u8));
                    offset.push(((c * hp + ky) * wp + kx) as u32);
                    packed.push(i32::from_le_bytes(bytes));
                    kx += 4;
                }
            }
            row_ptr.push(packed.len() as u32);
        }
        Some(ShiftConv { row_ptr, offset, packed, hp, wp })
    }

    pub fn groups(&self) -> usize {
        self.packed.len()
    }

    pub fn bytes(&self) -> usize {
        4 * (self.row_ptr.len() + self.offset.len() + self.packed.len())
    }

    /// Whether the direct kernel may beat im2col and the grouped kernel (`im2col_groups` stored
    /// groups): the direct kernel runs `groups()` lanes per output position against im2col's
    /// `im2col_groups`, plus unfolding them (a write and a read of each). Dense narrow kernels
    /// (1x1, whose groups hold one tap) fail this; where it passes, the compiler times the two
    /// (on sparse 1x1 layers and 14x14 images of ResNet-50 the grouped kernel won).
    pub fn worthwhile(&self, im2col_groups: usize) -> bool {
        self.groups() <= 2 * im2col_groups
    }

    /// Bytes of the shifted image of `g` for tiles of `w` samples.
    pub fn image_len(&self, g: &Geometry, w: usize) -> usize {
        g.channels * self.hp * self.wp * w * 4
    }
}

/// Whether the vector kernel runs under `isa`: AVX-512 with VNNI and BW (tiles of any width:
/// each output row's last lanes go masked).
pub fn available(isa: Isa) -> bool {
    isa == Isa::Avx512 && has_vnni() && has_bw()
}

/// The padded rows of `xs` that output rows `rows` read.
fn padded_rows(g: &Geometry, rows: &Range<usize>) -> Range<usize> {
    rows.start..(rows.end + g.window.kernel[0] - 1).max(rows.start)
}

/// Where a shifted image's rows come from: the f32 input tile, quantized with `(scale, zero)`, or
/// an image of codes already quantized with the layer's input quantization (`[c, h, wd, w]` bytes).
#[derive(Clone, Copy)]
pub enum Source<'a> {
    F32 { x: &'a [f32], scale: f32, zero: u8 },
    Codes { x: &'a [u8], zero: u8 },
}

impl Source<'_> {
    fn zero(&self) -> u8 {
        match *self {
            Source::F32 { zero, .. } | Source::Codes { zero, .. } => zero,
        }
    }

    fn len(&self) -> usize {
        match self {
            Source::F32 { x, .. } => x.len(),
            Source::Codes { x, .. } => x.len(),
        }
    }

    /// Codes of `n` values from `at` into `out`.
    fn codes(&self, isa: Isa, at: usize, n: usize, out: &mut [u8]) {
        match *self {
            Source::F32 { x, scale, zero } => quantize_values(isa, &x[at..at + n], scale, zero, out),
            Source::Codes { x, .. } => out[..n].copy_from_slice(&x[at..at + n]),
        }
    }

    /// The code of value `at`.
    fn code(&self, at: usize) -> u8 {
        match *self {
            Source::F32 { x, scale, zero } => quantize_value(x[at], 1.0 / scale, zero),
            Source::Codes { x, .. } => x[at],
        }
    }
}

fn check_image(g: &Geometry, sc: &ShiftConv, x: &Source, rows: &Range<usize>, row_buf: &[u8], xs: &[u8]) {
    assert!(rows.end <= g.out_hw[0], "output rows outside the convolution");
    assert!(g.holds_input(x.len()), "input tile too small");
    assert!(row_buf.len() >= (sc.wp + 3) * g.w, "row buffer too small");
    assert!(xs.len() >= sc.image_len(g, g.w), "shifted image too small");
}

/// Writes the input rows that output rows `rows` read into the shifted image `xs` (see the
/// module), taking each row's codes once into `row_buf` (`(wp + 3) * w` bytes) and spreading them
/// into the four byte positions of the lanes.
pub fn shift_image(isa: Isa, g: &Geometry, sc: &ShiftConv, x: Source, rows: Range<usize>, row_buf: &mut [u8], xs: &mut [u8]) {
    check_image(g, sc, &x, &rows, row_buf, xs);
    let ([h, wd], w, [top, left, ..], zero) = (g.in_hw, g.w, g.window.pads, x.zero());
    let lanes = sc.wp * w;
    for c in 0..g.channels {
        for y in padded_rows(g, &rows) {
            let out = &mut xs[(c * sc.hp + y) * lanes * 4..][..lanes * 4];
            let Some(iy) = y.checked_sub(top).filter(|&iy| iy < h) else {
                out.fill(zero);
                continue;
            };
            let buf = &mut row_buf[..(sc.wp + 3) * w];
            buf.fill(zero);
            x.codes(isa, (c * h + iy) * wd * w, wd * w, &mut buf[left * w..]);
            spread(isa, buf, w, out);
        }
    }
}

/// Lane `i` of `out` gets bytes `buf[i + j * w]`, `j = 0..4`.
fn spread(isa: Isa, buf: &[u8], w: usize, out: &mut [u8]) {
    let lanes = out.len() / 4;
    assert!(buf.len() >= lanes + 3 * w, "row buffer too small");
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && has_bw() {
        // SAFETY: checked above; AVX-512BW was detected.
        i = unsafe { x86::spread_avx512(buf, w, out) };
    }
    if isa != Isa::Scalar {
        while i + 16 <= lanes {
            // SAFETY: the four sources end at i + 3 * w + 16 <= lanes + 3 * w <= buf.len(), and
            // out holds 4 * lanes bytes.
            unsafe { interleave16(buf.as_ptr(), std::array::from_fn(|j| Some(i + j * w)), 0, out.as_mut_ptr().add(i * 4)) };
            i += 16;
        }
    }
    for i in i..lanes {
        for j in 0..4 {
            out[i * 4 + j] = buf[i + j * w];
        }
    }
}

/// Scalar twin of `shift_image`, from the definition.
pub fn shift_image_ref(g: &Geometry, sc: &ShiftConv, x: Source, rows: Range<usize>, xs: &mut [u8]) {
    let w = g.w;
    check_image(g, sc, &x, &rows, &vec![0; (sc.wp + 3) * w], xs);
    let ([h, wd], [top, left, ..]) = (g.in_hw, g.window.pads);
    let pixel = |c: usize, y: usize, x_: usize, s: usize| {
        let (iy, ix) = (y.checked_sub(top).filter(|&v| v < h), x_.checked_sub(left).filter(|&v| v < wd));
        iy.zip(ix).map_or(x.zero(), |(iy, ix)| x.code(((c * h + iy) * wd + ix) * w + s))
    };
    for c in 0..g.channels {
        for y in padded_rows(g, &rows) {
            for px in 0..sc.wp {
                for s in 0..w {
                    for j in 0..4 {
                        xs[(((c * sc.hp + y) * sc.wp + px) * w + s) * 4 + j] = pixel(c, y, px + j, s);
                    }
                }
            }
        }
    }
}

/// Where the kernel writes output channels `channels`, `[channels.len(), oh, ow, w]`: f32, or
/// codes for the next int8 layer's input quantization (one byte per value, `quantize_value` of
/// the f32 output: activations then stay int8 through the pooling between two int8 layers).
pub enum Out<'a> {
    F32(&'a mut [f32]),
    Codes { y: &'a mut [u8], inv_scale: f32, zero: u8 },
}

impl<'a> Out<'a> {
    /// Output for the next layer's input quantization `(scale, zero)`.
    pub fn codes(y: &'a mut [u8], scale: f32, zero: u8) -> Out<'a> {
        Out::Codes { y, inv_scale: 1.0 / scale, zero }
    }

    fn len(&self) -> usize {
        match self {
            Out::F32(y) => y.len(),
            Out::Codes { y, .. } => y.len(),
        }
    }

    /// The output cut into consecutive parts of `n` values (the last may be shorter).
    pub fn split(self, n: usize) -> Vec<Out<'a>> {
        match self {
            Out::F32(y) => y.chunks_mut(n).map(Out::F32).collect(),
            Out::Codes { y, inv_scale, zero } => y.chunks_mut(n).map(|y| Out::Codes { y, inv_scale, zero }).collect(),
        }
    }

    #[inline]
    fn put(&mut self, at: usize, v: f32) {
        match self {
            Out::F32(y) => y[at] = v,
            Out::Codes { y, inv_scale, zero } => y[at] = quantize_value(v, *inv_scale, *zero),
        }
    }
}

fn check(sc: &ShiftConv, d: &Dequant, g: &Geometry, xs: &[u8], y: &Out, channels: &Range<usize>, rows: &Range<usize>) {
    assert!(channels.end < sc.row_ptr.len() && d.bias.len() == sc.row_ptr.len() - 1, "channels outside the convolution");
    assert!(xs.len() >= sc.image_len(g, g.w), "shifted image too small");
    assert!(rows.end <= g.out_hw[0] && g.holds_output(y.len(), channels.len()), "output tile too small");
    let [kh, kw] = g.window.kernel;
    assert!(sc.hp == g.out_hw[0] + kh - 1 && sc.wp == g.out_hw[1] + kw - 1, "weights regrouped for another geometry");
}

/// Scalar twin: output rows `rows` of output channels `channels`; `y` holds those channels as
/// `[channels.len(), oh, ow, w]` (rows outside `rows` are left as they are).
pub fn conv_q8_direct_ref(sc: &ShiftConv, d: &Dequant, g: &Geometry, xs: &[u8], mut y: Out, channels: Range<usize>, rows: Range<usize>) {
    check(sc, d, g, xs, &y, &channels, &rows);
    let ([oh, ow], w) = (g.out_hw, g.w);
    for (i, o) in channels.enumerate() {
        for oy in rows.clone() {
            for lane in 0..ow * w {
                let mut acc = 0i32;
                for j in sc.row_ptr[o] as usize..sc.row_ptr[o + 1] as usize {
                    let at = ((sc.offset[j] as usize + oy * sc.wp) * w + lane) * 4;
                    let weights = sc.packed[j].to_le_bytes();
                    acc += (0..4).map(|b| xs[at + b] as i32 * weights[b] as i8 as i32).sum::<i32>();
                }
                y.put((i * oh + oy) * ow * w + lane, d.apply(o, acc));
            }
        }
    }
}

/// Runs the VNNI kernel where `available(isa)`, else the scalar twin.
pub fn conv_q8_direct(
    isa: Isa,
    sc: &ShiftConv,
    d: &Dequant,
    g: &Geometry,
    xs: &[u8],
    mut y: Out,
    channels: Range<usize>,
    rows: Range<usize>,
) {
    check(sc, d, g, xs, &y, &channels, &rows);
    #[cfg(target_arch = "x86_64")]
    if available(isa) {
        // SAFETY: sizes checked above; offsets address rows of the padded image, so every lane
        // an output row reads lies inside `xs`; VNNI was detected.
        return unsafe { x86::conv_vnni(sc, d, g, xs, &mut y, channels, rows) };
    }
    conv_q8_direct_ref(sc, d, g, xs, y, channels, rows)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::{Dequant, Geometry, Out, ShiftConv};
    use crate::kernels::q8::{activate16, codes16};

    /// `super::spread`, 64 lanes at a time, the last step masked (one sample's rows are a few
    /// dozen lanes); returns how many lanes it did (all of them).
    ///
    /// # Safety
    /// AVX-512F and BW; `buf` holds `out.len() / 4 + 3 * w` bytes.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn spread_avx512(buf: &[u8], w: usize, out: &mut [u8]) -> usize {
        let lanes = out.len() / 4;
        let bytes = |k: usize| -> __mmask64 { if k >= 64 { !0 } else { (1u64 << k) - 1 } };
        let mut i = 0;
        while i < lanes {
            let k = (lanes - i).min(64);
            // SAFETY: load j reads bytes i + j * w .. i + j * w + k <= lanes + 3 * w <= buf.len();
            // store m writes out's bytes 4i + 64m .. 4i + 64m + 4 * (k - 16m), inside 4 * lanes.
            // Lane t of every vector below depends only on byte t of each load, so the lanes
            // past k, loaded as zeros, are never stored.
            unsafe {
                let load = |j: usize| _mm512_maskz_loadu_epi8(bytes(k), buf.as_ptr().add(i + j * w) as *const i8);
                let (a, b, c, d) = (load(0), load(1), load(2), load(3));
                // Within each 128-bit block: bytes of a and b, then of c and d, paired, then the
                // pairs paired: w0..w3 hold the block's lanes 0-3, 4-7, 8-11 and 12-15.
                let (ab_lo, ab_hi) = (_mm512_unpacklo_epi8(a, b), _mm512_unpackhi_epi8(a, b));
                let (cd_lo, cd_hi) = (_mm512_unpacklo_epi8(c, d), _mm512_unpackhi_epi8(c, d));
                let (w0, w1) = (_mm512_unpacklo_epi16(ab_lo, cd_lo), _mm512_unpackhi_epi16(ab_lo, cd_lo));
                let (w2, w3) = (_mm512_unpacklo_epi16(ab_hi, cd_hi), _mm512_unpackhi_epi16(ab_hi, cd_hi));
                // Output vector m is block m of w0, w1, w2 and w3: a 4x4 transposition of blocks.
                let (t0, t1) = (_mm512_shuffle_i32x4::<0x44>(w0, w1), _mm512_shuffle_i32x4::<0x44>(w2, w3));
                let (t2, t3) = (_mm512_shuffle_i32x4::<0xEE>(w0, w1), _mm512_shuffle_i32x4::<0xEE>(w2, w3));
                let vectors = [
                    _mm512_shuffle_i32x4::<0x88>(t0, t1),
                    _mm512_shuffle_i32x4::<0xDD>(t0, t1),
                    _mm512_shuffle_i32x4::<0x88>(t2, t3),
                    _mm512_shuffle_i32x4::<0xDD>(t2, t3),
                ];
                let p = out.as_mut_ptr().add(i * 4) as *mut i8;
                for (m, v) in vectors.into_iter().enumerate() {
                    let lanes_here = k.saturating_sub(16 * m).min(16);
                    if lanes_here > 0 {
                        _mm512_mask_storeu_epi8(p.add(64 * m), bytes(4 * lanes_here), v);
                    }
                }
            }
            i += k;
        }
        i
    }

    /// Vectors of an output row kept in registers at once.
    const CHUNK: usize = 8;

    /// Output rows, then chunks of up to eight vectors of a row, then channels: the input rows a
    /// chunk reads stay in L1 while every output channel uses them.
    ///
    /// # Safety
    /// AVX-512F, BW and VNNI; sizes as `super::check` verifies.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn conv_vnni(sc: &ShiftConv, d: &Dequant, g: &Geometry, xs: &[u8], y: &mut Out, channels: Range<usize>, rows: Range<usize>) {
        let ([oh, ow], w) = (g.out_hw, g.w);
        // Whole vectors of a row, then the row's last few lanes (tiles of any width).
        let (row_vectors, tail) = (ow * w / 16, ow * w % 16);
        for oy in rows {
            if tail > 0 {
                let v0 = row_vectors;
                for (i, o) in channels.clone().enumerate() {
                    // SAFETY: lanes v0 * 16.. + tail of output row (i, oy) lie inside `y`; the
                    // input lanes they read lie inside `xs` (the caller's contract).
                    unsafe {
                        let out = Dest::new(y, (i * oh + oy) * ow * w + v0 * 16);
                        let input = xs.as_ptr().add((oy * sc.wp * w + v0 * 16) * 4);
                        last_lanes(sc, d, o, w, input, out, (1u16 << tail) - 1);
                    }
                }
            }
            let mut v0 = 0;
            while v0 < row_vectors {
                let n = (row_vectors - v0).min(CHUNK);
                for (i, o) in channels.clone().enumerate() {
                    // SAFETY: vectors v0..v0 + n of output row (i, oy) lie inside `y`; the input
                    // lanes they read lie inside `xs` (the caller's contract).
                    unsafe {
                        let out = Dest::new(y, (i * oh + oy) * ow * w + v0 * 16);
                        let input = xs.as_ptr().add((oy * sc.wp * w + v0 * 16) * 4);
                        match n {
                            8 => chunk::<8>(sc, d, o, w, input, out),
                            7 => chunk::<7>(sc, d, o, w, input, out),
                            6 => chunk::<6>(sc, d, o, w, input, out),
                            5 => chunk::<5>(sc, d, o, w, input, out),
                            4 => chunk::<4>(sc, d, o, w, input, out),
                            3 => chunk::<3>(sc, d, o, w, input, out),
                            2 => chunk::<2>(sc, d, o, w, input, out),
                            _ => chunk::<1>(sc, d, o, w, input, out),
                        }
                    }
                }
                v0 += n;
            }
        }
    }

    /// Where a chunk's vectors go: f32 values, or codes (`quantize_value` of them).
    #[derive(Clone, Copy)]
    enum Dest {
        F32(*mut f32),
        Codes { y: *mut u8, inv_scale: f32, zero: u8 },
    }

    impl Dest {
        /// Value `at` of the output.
        ///
        /// # Safety
        /// `at` lies inside the output.
        unsafe fn new(out: &mut Out, at: usize) -> Dest {
            // SAFETY: the caller's contract.
            unsafe {
                match out {
                    Out::F32(y) => Dest::F32(y.as_mut_ptr().add(at)),
                    Out::Codes { y, inv_scale, zero } => Dest::Codes { y: y.as_mut_ptr().add(at), inv_scale: *inv_scale, zero: *zero },
                }
            }
        }
    }

    /// `N` vectors of output channel `o`: every group accumulated in registers, then dequantized
    /// and stored at `out`. `input` is the chunk's first lane in padded row 0 of channel 0.
    ///
    /// # Safety
    /// As `conv_vnni`: `out` holds `N` vectors, and `input` plus each group's offset `N` vectors.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn chunk<const N: usize>(sc: &ShiftConv, d: &Dequant, o: usize, w: usize, input: *const u8, out: Dest) {
        let mut acc = [_mm512_setzero_si512(); N];
        for j in sc.row_ptr[o] as usize..sc.row_ptr[o + 1] as usize {
            // SAFETY: j < row_ptr[o + 1] <= packed.len() = offset.len(); the lanes read are the
            // caller's contract.
            unsafe {
                let wv = _mm512_set1_epi32(*sc.packed.get_unchecked(j));
                let p = input.add(*sc.offset.get_unchecked(j) as usize * w * 4);
                for (z, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_dpbusd_epi32(*a, _mm512_loadu_si512(p.add(64 * z) as *const _), wv);
                }
            }
        }
        let (corr, mult, bias) = (_mm512_set1_epi32(d.zero_corr[o]), _mm512_set1_ps(d.mult[o]), _mm512_set1_ps(d.bias[o]));
        let values: [__m512; N] =
            std::array::from_fn(|z| activate16(_mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc[z], corr)), mult, bias), d));
        match out {
            Dest::F32(y) => {
                for (z, v) in values.iter().enumerate() {
                    // SAFETY: vector z of the chunk is inside the output row.
                    unsafe { _mm512_storeu_ps(y.add(16 * z), *v) };
                }
            }
            Dest::Codes { y, inv_scale, zero } => {
                // As `q8::quantize_values`: round to nearest even, add the zero point, clamp.
                let (scale, zero) = (_mm512_set1_ps(inv_scale), _mm512_set1_epi32(zero as i32));
                let codes: [__m512i; N] =
                    std::array::from_fn(|z| _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(values[z], scale)), zero));
                let mut z = 0;
                while z + 4 <= N {
                    // SAFETY: vectors z..z + 4 of the chunk are inside the output row.
                    unsafe { _mm512_storeu_si512(y.add(16 * z) as *mut _, pack4(&codes[z..z + 4])) };
                    z += 4;
                }
                for (z, q) in codes.iter().enumerate().skip(z) {
                    let q = _mm512_min_epi32(_mm512_max_epi32(*q, _mm512_setzero_si512()), _mm512_set1_epi32(255));
                    // SAFETY: as above.
                    unsafe { _mm_storeu_si128(y.add(16 * z) as *mut __m128i, _mm512_cvtepi32_epi8(q)) };
                }
            }
        }
    }

    /// `chunk::<1>` for the lanes of `mask` only (a row's last few).
    ///
    /// # Safety
    /// As `chunk`, for the masked lanes.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn last_lanes(sc: &ShiftConv, d: &Dequant, o: usize, w: usize, input: *const u8, out: Dest, mask: __mmask16) {
        let mut acc = _mm512_setzero_si512();
        for j in sc.row_ptr[o] as usize..sc.row_ptr[o + 1] as usize {
            // SAFETY: as in `chunk`; only the masked lanes are read.
            unsafe {
                let p = input.add(*sc.offset.get_unchecked(j) as usize * w * 4);
                acc = _mm512_dpbusd_epi32(
                    acc,
                    _mm512_maskz_loadu_epi32(mask, p as *const i32),
                    _mm512_set1_epi32(*sc.packed.get_unchecked(j)),
                );
            }
        }
        let v = _mm512_fmadd_ps(
            _mm512_cvtepi32_ps(_mm512_sub_epi32(acc, _mm512_set1_epi32(d.zero_corr[o]))),
            _mm512_set1_ps(d.mult[o]),
            _mm512_set1_ps(d.bias[o]),
        );
        let v = activate16(v, d);
        // SAFETY: the masked lanes are inside the output row.
        unsafe {
            match out {
                Dest::F32(y) => _mm512_mask_storeu_ps(y, mask, v),
                Dest::Codes { y, inv_scale, zero } => {
                    let q = codes16(v, _mm512_set1_ps(inv_scale), _mm512_set1_epi32(zero as i32));
                    _mm_mask_storeu_epi8(y as *mut i8, mask, _mm512_cvtepi32_epi8(q));
                }
            }
        }
    }

    /// Four vectors of int32 codes clamped to 0..=255 and packed into 64 bytes, in order: two
    /// saturating packs (to i16, then u8) interleave them by 128-bit lane, one dword permutation
    /// puts them back.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn pack4(q: &[__m512i]) -> __m512i {
        let bytes = _mm512_packus_epi16(_mm512_packs_epi32(q[0], q[1]), _mm512_packs_epi32(q[2], q[3]));
        // Dword 4 * lane + k holds vector k's dword `lane`; vector k's dwords go to 4 * k + lane.
        let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        _mm512_permutexvar_epi32(order, bytes)
    }
}
