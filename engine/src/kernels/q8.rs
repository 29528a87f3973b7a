//! Int8 sparse kernels: uint8 activations times int8 weights, accumulated in int32, dequantized
//! (with bias and ReLU) into f32.
//!
//! Weights are kept in groups of 4 consecutive input columns, the unit of VNNI's `vpdpbusd`
//! (four u8 x i8 products summed into one int32 lane). Only groups with a non-zero weight are
//! stored, so 1x4 block-pruned weights fill every group and unstructured ones leave zeros inside.
//!
//! Activation layout: a quantized tile of `ld` samples and `k` features is `[k / 4, ld, 4]` bytes
//! (feature `f` of sample `s` at `((f / 4) * ld + s) * 4 + f % 4`), so the four features of a group
//! for one sample are one 32-bit lane. Features past `k` in the last group hold the zero point.
//!
//! Output: `y[o][s] = (acc - zero_corr[o]) * mult[o] + bias[o]`, then ReLU, with `acc` the int32
//! dot product, `zero_corr[o] = input_zero * sum(weights of row o)` and `mult[o] = input_scale *
//! weight_scale[o]`: exactly what QuantizeLinear/DequantizeLinear followed by fp32 Gemm compute.

use std::ops::Range;

use super::Isa;

/// Int8 weights `[rows, cols]` in groups of 4 columns, only non-zero groups stored.
#[derive(Debug, Clone)]
pub struct Q8Matrix {
    pub rows: usize,
    pub cols: usize,
    /// Row `o`'s groups are `row_ptr[o]..row_ptr[o + 1]`.
    pub row_ptr: Vec<u32>,
    /// Group index (`column / 4`) of each stored group.
    pub group: Vec<u32>,
    /// The group's four weights, byte `j` (little-endian) for column `4 * group + j`.
    pub packed: Vec<i32>,
    /// Sum of each row's weights, for the zero-point correction.
    pub row_sums: Vec<i32>,
}

impl Q8Matrix {
    /// Packs row-major int8 values of shape `[rows, cols]`.
    pub fn from_int8(values: &[i8], rows: usize, cols: usize) -> Q8Matrix {
        assert_eq!(values.len(), rows * cols, "int8 weight does not match its shape");
        let (mut row_ptr, mut group, mut packed, mut row_sums) = (vec![0u32], Vec::new(), Vec::new(), Vec::with_capacity(rows));
        for r in 0..rows {
            let row = &values[r * cols..(r + 1) * cols];
            for (g, quad) in row.chunks(4).enumerate() {
                if quad.iter().any(|&v| v != 0) {
                    let mut bytes = [0u8; 4];
                    quad.iter().enumerate().for_each(|(j, &v)| bytes[j] = v as u8);
                    group.push(g as u32);
                    packed.push(i32::from_le_bytes(bytes));
                }
            }
            row_ptr.push(group.len() as u32);
            row_sums.push(row.iter().map(|&v| v as i32).sum());
        }
        Q8Matrix { rows, cols, row_ptr, group, packed, row_sums }
    }

    pub fn stored_groups(&self) -> usize {
        self.group.len()
    }
    pub fn bytes(&self) -> usize {
        4 * (self.row_ptr.len() + self.group.len() + self.packed.len() + self.row_sums.len())
    }
}

/// The per-row dequantization the kernels apply to their int32 sums.
#[derive(Debug, Clone)]
pub struct Dequant {
    pub bias: Vec<f32>,
    /// `input_scale * weight_scale[o]`.
    pub mult: Vec<f32>,
    /// `input_zero * row_sums[o]`.
    pub zero_corr: Vec<i32>,
    pub relu: bool,
    /// The activation's QuantizeLinear/DequantizeLinear pair `(scale, zero)` that followed the
    /// layer, applied to its f32 outputs after the ReLU (`quantize_dequantize`): fused from the
    /// node after it, so the pass over the output that the pair was goes.
    pub fake_quant: Option<(f32, u8)>,
}

impl Dequant {
    /// Row `o`'s output for the int32 dot product `acc`.
    #[inline]
    pub fn apply(&self, o: usize, acc: i32) -> f32 {
        self.finish(((acc - self.zero_corr[o]) as f32).mul_add(self.mult[o], self.bias[o]))
    }

    /// A dequantized value's ReLU and fake quantization.
    #[inline]
    pub fn finish(&self, v: f32) -> f32 {
        let v = if self.relu { v.max(0.0) } else { v };
        self.fake_quant.map_or(v, |(scale, zero)| quantize_dequantize(v, scale, zero))
    }
}

