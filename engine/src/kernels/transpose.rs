//! Transposition of a `[rows, cols]` block of f32 (rows `src_ld` apart) into `[cols, rows]`
//! (rows `dst_ld` apart): how a batch of samples (sample-major, as callers pass it) becomes a
//! feature-major tile. For a wide input layer this copy costs as much as the layer itself, so it
//! has a vector variant: 8 x 8 blocks transposed in AVX registers.

use super::Isa;

fn check(src: &[f32], rows: usize, cols: usize, src_ld: usize, dst: &[f32], dst_ld: usize) {
    assert!(cols <= src_ld && rows <= dst_ld, "leading dimensions too small");
    assert!(rows == 0 || src.len() >= (rows - 1) * src_ld + cols, "source too small");
    assert!(cols == 0 || dst.len() >= (cols - 1) * dst_ld + rows, "destination too small");
}

/// The scalar twin: `dst[c * dst_ld + r] = src[r * src_ld + c]`.
pub fn transpose_ref(src: &[f32], rows: usize, cols: usize, src_ld: usize, dst: &mut [f32], dst_ld: usize) {
    check(src, rows, cols, src_ld, dst, dst_ld);
    for r in 0..rows {
        for c in 0..cols {
            dst[c * dst_ld + r] = src[r * src_ld + c];
        }
    }
}

/// Transposes with the variant for `isa`.
pub fn transpose(isa: Isa, src: &[f32], rows: usize, cols: usize, src_ld: usize, dst: &mut [f32], dst_ld: usize) {
    check(src, rows, cols, src_ld, dst, dst_ld);
    // One sample into a one-column tile (or one feature of contiguous samples): a copy.
    if (rows == 1 && dst_ld == 1) || (cols == 1 && src_ld == 1) {
        let n = rows * cols;
        return dst[..n].copy_from_slice(&src[..n]);
    }
    match isa {
        // SAFETY: sizes checked above; AVX is implied by both levels.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 => unsafe { x86::transpose_avx(src, rows, cols, src_ld, dst, dst_ld) },
        _ => transpose_ref(src, rows, cols, src_ld, dst, dst_ld),
    }
}

/// Output rows `c0..` of block `o` of a `Swap` of one sample `x` (`[outer, rows, cols, inner]`
/// into `[outer, cols, rows, inner]`), as many as `y` holds (`rows * inner` elements each): runs
/// of `inner` copied whole, or a transpose where `inner` is 1.
pub fn swap_axes(isa: Isa, s: crate::layout::Swap, x: &[f32], o: usize, c0: usize, y: &mut [f32]) {
    let crate::layout::Swap { rows, cols, inner, .. } = s;
    let block = &x[o * rows * cols * inner..(o + 1) * rows * cols * inner];
    let n = y.len() / (rows * inner);
    assert!(c0 + n <= cols && y.len() == n * rows * inner, "output rows {c0}.. of {n} outside the block");
    if inner == 1 {
        return transpose(isa, &block[c0..], rows, n, cols, y, rows);
    }
    for (c, out) in (c0..).zip(y.chunks_exact_mut(rows * inner)) {
        for (r, run) in out.chunks_exact_mut(inner).enumerate() {
            run.copy_from_slice(&block[(r * cols + c) * inner..][..inner]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX; sizes as `super::check` verifies.
    #[target_feature(enable = "avx")]
    pub unsafe fn transpose_avx(src: &[f32], rows: usize, cols: usize, src_ld: usize, dst: &mut [f32], dst_ld: usize) {
        let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr());
        let (full_r, full_c) = (rows / 8 * 8, cols / 8 * 8);
        for c0 in (0..full_c).step_by(8) {
            for r0 in (0..full_r).step_by(8) {
                // SAFETY: r0 + 7 < rows and c0 + 7 < cols, inside both buffers.
                unsafe {
                    let ld = |i: usize| _mm256_loadu_ps(sp.add((r0 + i) * src_ld + c0));
                    let (a0, a1, a2, a3, a4, a5, a6, a7) = (ld(0), ld(1), ld(2), ld(3), ld(4), ld(5), ld(6), ld(7));
                    let (t0, t1) = (_mm256_unpacklo_ps(a0, a1), _mm256_unpackhi_ps(a0, a1));
                    let (t2, t3) = (_mm256_unpacklo_ps(a2, a3), _mm256_unpackhi_ps(a2, a3));
                    let (t4, t5) = (_mm256_unpacklo_ps(a4, a5), _mm256_unpackhi_ps(a4, a5));
                    let (t6, t7) = (_mm256_unpacklo_ps(a6, a7), _mm256_unpackhi_ps(a6, a7));
                    let u0 = _mm256_shuffle_ps::<0b01_00_01_00>(t0, t2);
                    let u1 = _mm256_shuffle_ps::<0b11_10_11_10>(t0, t2);
                    let u2 = _mm256_shuffle_ps::<0b01_00_01_00>(t1, t3);
                    let u3 = _mm256_shuffle_ps::<0b11_10_11_10>(t1, t3);
                    let u4 = _mm256_shuffle_ps::<0b01_00_01_00>(t4, t6);
                    let u5 = _mm256_shuffle_ps::<0b11_10_11_10>(t4, t6);
                    let u6 = _mm256_shuffle_ps::<0b01_00_01_00>(t5, t7);
                    let u7 = _mm256_shuffle_ps::<0b11_10_11_10>(t5, t7);
                    let st = |i: usize, v: __m256| _mm256_storeu_ps(dp.add((c0 + i) * dst_ld + r0), v);
                    st(0, _mm256_permute2f128_ps::<0x20>(u0, u4));
                    st(1, _mm256_permute2f128_ps::<0x20>(u1, u5));
                    st(2, _mm256_permute2f128_ps::<0x20>(u2, u6));
                    st(3, _mm256_permute2f128_ps::<0x20>(u3, u7));
                    st(4, _mm256_permute2f128_ps::<0x31>(u0, u4));
                    st(5, _mm256_permute2f128_ps::<0x31>(u1, u5));
                    st(6, _mm256_permute2f128_ps::<0x31>(u2, u6));
                    st(7, _mm256_permute2f128_ps::<0x31>(u3, u7));
                }
            }
        }
        // The ragged right and bottom edges.
        for r in 0..rows {
            let c_start = if r < full_r { full_c } else { 0 };
            for c in c_start..cols {
                dst[c * dst_ld + r] = src[r * src_ld + c];
            }
        }
    }
}
