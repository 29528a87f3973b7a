//! Sparse (CSR) weights times one sample: the batch-1 path, `f32-spmv-gather`.
//!
//! For each output row `r` of `rows`: `y[r - rows.start] = act(bias[r] + sum_j val[j] * x[col[j]])`.
//! At batch 1 the weights are read once per inference, so the kernel is bound by the bytes of
//! values and indices and by the gathers: 16-bit column indices where they fit (`Csr::col16`),
//! and 8-lane gathers on AVX-512 machines too, because 16-lane `vgatherdps` measured 1.2-1.3x slower
//! per input on long rows and 2.6x on short ones on this project's machine (BENCHMARKS.md).

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

/// Runs the variant for `isa` (which the CPU must support), on the 16-bit column indices where
/// the matrix has them.
pub fn spmv(isa: Isa, m: &Csr, bias: &[f32], x: &[f32], y: &mut [f32], rows: Range<usize>, relu: bool) {
    check(m, bias, x, y, &rows);
    if let Some(c) = &m.col16 {
        assert_eq!(c.len(), m.col.len(), "16-bit column indices do not match the matrix");
    }
    // SAFETY: sizes checked above, CSR indices validated at construction (the 16-bit copy holds
    // the same values), ISA chosen from the CPU.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        use x86::*;
        let (p, v) = (&m.row_ptr[..], &m.val[..]);
        match (isa, &m.col16) {
            (Isa::Avx2 | Isa::Avx512, Some(c)) => return spmv_avx2_u16(p, c, v, bias, x, y, rows, relu),
            (Isa::Avx2 | Isa::Avx512, None) => return spmv_avx2_u32(p, &m.col, v, bias, x, y, rows, relu),
            (Isa::Scalar, _) => {}
        }
    }
    spmv_ref(m, bias, x, y, rows, relu)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// A batch-1 kernel for one index width; `$load` turns 8 indices at `$p` into 32-bit lanes.
    /// Rows gather 16 inputs per step into two accumulators, then 8, then finish in scalar code.
    macro_rules! spmv_avx2 {
        ($name:ident, $ix:ty, |$p:ident| $load:expr) => {
            /// # Safety
            /// AVX2 and FMA must be available; `row_ptr` has `rows.end + 1` entries bounding `col`
            /// and `val`; every `col[j] < x.len()`; `bias.len() >= rows.end`; `y.len() >= rows.len()`.
            #[target_feature(enable = "avx2,fma")]
            pub unsafe fn $name(
                row_ptr: &[u32],
                col: &[$ix],
                val: &[f32],
                bias: &[f32],
                x: &[f32],
                y: &mut [f32],
                rows: Range<usize>,
                relu: bool,
            ) {
                let r0 = rows.start;
                for r in rows {
                    let (s, e) = (row_ptr[r] as usize, row_ptr[r + 1] as usize);
                    let mut j = s;
                    // SAFETY: j + 8 <= e <= col.len() = val.len() for every load; gathered indices < x.len().
                    let mut acc = unsafe {
                        let idx = |j: usize| {
                            let $p = col.as_ptr().add(j);
                            $load
                        };
                        let (mut a, mut b) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                        while j + 16 <= e {
                            let (i0, i1) = (idx(j), idx(j + 8));
                            a = _mm256_fmadd_ps(_mm256_loadu_ps(val.as_ptr().add(j)), _mm256_i32gather_ps::<4>(x.as_ptr(), i0), a);
                            b = _mm256_fmadd_ps(_mm256_loadu_ps(val.as_ptr().add(j + 8)), _mm256_i32gather_ps::<4>(x.as_ptr(), i1), b);
                            j += 16;
                        }
                        if j + 8 <= e {
                            a = _mm256_fmadd_ps(_mm256_loadu_ps(val.as_ptr().add(j)), _mm256_i32gather_ps::<4>(x.as_ptr(), idx(j)), a);
                            j += 8;
                        }
                        let a = _mm256_add_ps(a, b);
                        let hi = _mm256_extractf128_ps::<1>(a);
                        let q = _mm_add_ps(_mm256_castps256_ps128(a), hi);
                        let q = _mm_add_ps(q, _mm_movehl_ps(q, q));
                        let q = _mm_add_ss(q, _mm_shuffle_ps::<1>(q, q));
                        _mm_cvtss_f32(q)
                    };
                    for k in j..e {
                        acc += val[k] * x[col[k] as usize];
                    }
                    let acc = bias[r] + acc;
                    y[r - r0] = if relu { acc.max(0.0) } else { acc };
                }
            }
        };
    }

    spmv_avx2!(spmv_avx2_u32, u32, |p| _mm256_loadu_si256(p as *const __m256i));
    spmv_avx2!(spmv_avx2_u16, u16, |p| _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i)));
}