/// Where an int8 kernel writes the rows it computes.
pub enum Output<'a> {
    /// Dequantized f32, `[rows.len(), ld]`.
    F32(&'a mut [f32]),
    /// Dequantized f32 with rows `stride >= ld` floats apart: a band of output rows written
    /// straight into each channel of a whole image (row `o` of sample `s` at
    /// `(o - rows.start) * stride + s`).
    F32Rows { y: &'a mut [f32], stride: usize },
    /// Requantized for the next int8 layer, straight into its input layout: the rows are that
    /// layer's features, so row `o` of sample `s` is byte `((o / 4 - rows.start / 4) * ld + s) * 4 +
    /// o % 4` (`rows.start` a multiple of 4), and the rows that complete the matrix's last group
    /// of four hold the zero point. Codes are `quantize_value(v, inv_scale, zero)`, exactly what
    /// `quantize` would make of the f32 output.
    Quantized { y: &'a mut [u8], inv_scale: f32, zero: u8 },
}

impl Output<'_> {
    /// Panics unless rows `rows` of a matrix of `n_rows` rows, `ld` samples each, fit.
    pub(crate) fn check(&self, rows: &Range<usize>, n_rows: usize, ld: usize) {
        match self {
            Output::F32(y) => assert!(y.len() >= rows.len() * ld, "output tile too small"),
            Output::F32Rows { y, stride } => {
                assert!(*stride >= ld && (rows.is_empty() || y.len() >= (rows.len() - 1) * stride + ld), "output rows do not fit")
            }
            Output::Quantized { y, .. } => {
                assert!(
                    rows.start.is_multiple_of(4) && (rows.end.is_multiple_of(4) || rows.end == n_rows),
                    "requantized rows must be whole groups of 4"
                );
                assert!(y.len() >= quantized_len(rows.len(), ld), "requantized output too small");
            }
        }
    }

    /// Output for the next layer's input quantization `(scale, zero)`.
    pub fn quantized(y: &mut [u8], scale: f32, zero: u8) -> Output<'_> {
        Output::Quantized { y, inv_scale: 1.0 / scale, zero }
    }

    /// The f32 rows and their distance, for the two f32 outputs.
    #[inline]
    fn f32_rows(&mut self, ld: usize) -> Option<(&mut [f32], usize)> {
        match self {
            Output::F32(y) => Some((y, ld)),
            Output::F32Rows { y, stride } => Some((y, *stride)),
            Output::Quantized { .. } => None,
        }
    }

    /// Writes row `o`'s value for sample `s`; after the matrix's last row (`o + 1 == rows`), fills
    /// the rest of its group of four with the zero point.
    #[inline]
    fn put(&mut self, o: usize, r0: usize, rows: usize, ld: usize, s: usize, v: f32) {
        if let Some((y, stride)) = self.f32_rows(ld) {
            y[(o - r0) * stride + s] = v;
        } else if let Output::Quantized { y, inv_scale, zero } = self {
            let at = |r: usize| ((r / 4 - r0 / 4) * ld + s) * 4 + r % 4;
            y[at(o)] = quantize_value(v, *inv_scale, *zero);
            if o + 1 == rows {
                (rows..rows.next_multiple_of(4)).for_each(|r| y[at(r)] = *zero);
            }
        }
    }
}

/// Bytes of a quantized tile of `k` features and `ld` samples.
pub fn quantized_len(k: usize, ld: usize) -> usize {
    k.div_ceil(4) * ld * 4
}

/// The uint8 code of `x`: `x` times the reciprocal of the scale, rounded half to even, plus the
/// zero point, clamped. QuantizeLinear divides by the scale; the product differs from the quotient
/// by at most one unit in the last place, which changes the code only when `x / scale` lies within
/// that of a half-way point (about one activation in ten million), and a division costs many
/// multiplications.
#[inline]
pub fn quantize_value(x: f32, inv_scale: f32, zero: u8) -> u8 {
    ((x * inv_scale).round_ties_even() + zero as f32).clamp(0.0, 255.0) as u8
}

/// QuantizeLinear then DequantizeLinear of `x` with a uint8 code, exactly as ONNX writes them
/// (dividing by the scale): the value of `x`'s code.
#[inline]
pub fn quantize_dequantize(x: f32, scale: f32, zero: u8) -> f32 {
    let code = ((x / scale).round_ties_even() + zero as f32).clamp(0.0, 255.0);
    (code - zero as f32) * scale
}

fn check_quantize(x: &[f32], k: usize, ld: usize, out: &[u8]) {
    assert!(x.len() >= k * ld, "input tile too small");
    assert!(out.len() >= quantized_len(k, ld), "quantized tile too small");
}

/// Scalar twin of `quantize`.
pub fn quantize_ref(x: &[f32], k: usize, ld: usize, scale: f32, zero: u8, out: &mut [u8]) {
    check_quantize(x, k, ld, out);
    let scale = 1.0 / scale;
    for g in 0..k.div_ceil(4) {
        for s in 0..ld {
            for j in 0..4 {
                let f = 4 * g + j;
                out[(g * ld + s) * 4 + j] = if f < k { quantize_value(x[f * ld + s], scale, zero) } else { zero };
            }
        }
    }
}

/// Quantizes a feature-major f32 tile `[k, ld]` into the grouped uint8 layout.
pub fn quantize(isa: Isa, x: &[f32], k: usize, ld: usize, scale: f32, zero: u8, out: &mut [u8]) {
    check_quantize(x, k, ld, out);
    match isa {
        // SAFETY: sizes checked above; AVX-512F is present when `isa` is Avx512.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if ld >= 16 => unsafe { x86::quantize_avx512(x, k, ld, 1.0 / scale, zero, out) },
        // With one sample the grouped layout is the features in order (then the padding).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if ld == 1 => {
            // SAFETY: as above.
            unsafe { x86::quantize_values_avx512(&x[..k], 1.0 / scale, zero, out) };
            out[k..quantized_len(k, 1)].fill(zero);
        }
        _ => quantize_ref(x, k, ld, scale, zero, out),
    }
}

/// Quantizes values one to one, `out[i] = quantize_value(x[i], 1 / scale, zero)` (an image for
/// `q8conv`, no grouped layout).
pub fn quantize_values(isa: Isa, x: &[f32], scale: f32, zero: u8, out: &mut [u8]) {
    assert!(out.len() >= x.len(), "quantized values too small");
    match isa {
        // SAFETY: sizes checked above; AVX-512F is present when `isa` is Avx512.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::quantize_values_avx512(x, 1.0 / scale, zero, out) },
        _ => x.iter().zip(out).for_each(|(&v, o)| *o = quantize_value(v, 1.0 / scale, zero)),
    }
}

