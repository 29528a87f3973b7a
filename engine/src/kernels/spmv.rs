//! Sparse (CSR) weights times one sample: the batch-1 path, `f32-spmv-gather`.
//!
//! For each output row `r` of `rows`: `y[r - rows.start] = act(bias[r] + sum_j val[j] * x[col[j]])`.
//! At batch 1 the weights are read once per inference, so the kernel is bound by the bytes of
//! values and indices; the vector variants gather 16 (AVX-512) or 8 (AVX2) inputs at a time.

use std::ops::Range;

use super::Isa;
use super::csr::Csr;

fn check(m: &Csr, bias: &[f32], x: &[f32], y: &[f32], rows: &Range<usize>) {
    assert!(rows.end <= m.rows && bias.len() == m.rows, "row range or bias does not fit the matrix");
    assert!(x.len() >= m.cols && y.len() >= rows.len(), "input or output too small");
}

/// The scalar twin.
pub fn spmv_ref(m: &Csr, bias: &[f32], x: &[f32], y: &mut [f32], rows: Range<usize>, relu: bool) {
    check(m, bias, x, y, &rows);
    for (i, r) in rows.enumerate() {
        let mut acc = bias[r];
        for j in m.row_ptr[r] as usize..m.row_ptr[r + 1] as usize {
            acc += m.val[j] * x[m.col[j] as usize];
        }
        y[i] = if relu { acc.max(0.0) } else { acc };
    }
}

/// Runs the variant for `isa` (which the CPU must support).
pub fn spmv(isa: Isa, m: &Csr, bias: &[f32], x: &[f32], y: &mut [f32], rows: Range<usize>, relu: bool) {
    check(m, bias, x, y, &rows);
    match isa {
        // SAFETY: sizes checked above, CSR indices validated at construction, ISA chosen from the CPU.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::spmv_avx512(m, bias, x, y, rows, relu) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::spmv_avx2(m, bias, x, y, rows, relu) },
        _ => spmv_ref(m, bias, x, y, rows, relu),
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::Csr;

    /// # Safety
    /// AVX-512F must be available; sizes as in `super::check`; `m.col[j] < m.cols <= x.len()`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn spmv_avx512(m: &Csr, bias: &[f32], x: &[f32], y: &mut [f32], rows: Range<usize>, relu: bool) {
        let r0 = rows.start;
        for r in rows {
            let (s, e) = (m.row_ptr[r] as usize, m.row_ptr[r + 1] as usize);
            let mut j = s;
            // SAFETY: j + 16 <= e <= nnz for full loads; the tail is masked; gathered indices < x.len().
            let sum = unsafe {
                let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
                while j + 32 <= e {
                    let i0 = _mm512_loadu_si512(m.col.as_ptr().add(j) as *const _);
                    let i1 = _mm512_loadu_si512(m.col.as_ptr().add(j + 16) as *const _);
                    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(m.val.as_ptr().add(j)), _mm512_i32gather_ps::<4>(i0, x.as_ptr()), a0);
                    a1 = _mm512_fmadd_ps(_mm512_loadu_ps(m.val.as_ptr().add(j + 16)), _mm512_i32gather_ps::<4>(i1, x.as_ptr()), a1);
                    j += 32;
                }
                while j < e {
                    let n = (e - j).min(16);
                    let mask: __mmask16 = if n == 16 { 0xffff } else { (1u16 << n) - 1 };
                    let idx = _mm512_maskz_loadu_epi32(mask, m.col.as_ptr().add(j) as *const i32);
                    let xs = _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), mask, idx, x.as_ptr());
                    a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, m.val.as_ptr().add(j)), xs, a0);
                    j += n;
                }
                _mm512_reduce_add_ps(_mm512_add_ps(a0, a1))
            };
            let acc = bias[r] + sum;
            y[r - r0] = if relu { acc.max(0.0) } else { acc };
        }
    }

    /// # Safety
    /// AVX2 and FMA must be available; sizes as in `super::check`; `m.col[j] < m.cols <= x.len()`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn spmv_avx2(m: &Csr, bias: &[f32], x: &[f32], y: &mut [f32], rows: Range<usize>, relu: bool) {
        let r0 = rows.start;
        for r in rows {
            let (s, e) = (m.row_ptr[r] as usize, m.row_ptr[r + 1] as usize);
            let mut j = s;
            // SAFETY: j + 8 <= e <= nnz for every load; gathered indices < x.len().
            let mut acc = unsafe {
                let mut a = _mm256_setzero_ps();
                while j + 8 <= e {
                    let idx = _mm256_loadu_si256(m.col.as_ptr().add(j) as *const __m256i);
                    a = _mm256_fmadd_ps(_mm256_loadu_ps(m.val.as_ptr().add(j)), _mm256_i32gather_ps::<4>(x.as_ptr(), idx), a);
                    j += 8;
                }
                let hi = _mm256_extractf128_ps::<1>(a);
                let q = _mm_add_ps(_mm256_castps256_ps128(a), hi);
                let q = _mm_add_ps(q, _mm_movehl_ps(q, q));
                let q = _mm_add_ss(q, _mm_shuffle_ps::<1>(q, q));
                _mm_cvtss_f32(q)
            };
            for k in j..e {
                acc += m.val[k] * x[m.col[k] as usize];
            }
            let acc = bias[r] + acc;
            y[r - r0] = if relu { acc.max(0.0) } else { acc };
        }
    }
}