/// Regroups codes held feature-major (`[k, ld]` bytes: an int8 convolution's output after
/// pooling, already quantized for this layer) into the grouped layout, the features past `k` in
/// the last group holding `zero`.
pub fn group_codes(x: &[u8], k: usize, ld: usize, zero: u8, out: &mut [u8]) {
    assert!(x.len() >= k * ld, "codes too small");
    assert!(out.len() >= quantized_len(k, ld), "quantized tile too small");
    for g in 0..k.div_ceil(4) {
        let rows: [Option<usize>; 4] = std::array::from_fn(|j| (4 * g + j < k).then(|| (4 * g + j) * ld));
        let mut s = 0;
        while s + 16 <= ld {
            // SAFETY: each source row f < k holds ld bytes from f * ld, s + 16 <= ld; the 64
            // bytes written end at (g * ld + s + 16) * 4 <= quantized_len(k, ld).
            unsafe {
                super::q8conv::interleave16(x.as_ptr(), rows.map(|r| r.map(|r| r + s)), zero, out.as_mut_ptr().add((g * ld + s) * 4))
            };
            s += 16;
        }
        for s in s..ld {
            for (j, r) in rows.iter().enumerate() {
                out[(g * ld + s) * 4 + j] = r.map_or(zero, |r| x[r + s]);
            }
        }
    }
}

fn check_samples(x: &[f32], k: usize, w: usize, ld: usize, out: &[u8]) {
    assert!(w <= ld && x.len() >= k * w, "sample batch too small");
    assert!(out.len() >= quantized_len(k, ld), "quantized tile too small");
}

/// Scalar twin of `quantize_samples`.
pub fn quantize_samples_ref(x: &[f32], k: usize, w: usize, ld: usize, scale: f32, zero: u8, out: &mut [u8]) {
    check_samples(x, k, w, ld, out);
    let inv = 1.0 / scale;
    for s in 0..w {
        for g in 0..k.div_ceil(4) {
            for j in 0..4 {
                let f = 4 * g + j;
                out[(g * ld + s) * 4 + j] = if f < k { quantize_value(x[s * k + f], inv, zero) } else { zero };
            }
        }
    }
}

/// Quantizes `w` samples given sample-major (`x[s * k + f]`, as callers pass a batch) straight
/// into the grouped layout of a tile `ld` samples wide: the four features of a group are
/// consecutive in both, so this is a transposition of 32-bit words, fused with the quantization
/// (a first int8 layer then skips the f32 transpose of its input).
pub fn quantize_samples(isa: Isa, x: &[f32], k: usize, w: usize, ld: usize, scale: f32, zero: u8, out: &mut [u8]) {
    check_samples(x, k, w, ld, out);
    let groups = k.div_ceil(4);
    // Sixteen samples at a time: quantize their rows into a small buffer (in L1), then write each
    // group's sixteen words as one contiguous run of the tile (the buffer only where the fused
    // 16-sample kernel does not run).
    const S: usize = 16;
    let mut rows = Vec::new();
    for s0 in (0..w).step_by(S) {
        let n = S.min(w - s0);
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Avx512 && n == S && has_bw() {
            // SAFETY: rows s0..s0 + 16 of `x` hold k values each (checked above); the words of
            // samples s0..s0 + 16 of every group are inside `out` as for `interleave16`.
            unsafe { x86::quantize16_avx512(&x[s0 * k..(s0 + S) * k], k, 1.0 / scale, zero, &mut out[s0 * 4..], ld) };
            continue;
        }
        rows.resize(S * groups, 0u32);
        for i in 0..n {
            let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut rows[i * groups..(i + 1) * groups]);
            quantize(isa, &x[(s0 + i) * k..(s0 + i + 1) * k], k, 1, scale, zero, bytes);
        }
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Avx512 && n == S {
            // SAFETY: `rows` holds 16 rows of `groups` words; (g * ld + s0 + 15) * 4 + 3 <
            // quantized_len(k, ld) since s0 + 16 <= w <= ld (checked above).
            unsafe { x86::interleave16(&rows, groups, &mut out[s0 * 4..], ld) };
            continue;
        }
        for g in 0..groups {
            let dst = &mut out[(g * ld + s0) * 4..(g * ld + s0 + n) * 4];
            for (i, d) in dst.chunks_exact_mut(4).enumerate() {
                d.copy_from_slice(&rows[i * groups + g].to_le_bytes());
            }
        }
    }
}

fn check(m: &Q8Matrix, x: &[u8], ld: usize, out: &Output, rows: &Range<usize>, d: &Dequant) {
    assert!(rows.end <= m.rows, "row range does not fit the matrix");
    assert!(d.bias.len() == m.rows && d.mult.len() == m.rows && d.zero_corr.len() == m.rows, "dequantization does not fit");
    assert!(x.len() >= quantized_len(m.cols, ld), "quantized input too small");
    out.check(rows, m.rows, ld);
}

/// The int32 dot product of row `o` with sample `s`.
#[inline]
fn dot_ref(m: &Q8Matrix, x: &[u8], ld: usize, o: usize, s: usize) -> i32 {
    let mut acc = 0i32;
    for j in m.row_ptr[o] as usize..m.row_ptr[o + 1] as usize {
        let w = m.packed[j].to_le_bytes();
        let base = (m.group[j] as usize * ld + s) * 4;
        for (b, &wb) in w.iter().enumerate() {
            acc += x[base + b] as i32 * wb as i8 as i32;
        }
    }
    acc
}

/// Scalar twin of `spmm_q8` and `spmm_q8_into`.
pub fn spmm_q8_ref_into(m: &Q8Matrix, x: &[u8], ld: usize, mut out: Output, rows: Range<usize>, d: &Dequant) {
    check(m, x, ld, &out, &rows, d);
    let r0 = rows.start;
    for o in rows {
        for s in 0..ld {
            out.put(o, r0, m.rows, ld, s, d.apply(o, dot_ref(m, x, ld, o, s)));
        }
    }
}

/// Scalar twin of `spmm_q8`.
pub fn spmm_q8_ref(m: &Q8Matrix, x: &[u8], ld: usize, y: &mut [f32], rows: Range<usize>, d: &Dequant) {
    spmm_q8_ref_into(m, x, ld, Output::F32(y), rows, d)
}

/// Whether this CPU has AVX-512BW (every CPU with AVX-512 VNNI has).
pub fn has_bw() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512bw")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether this CPU has AVX-512 VNNI.
pub fn has_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `y = dequant(W x)` for the rows in `rows` (`y` holds them as `[rows.len(), ld]`).
pub fn spmm_q8(isa: Isa, m: &Q8Matrix, x: &[u8], ld: usize, y: &mut [f32], rows: Range<usize>, d: &Dequant) {
    spmm_q8_into(isa, m, x, ld, Output::F32(y), rows, d)
}

/// `dequant(W x)` for the rows in `rows`, written as `out` says: f32, or requantized for the
/// next int8 layer (activations then stay int8 between the two layers).
pub fn spmm_q8_into(isa: Isa, m: &Q8Matrix, x: &[u8], ld: usize, mut out: Output, rows: Range<usize>, d: &Dequant) {
    check(m, x, ld, &out, &rows, d);
    match (isa, has_vnni()) {
        // SAFETY: sizes checked above; group indices are < groups() by construction, so every
        // load stays inside the quantized tile; the features were detected at run time.
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512, true) if ld == 1 => unsafe { x86::spmv_vnni(m, x, &mut out, rows, d) },
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512, true) => unsafe { x86::spmm_vnni(m, x, ld, &mut out, rows, d) },
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2 | Isa::Avx512, _) if ld >= 8 => unsafe { x86::spmm_avx2(m, x, ld, &mut out, rows, d) },
        _ => spmm_q8_ref_into(m, x, ld, out, rows, d),
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{activate16, codes16, emit16, quantize_dequantize16};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::{Dequant, Output, Q8Matrix, dot_ref};

    /// `Dequant::finish` of 16 dequantized values: the ReLU, then the fake quantization.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) fn activate16(v: __m512, d: &Dequant) -> __m512 {
        let v = if d.relu { _mm512_max_ps(v, _mm512_setzero_ps()) } else { v };
        match d.fake_quant {
            Some((scale, zero)) => quantize_dequantize16(v, scale, zero),
            None => v,
        }
    }

    /// `super::quantize_dequantize` of 16 values, bit for bit, at the cost of a multiplication:
    /// `v` times the reciprocal of the scale is within about one unit in the last place of the
    /// quotient (`quantize_value`), so it rounds to the same integer unless it lies within a few
    /// units of a half-way point; only then (a few values in ten million) are those lanes divided.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) fn quantize_dequantize16(v: __m512, scale: f32, zero: u8) -> __m512 {
        const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
        let q = _mm512_mul_ps(v, _mm512_set1_ps(1.0 / scale));
        let mut r = _mm512_roundscale_ps::<NEAREST>(q);
        // Off a half-way point by less than 2^-20 of the value (four times the product's error).
        let slack = _mm512_fnmadd_ps(_mm512_abs_ps(q), _mm512_set1_ps(1.0 / (1 << 20) as f32), _mm512_set1_ps(0.5));
        let near = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(_mm512_abs_ps(_mm512_sub_ps(q, r)), slack);
        if near != 0 {
            r = _mm512_mask_roundscale_ps::<NEAREST>(r, near, _mm512_div_ps(v, _mm512_set1_ps(scale)));
        }
        let z = _mm512_set1_ps(zero as f32);
        let code = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(r, z), _mm512_setzero_ps()), _mm512_set1_ps(255.0));
        _mm512_mul_ps(_mm512_sub_ps(code, z), _mm512_set1_ps(scale))
    }

    /// `super::quantize_value` of 16 values, one code per 32-bit lane: times the reciprocal of
    /// the scale, rounded half to even (the default rounding mode, as QuantizeLinear does), plus
    /// the zero point, clamped to 0..=255.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) fn codes16(v: __m512, inv_scale: __m512, zero: __m512i) -> __m512i {
        let q = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v, inv_scale)), zero);
        _mm512_min_epi32(_mm512_max_epi32(q, _mm512_setzero_si512()), _mm512_set1_epi32(255))
    }

    /// Word `g` of each of 16 rows (`rows[i * groups + g]`) to `out[(g * ld + i) * 4..][..4]`:
    /// one gather and one 64-byte store per group.
    ///
    /// # Safety
    /// AVX-512F; `rows.len() >= 16 * groups`; `out` reaches `((groups - 1) * ld + 16) * 4` bytes.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn interleave16(rows: &[u32], groups: usize, out: &mut [u8], ld: usize) {
        assert!(rows.len() >= 16 * groups && (groups == 0 || out.len() >= ((groups - 1) * ld + 16) * 4));
        let stride = groups as i32;
        let index = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(stride));
        for g in 0..groups {
            // SAFETY: indices i * groups + g < 16 * groups <= rows.len(); the store is inside `out`.
            unsafe {
                let v = _mm512_i32gather_epi32::<4>(index, rows.as_ptr().add(g) as *const i32);
                _mm512_storeu_si512(out.as_mut_ptr().add(g * ld * 4) as *mut _, v);
            }
        }
    }

    /// `quantize_samples` of 16 samples (`x`: 16 rows of `k` values) into the words of groups
    /// `0..k / 4` rounded up, `out[(g * ld + i) * 4..][..4]` for sample `i`, without the row
    /// buffer and gathers of `interleave16`: per 16 features, the 16 samples' codes are packed
    /// four samples a vector with saturating packs (128-bit lane `L` then holds group `L`'s word
    /// of each of the four), and a 4 x 4 transposition of 128-bit lanes makes each group's 16
    /// words one vector. Features past `k` quantize 0.0, the zero point, as the scalar twin pads.
    ///
    /// # Safety
    /// AVX-512F and BW; `x.len() >= 16 * k`; `out` reaches `((groups - 1) * ld + 16) * 4` bytes.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn quantize16_avx512(x: &[f32], k: usize, inv_scale: f32, zero: u8, out: &mut [u8], ld: usize) {
        let groups = k.div_ceil(4);
        assert!(x.len() >= 16 * k && (groups == 0 || out.len() >= ((groups - 1) * ld + 16) * 4));
        let (vs, vz) = (_mm512_set1_ps(inv_scale), _mm512_set1_epi32(zero as i32));
        let mut f0 = 0;
        while f0 < k {
            let n = (k - f0).min(16);
            let mask: __mmask16 = if n == 16 { 0xffff } else { (1 << n) - 1 };
            // SAFETY: the loaded lanes are features f0..f0 + n < k of rows 0..16 of `x`.
            let codes: [__m512i; 16] =
                std::array::from_fn(|i| codes16(unsafe { _mm512_maskz_loadu_ps(mask, x.as_ptr().add(i * k + f0)) }, vs, vz));
            // Codes are 0..=255, so the saturating packs keep them: lane L of `quad[j]` is group
            // L's word of samples 4j..4j + 4.
            let quad: [__m512i; 4] = std::array::from_fn(|j| {
                let low = _mm512_packus_epi32(codes[4 * j], codes[4 * j + 1]);
                let high = _mm512_packus_epi32(codes[4 * j + 2], codes[4 * j + 3]);
                _mm512_packus_epi16(low, high)
            });
            let t0 = _mm512_shuffle_i32x4::<0b01_00_01_00>(quad[0], quad[1]);
            let t1 = _mm512_shuffle_i32x4::<0b11_10_11_10>(quad[0], quad[1]);
            let t2 = _mm512_shuffle_i32x4::<0b01_00_01_00>(quad[2], quad[3]);
            let t3 = _mm512_shuffle_i32x4::<0b11_10_11_10>(quad[2], quad[3]);
            let words = [
                _mm512_shuffle_i32x4::<0b10_00_10_00>(t0, t2),
                _mm512_shuffle_i32x4::<0b11_01_11_01>(t0, t2),
                _mm512_shuffle_i32x4::<0b10_00_10_00>(t1, t3),
                _mm512_shuffle_i32x4::<0b11_01_11_01>(t1, t3),
            ];
            for (l, word) in words.iter().enumerate().take(n.div_ceil(4)) {
                // SAFETY: group f0 / 4 + l < groups, so its 16 words are inside `out`.
                unsafe { _mm512_storeu_si512(out.as_mut_ptr().add((f0 / 4 + l) * ld * 4) as *mut _, *word) };
            }
            f0 += 16;
        }
    }

    /// Values one to one: `out[f] = q(x[f])`.
    ///
    /// # Safety
    /// AVX-512F; `out` holds at least `x.len()` bytes.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn quantize_values_avx512(x: &[f32], inv_scale: f32, zero: u8, out: &mut [u8]) {
        let k = x.len();
        assert!(out.len() >= k);
        let (vs, vz) = (_mm512_set1_ps(inv_scale), _mm512_set1_epi32(zero as i32));
        let mut f = 0;
        while f + 16 <= k {
            // SAFETY: f + 15 < k <= x.len() and < out.len().
            unsafe {
                let q = codes16(_mm512_loadu_ps(x.as_ptr().add(f)), vs, vz);
                _mm_storeu_si128(out.as_mut_ptr().add(f) as *mut __m128i, _mm512_cvtepi32_epi8(q));
            }
            f += 16;
        }
        if f < k {
            // The last values under a mask: one sample's 14-pixel image rows are all tail.
            let mask: __mmask16 = (1 << (k - f)) - 1;
            // SAFETY: the lanes under the mask are f..k, inside `x` and `out`.
            unsafe {
                let q = codes16(_mm512_maskz_loadu_ps(mask, x.as_ptr().add(f)), vs, vz);
                _mm512_mask_cvtepi32_storeu_epi8(out.as_mut_ptr().add(f) as *mut i8, mask, q);
            }
        }
    }

    /// # Safety
    /// AVX-512F; `x` has `k * ld` values and `out` `quantized_len(k, ld)` bytes; `ld >= 16`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn quantize_avx512(x: &[f32], k: usize, ld: usize, inv_scale: f32, zero: u8, out: &mut [u8]) {
        let (xp, op) = (x.as_ptr(), out.as_mut_ptr());
        let (vs, vz) = (_mm512_set1_ps(inv_scale), _mm512_set1_epi32(zero as i32));
        for g in 0..k.div_ceil(4) {
            let mut s = 0;
            while s + 16 <= ld {
                let mut word = _mm512_setzero_si512();
                for j in 0..4 {
                    let f = 4 * g + j;
                    let q = if f < k {
                        // SAFETY: f < k and s + 15 < ld, inside `x`.
                        codes16(unsafe { _mm512_loadu_ps(xp.add(f * ld + s)) }, vs, vz)
                    } else {
                        vz
                    };
                    word = _mm512_or_si512(word, _mm512_sllv_epi32(q, _mm512_set1_epi32(8 * j as i32)));
                }
                // SAFETY: (g * ld + s + 15) * 4 + 3 < quantized_len(k, ld).
                unsafe { _mm512_storeu_si512(op.add((g * ld + s) * 4) as *mut _, word) };
                s += 16;
            }
            for s in s..ld {
                for j in 0..4 {
                    let f = 4 * g + j;
                    let v = if f < k { super::quantize_value(x[f * ld + s], inv_scale, zero) } else { zero };
                    out[(g * ld + s) * 4 + j] = v;
                }
            }
        }
    }

    /// Dequantizes 16 sums of row `o` (masked to `mask`) for samples `c0..c0 + 16` and writes
    /// them: f32 stores, or for requantized output one byte of each 32-bit word of `word`, which
    /// is stored once the group of four rows is complete (or the matrix ends).
    ///
    /// # Safety
    /// The masked lanes of row `o` at samples `c0..` lie inside the output, as `super::check`
    /// verifies for rows `r0..` and `ld` samples.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn emit16(
        out: &mut Output,
        d: &Dequant,
        o: usize,
        r0: usize,
        rows: usize,
        ld: usize,
        c0: usize,
        acc: __m512i,
        mask: __mmask16,
        word: &mut __m512i,
    ) {
        let v = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc, _mm512_set1_epi32(d.zero_corr[o])));
        let v = activate16(_mm512_fmadd_ps(v, _mm512_set1_ps(d.mult[o]), _mm512_set1_ps(d.bias[o])), d);
        if let Some((y, stride)) = out.f32_rows(ld) {
            // SAFETY: (o - r0) * stride + c0 + 15 < y.len() for the masked lanes (`check`).
            unsafe { _mm512_mask_storeu_ps(y.as_mut_ptr().add((o - r0) * stride + c0), mask, v) };
        } else if let Output::Quantized { y, inv_scale, zero } = out {
            let vz = _mm512_set1_epi32(*zero as i32);
            let q = codes16(v, _mm512_set1_ps(*inv_scale), vz);
            *word = _mm512_or_si512(*word, _mm512_sllv_epi32(q, _mm512_set1_epi32(8 * (o % 4) as i32)));
            if o % 4 == 3 || o + 1 == rows {
                for r in o % 4 + 1..4 {
                    *word = _mm512_or_si512(*word, _mm512_sllv_epi32(vz, _mm512_set1_epi32(8 * r as i32)));
                }
                // SAFETY: ((o / 4 - r0 / 4) * ld + c0 + 15) * 4 + 3 < quantized_len(rows.len(), ld).
                unsafe { _mm512_mask_storeu_epi32(y.as_mut_ptr().add(((o / 4 - r0 / 4) * ld + c0) * 4) as *mut i32, mask, *word) };
                *word = _mm512_setzero_si512();
            }
        }
    }

    /// Input bytes up to which 64-sample strips run (about two thirds of a 48 KB L1).
    const WIDE_STRIP_BYTES: usize = 32 * 1024;

    /// Batched: strips of 64 samples (four vectors of 16 int32 sums per row) where 64 samples of
    /// every input group fit L1, else of 32; the samples left after them, up to one vector more
    /// than a strip, go in one last strip of as many vectors, its last one masked. (Strips of 32
    /// then 16 then a masked remainder had read every weight three times on a 7x7 image.)
    ///
    /// # Safety
    /// AVX-512F and AVX-512 VNNI; sizes as `super::check` verifies; `group[j] < groups()`.
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub unsafe fn spmm_vnni(m: &Q8Matrix, x: &[u8], ld: usize, out: &mut Output, rows: Range<usize>, d: &Dequant) {
        // A 64-sample strip reads every group's 256 bytes; where those overflow L1 (LeNet-300-100's
        // 784 inputs: 50 KB), 32-sample strips (half that) measured faster.
        let widest = if m.cols.div_ceil(4) * 256 <= WIDE_STRIP_BYTES { 4 } else { 2 };
        let mut c0 = 0;
        while c0 < ld {
            let left = ld - c0;
            let vectors = if left <= 16 * (widest + 1) { left.div_ceil(16) } else { widest };
            let lanes = left.min(16 * vectors);
            // SAFETY: samples c0..c0 + lanes <= ld; the rest as this function's.
            unsafe {
                match vectors {
                    1 => strip::<1, 8>(m, x, ld, out, &rows, d, c0, lanes),
                    2 => strip::<2, 4>(m, x, ld, out, &rows, d, c0, lanes),
                    3 => strip::<3, 3>(m, x, ld, out, &rows, d, c0, lanes),
                    4 => strip::<4, 2>(m, x, ld, out, &rows, d, c0, lanes),
                    _ => strip::<5, 2>(m, x, ld, out, &rows, d, c0, lanes),
                }
            }
            c0 += lanes;
        }
    }

    /// Samples `c0..c0 + lanes` of rows `rows` (`lanes` more than `16 * (V - 1)`, at most
    /// `16 * V`): `V` vectors of 16 sums per row, the last masked. Groups go in turn to `S` sets of
    /// accumulators, `S * V` independent `vpdpbusd` chains (eight or more cover its latency on two
    /// ports). The sets are arrays taken in turn by a loop of constant bounds, which keeps them in
    /// registers (picking one by the group's parity had kept them in memory, 3x slower).
    ///
    /// # Safety
    /// As `spmm_vnni`, with `c0 + lanes <= ld`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512vnni")]
    #[allow(clippy::too_many_arguments)] // spmm_vnni's arguments plus the strip
    unsafe fn strip<const V: usize, const S: usize>(
        m: &Q8Matrix,
        x: &[u8],
        ld: usize,
        out: &mut Output,
        rows: &Range<usize>,
        d: &Dequant,
        c0: usize,
        lanes: usize,
    ) {
        let xp = x.as_ptr();
        let tail = lanes - 16 * (V - 1);
        let last: __mmask16 = if tail == 16 { 0xffff } else { (1u16 << tail) - 1 };
        let mask = |k: usize| if k + 1 == V { last } else { 0xffff };
        // Requantized words in progress, one per vector of the strip.
        let mut words = [_mm512_setzero_si512(); V];
        for o in rows.clone() {
            let mut sets = [[_mm512_setzero_si512(); V]; S];
            let (start, end) = (m.row_ptr[o] as usize, m.row_ptr[o + 1] as usize);
            // SAFETY: j < end <= packed.len() = group.len(); group < groups(), so the masked lanes
            // read, samples below c0 + lanes <= ld of that group, lie in `x`.
            let group = |j: usize, acc: &mut [__m512i; V]| unsafe {
                let wv = _mm512_set1_epi32(*m.packed.get_unchecked(j));
                let p = xp.add((*m.group.get_unchecked(j) as usize * ld + c0) * 4);
                for (k, acc) in acc.iter_mut().enumerate() {
                    let xv = _mm512_maskz_loadu_epi32(mask(k), p.add(64 * k) as *const i32);
                    *acc = _mm512_dpbusd_epi32(*acc, xv, wv);
                }
            };
            let mut j = start;
            while j + S <= end {
                for (s, acc) in sets.iter_mut().enumerate() {
                    group(j + s, acc);
                }
                j += S;
            }
            for j in j..end {
                group(j, &mut sets[0]);
            }
            for (k, word) in words.iter_mut().enumerate() {
                let sum = sets.iter().fold(_mm512_setzero_si512(), |sum, set| _mm512_add_epi32(sum, set[k]));
                // SAFETY: the masked lanes are samples below c0 + lanes <= ld.
                unsafe { emit16(out, d, o, rows.start, m.rows, ld, c0 + 16 * k, sum, mask(k), word) };
            }
        }
    }

    /// Batch 1: eight groups of a row at a time, gathered from the input vector with 8-lane
    /// gathers into two chains of 256-bit `vpdpbusd` (a 16-lane gather per 16 groups, the kernel
    /// before, measured slower per group, as the fp32 batch-1 kernel had found for its gathers).
    /// Each row's sum goes to a lane of a 16-row batch, dequantized (and requantized) together
    /// (`finish16`): row by row, that scalar work had been a third of the kernel's time.
    ///
    /// # Safety
    /// As `spmm_vnni`, with `ld == 1`; AVX-512VL too.
    #[target_feature(enable = "avx512f,avx512vl,avx512vnni")]
    pub unsafe fn spmv_vnni(m: &Q8Matrix, x: &[u8], out: &mut Output, rows: Range<usize>, d: &Dequant) {
        let base = x.as_ptr() as *const i32;
        let r0 = rows.start;
        let mut sums = [0i32; 16];
        let mut first = r0;
        for o in rows.clone() {
            let (start, end) = (m.row_ptr[o] as usize, m.row_ptr[o + 1] as usize);
            let (mut a, mut b) = (_mm256_setzero_si256(), _mm256_setzero_si256());
            let mut j = start;
            // SAFETY: every group read is below end <= group.len() = packed.len() (masked lanes
            // are not read); each group index is < groups(), so the gathered word lies in `x`.
            unsafe {
                let group = |j: usize, mask: __mmask8| {
                    let idx = _mm256_maskz_loadu_epi32(mask, m.group.as_ptr().add(j) as *const i32);
                    let xv = _mm256_mmask_i32gather_epi32::<4>(_mm256_setzero_si256(), mask, idx, base);
                    (xv, _mm256_maskz_loadu_epi32(mask, m.packed.as_ptr().add(j)))
                };
                while j + 16 <= end {
                    let ((x0, w0), (x1, w1)) = (group(j, 0xff), group(j + 8, 0xff));
                    a = _mm256_dpbusd_epi32(a, x0, w0);
                    b = _mm256_dpbusd_epi32(b, x1, w1);
                    j += 16;
                }
                while j < end {
                    let n = (end - j).min(8);
                    let (x0, w0) = group(j, ((1u16 << n) - 1) as __mmask8);
                    a = _mm256_dpbusd_epi32(a, x0, w0);
                    j += n;
                }
            }
            let sum = _mm256_add_epi32(a, b);
            let q = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256::<1>(sum));
            let q = _mm_add_epi32(q, _mm_shuffle_epi32::<0b01_00_11_10>(q));
            let q = _mm_add_epi32(q, _mm_shuffle_epi32::<0b10_11_00_01>(q));
            sums[o - first] = _mm_cvtsi128_si32(q);
            if o + 1 - first == 16 || o + 1 == rows.end {
                // SAFETY: rows first..=o lie in the checked row range.
                unsafe { finish16(m, out, d, r0, first..o + 1, &sums) };
                first = o + 1;
            }
        }
    }

    /// Writes rows `batch` (at most 16) of a one-sample output from their int32 sums: one
    /// vector for the dequantization and, for requantized output, the codes, which at one sample
    /// are consecutive bytes (row `o` at `o - r0`, `r0` a multiple of 4).
    ///
    /// # Safety
    /// AVX-512F; `batch` lies in the range `super::check` verified for `out`, which holds one
    /// sample.
    #[target_feature(enable = "avx512f")]
    unsafe fn finish16(m: &Q8Matrix, out: &mut Output, d: &Dequant, r0: usize, batch: Range<usize>, sums: &[i32; 16]) {
        let (o0, n) = (batch.start, batch.len());
        let mask: __mmask16 = if n == 16 { 0xffff } else { (1u16 << n) - 1 };
        // SAFETY: rows o0..o0 + n are below m.rows, the length of zero_corr, mult and bias.
        let v = unsafe {
            let acc = _mm512_sub_epi32(
                _mm512_loadu_si512(sums.as_ptr() as *const _),
                _mm512_maskz_loadu_epi32(mask, d.zero_corr.as_ptr().add(o0)),
            );
            let mult = _mm512_maskz_loadu_ps(mask, d.mult.as_ptr().add(o0));
            _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), mult, _mm512_maskz_loadu_ps(mask, d.bias.as_ptr().add(o0)))
        };
        let v = activate16(v, d);
        match out {
            // SAFETY: one sample, so row o is at o - r0, inside the output for rows below rows.end.
            Output::F32(y) => unsafe { _mm512_mask_storeu_ps(y.as_mut_ptr().add(o0 - r0), mask, v) },
            Output::Quantized { y, inv_scale, zero } => {
                let q = codes16(v, _mm512_set1_ps(*inv_scale), _mm512_set1_epi32(*zero as i32));
                // SAFETY: as for F32, one byte per row.
                unsafe { _mm512_mask_cvtepi32_storeu_epi8(y.as_mut_ptr().add(o0 - r0) as *mut _, mask, q) };
                if batch.end == m.rows {
                    (m.rows..m.rows.next_multiple_of(4)).for_each(|r| y[r - r0] = *zero);
                }
            }
            Output::F32Rows { .. } => {
                let mut vs = [0.0f32; 16];
                // SAFETY: `vs` holds 16 floats.
                unsafe { _mm512_storeu_ps(vs.as_mut_ptr(), v) };
                batch.clone().for_each(|o| out.put(o, r0, m.rows, 1, 0, vs[o - o0]));
            }
        }
    }

    /// Without VNNI: products widened to 16 bits (`vpmaddwd`, exact, no saturation), eight
    /// samples per strip; leftover samples use the scalar dot product.
    ///
    /// # Safety
    /// AVX2; sizes as `super::check` verifies; `group[j] < groups()`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn spmm_avx2(m: &Q8Matrix, x: &[u8], ld: usize, out: &mut Output, rows: Range<usize>, d: &Dequant) {
        let xp = x.as_ptr();
        let r0 = rows.start;
        let mut c0 = 0;
        while c0 + 8 <= ld {
            for o in rows.clone() {
                let (mut lo, mut hi) = (_mm256_setzero_si256(), _mm256_setzero_si256());
                for j in m.row_ptr[o] as usize..m.row_ptr[o + 1] as usize {
                    let w = m.packed[j].to_le_bytes();
                    let w16 = |b: u8| (b as i8 as i16 as u16) as u64;
                    let quad = w16(w[0]) | w16(w[1]) << 16 | w16(w[2]) << 32 | w16(w[3]) << 48;
                    let wv = _mm256_set1_epi64x(quad as i64);
                    // SAFETY: (group * ld + c0 + 7) * 4 + 3 < x.len().
                    unsafe {
                        let p = xp.add((m.group[j] as usize * ld + c0) * 4);
                        let a = _mm256_cvtepu8_epi16(_mm_loadu_si128(p as *const __m128i));
                        let b = _mm256_cvtepu8_epi16(_mm_loadu_si128(p.add(16) as *const __m128i));
                        lo = _mm256_add_epi32(lo, _mm256_madd_epi16(a, wv));
                        hi = _mm256_add_epi32(hi, _mm256_madd_epi16(b, wv));
                    }
                }
                // Pairwise sums give samples in the order 0 1 4 5 2 3 6 7; the permute restores it.
                let acc = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_hadd_epi32(lo, hi));
                let v = _mm256_cvtepi32_ps(_mm256_sub_epi32(acc, _mm256_set1_epi32(d.zero_corr[o])));
                let mut v = _mm256_fmadd_ps(v, _mm256_set1_ps(d.mult[o]), _mm256_set1_ps(d.bias[o]));
                if d.relu {
                    v = _mm256_max_ps(v, _mm256_setzero_ps());
                }
                if let Some((scale, zero)) = d.fake_quant {
                    // AVX2 machines only: through memory, one value at a time.
                    let mut vs = [0.0f32; 8];
                    // SAFETY: `vs` holds 8 floats.
                    unsafe { _mm256_storeu_ps(vs.as_mut_ptr(), v) };
                    vs.iter_mut().for_each(|v| *v = super::quantize_dequantize(*v, scale, zero));
                    // SAFETY: as above.
                    v = unsafe { _mm256_loadu_ps(vs.as_ptr()) };
                }
                match out.f32_rows(ld) {
                    // SAFETY: (o - r0) * stride + c0 + 7 < y.len() (`check`).
                    Some((y, stride)) => unsafe { _mm256_storeu_ps(y.as_mut_ptr().add((o - r0) * stride + c0), v) },
                    None => {
                        let mut vs = [0.0f32; 8];
                        // SAFETY: `vs` holds 8 floats.
                        unsafe { _mm256_storeu_ps(vs.as_mut_ptr(), v) };
                        vs.iter().enumerate().for_each(|(i, &v)| out.put(o, r0, m.rows, ld, c0 + i, v));
                    }
                }
            }
            c0 += 8;
        }
        for o in rows.clone() {
            for s in c0..ld {
                out.put(o, r0, m.rows, ld, s, d.apply(o, dot_ref(m, x, ld, o, s)));
            }
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use std::arch::x86_64::*;

    use super::quantize_dequantize;

    #[test]
    fn vector_fake_quantization_equals_the_division_bit_for_bit() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        let next = |v: f32, ulps: i32| f32::from_bits((v.to_bits() as i32 + ulps) as u32);
        for (scale, zero) in [(0.1f32, 0u8), (0.003, 128), (1.0 / 3.0, 7), (0.0078125, 255), (0.023456, 60), (7.9e-5, 3)] {
            // Half-way points between codes and a few units in the last place either side (where
            // the product and the quotient can round apart), zeros, and values that clamp.
            let mut values = vec![0.0, -0.0, 1e6, -1e6, 300.0 * scale, -300.0 * scale];
            for k in -140..140 {
                let half = (k as f32 + 0.5) * scale;
                values.extend((-4..=4).map(|u| next(half, u)));
                values.push(next((k as f32 + 0.5) / (1.0 / scale), 0));
            }
            for chunk in values.chunks(16) {
                let mut lanes = [0.0f32; 16];
                lanes[..chunk.len()].copy_from_slice(chunk);
                let mut got = [0.0f32; 16];
                // SAFETY: AVX-512F detected above; both arrays hold 16 floats.
                unsafe {
                    let v = super::x86::quantize_dequantize16(_mm512_loadu_ps(lanes.as_ptr()), scale, zero);
                    _mm512_storeu_ps(got.as_mut_ptr(), v);
                }
                for (x, g) in lanes.iter().zip(got) {
                    assert_eq!(g.to_bits(), quantize_dequantize(*x, scale, zero).to_bits(), "{x} at scale {scale}, zero {zero}");
                }
            }
        }
    }
}
