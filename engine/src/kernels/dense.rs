//! Dense weights times a tile of activations, through the `gemm` crate (which picks its own
//! AVX2/AVX-512 micro-kernels at run time), with a scalar twin. One sample (`w == 1`) is a
//! matrix-vector product, bound by reading the weights once: our own AVX-512/AVX2 dot products,
//! since `gemm` packs the weights on every call.
//!
//! `y[r * w + s] = act(bias[r] + sum_c wt[r * cols + c] * x[c * w + s])` for `r < rows`, `s < w`:
//! `wt` is `[rows, cols]` row-major, `x` is `[cols, w]`, `y` is `[rows, w]`.

use super::spmm::Ld;
use super::{Isa, SharedMut};

fn check(wt: &[f32], rows: usize, cols: usize, bias: &[f32], x: &[f32], w: usize, y: &[f32]) {
    assert!(wt.len() == rows * cols && bias.len() == rows, "weight or bias size");
    assert!(x.len() >= cols * w && y.len() >= rows * w, "input or output tile size");
}

/// The scalar twin.
pub fn dense_ref(wt: &[f32], rows: usize, cols: usize, bias: &[f32], x: &[f32], w: usize, y: &mut [f32], relu: bool) {
    check(wt, rows, cols, bias, x, w, y);
    for r in 0..rows {
        for s in 0..w {
            let mut acc = bias[r];
            for c in 0..cols {
                acc += wt[r * cols + c] * x[c * w + s];
            }
            y[r * w + s] = if relu { acc.max(0.0) } else { acc };
        }
    }
}

/// Dense layer on a tile, on the calling thread.
pub fn dense(isa: Isa, wt: &[f32], rows: usize, cols: usize, bias: &[f32], x: &[f32], w: usize, y: &mut [f32], relu: bool) {
    check(wt, rows, cols, bias, x, w, y);
    if isa == Isa::Scalar {
        return dense_ref(wt, rows, cols, bias, x, w, y, relu);
    }
    #[cfg(target_arch = "x86_64")]
    if w == 1 {
        for (r, out) in y[..rows].iter_mut().enumerate() {
            let row = &wt[r * cols..(r + 1) * cols];
            // SAFETY: `row` and `x` hold `cols` values each (checked above); the ISA was chosen
            // from what the CPU reports.
            let dot = unsafe { if isa == Isa::Avx512 { x86::dot_avx512(row, &x[..cols]) } else { x86::dot_avx2(row, &x[..cols]) } };
            let v = dot + bias[r];
            *out = if relu { v.max(0.0) } else { v };
        }
        return;
    }
    dense_strided(isa, wt, rows, cols, bias, x, w, y, relu, Ld::packed(w))
}

/// `y += a b` through the `gemm` crate: `a` `[m, k]`, `b` `[k, n]`, `y` `[m, n]`, each with its
/// row and column strides in elements (`(k, 1)` for a row-major `a`).
///
/// # Safety
/// Each matrix lies inside its allocation with those strides, and `y` overlaps neither other.
unsafe fn gemm_add(
    [m, k, n]: [usize; 3],
    (a, sa): (*const f32, (usize, usize)),
    (b, sb): (*const f32, (usize, usize)),
    (y, sy): (*mut f32, (usize, usize)),
    par: gemm::Parallelism,
) {
    let [sa, sb, sy] = [sa, sb, sy].map(|(r, c)| (r as isize, c as isize));
    // SAFETY: the caller's contract.
    unsafe { gemm::gemm(m, n, k, y, sy.1, sy.0, true, a, sa.1, sa.0, b, sb.1, sb.0, 1.0, 1.0, false, false, false, par) }
}

/// `y = a b` for one sample's matrices `a` `[m, k]`, `b` `[k, n]`, `y` `[m, n]` (attention's
/// products), each given with its row and column strides in elements (`(k, 1)` for a row-major
/// `a`, `(1, m)` for one stored as `[k, m]`), through the `gemm` crate on the calling thread.
pub fn matmul_strided(
    [m, k, n]: [usize; 3],
    (a, sa): (&[f32], (usize, usize)),
    (b, sb): (&[f32], (usize, usize)),
    (y, sy): (&mut [f32], (usize, usize)),
) {
    // The last element of a `rows x cols` matrix, plus one (0 for an empty one).
    let end = |rows: usize, cols: usize, (rs, cs): (usize, usize)| if rows * cols == 0 { 0 } else { (rows - 1) * rs + (cols - 1) * cs + 1 };
    assert!(
        a.len() >= end(m, k, sa) && b.len() >= end(k, n, sb) && y.len() >= end(m, n, sy) && y.len() >= m * n,
        "matrices smaller than {m}x{k}x{n} with these strides"
    );
    y[..m * n].fill(0.0);
    if m * n * k == 0 {
        return;
    }
    // SAFETY: checked above: every element each matrix's strides reach lies inside its slice, and
    // `y` is borrowed mutably.
    unsafe { gemm_add([m, k, n], (a.as_ptr(), sa), (b.as_ptr(), sb), (y.as_mut_ptr(), sy), gemm::Parallelism::None) }
}

/// `dense` on `w` columns of rows that lie `ld.x` apart in `x` and `ld.y` apart in `y` (see
/// `spmm::Ld`), on the calling thread (one column in plain loops: `dense` has dot products).
pub fn dense_strided(isa: Isa, wt: &[f32], rows: usize, cols: usize, bias: &[f32], x: &[f32], w: usize, y: &mut [f32], relu: bool, ld: Ld) {
    let span = |n: usize, ld: usize| if n == 0 { 0 } else { (n - 1) * ld + w };
    assert!(wt.len() == rows * cols && bias.len() == rows && ld.x >= w && ld.y >= w, "weight, bias or leading dimension");
    assert!(x.len() >= span(cols, ld.x) && y.len() >= span(rows, ld.y), "input or output tile size");
    for (r, b) in bias.iter().enumerate() {
        y[r * ld.y..r * ld.y + w].fill(*b);
    }
    if isa == Isa::Scalar || w == 1 {
        for r in 0..rows {
            for s in 0..w {
                y[r * ld.y + s] += (0..cols).map(|c| wt[r * cols + c] * x[c * ld.x + s]).sum::<f32>();
            }
        }
    } else if cols > 0 && rows > 0 {
        // SAFETY: dst is rows x w with row stride ld.y, rhs cols x w with row stride ld.x, lhs rows x
        // cols; the spans were checked above and `x` and `y` are distinct slices.
        unsafe {
            let (a, b, y) = ((wt.as_ptr(), (cols, 1)), (x.as_ptr(), (ld.x, 1)), (y.as_mut_ptr(), (ld.y, 1)));
            gemm_add([rows, cols, w], a, b, y, gemm::Parallelism::None);
        }
    }
    if relu {
        for r in 0..rows {
            y[r * ld.y..r * ld.y + w].iter_mut().for_each(|v| *v = v.max(0.0));
        }
    }
}

/// `dense` with the tile's columns cut into `parts` ranges (whole vectors each), `run` calling
/// the job for every part index `0..parts`, typically on a thread team. For layers with few rows
/// and many columns (a convolution's im2col at batch 1: 64 rows, 12544 columns for ResNet's
/// stem), where slabs of rows would leave each GEMM too few rows to run at speed.
pub fn dense_by_columns(
    isa: Isa,
    wt: &[f32],
    rows: usize,
    cols: usize,
    bias: &[f32],
    x: &[f32],
    w: usize,
    y: &mut [f32],
    relu: bool,
    parts: usize,
    run: impl FnOnce(&(dyn Fn(usize) + Sync)),
) {
    check(wt, rows, cols, bias, x, w, y);
    let per_part = w.div_ceil(parts.max(1)).next_multiple_of(16);
    // The parts write their own columns of `y`.
    let out = SharedMut::new(y);
    let job = |p: usize| {
        let span = (p * per_part).min(w)..((p + 1) * per_part).min(w);
        if span.is_empty() {
            return;
        }
        for (r, b) in bias.iter().enumerate() {
            // SAFETY: row r's columns `span` lie inside `y` (rows x w, checked above), and each part
            // touches only its own columns, so no two jobs write the same element.
            unsafe { std::slice::from_raw_parts_mut(out.at(r * w + span.start), span.len()) }.fill(*b);
        }
        if isa != Isa::Scalar && cols > 0 && rows > 0 {
            // SAFETY: as in `dense`, on the column range `span` of dst and rhs (row stride w).
            unsafe {
                let (a, b, y) = ((wt.as_ptr(), (cols, 1)), (x.as_ptr().add(span.start), (w, 1)), (out.at(span.start), (w, 1)));
                gemm_add([rows, cols, span.len()], a, b, y, gemm::Parallelism::None);
            }
        }
        for r in 0..rows {
            // SAFETY: as above.
            let y = unsafe { std::slice::from_raw_parts_mut(out.at(r * w + span.start), span.len()) };
            if isa == Isa::Scalar {
                for (s, v) in span.clone().zip(y.iter_mut()) {
                    *v += (0..cols).map(|c| wt[r * cols + c] * x[c * w + s]).sum::<f32>();
                }
            }
            if relu {
                y.iter_mut().for_each(|v| *v = v.max(0.0));
            }
        }
    };
    run(&job);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// `sum a[i] * b[i]`, four 16-lane accumulators.
    ///
    /// # Safety
    /// AVX-512F; `a.len() == b.len()`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (ap, bp) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        while i + 64 <= n {
            for (k, a) in acc.iter_mut().enumerate() {
                // SAFETY: i + 16k + 15 < n.
                unsafe { *a = _mm512_fmadd_ps(_mm512_loadu_ps(ap.add(i + 16 * k)), _mm512_loadu_ps(bp.add(i + 16 * k)), *a) };
            }
            i += 64;
        }
        while i < n {
            let m = (n - i).min(16);
            let mask: __mmask16 = if m == 16 { 0xffff } else { (1u16 << m) - 1 };
            // SAFETY: masked lanes stay below n.
            unsafe { acc[0] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, ap.add(i)), _mm512_maskz_loadu_ps(mask, bp.add(i)), acc[0]) };
            i += m;
        }
        _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])))
    }

    /// `sum a[i] * b[i]`, four 8-lane accumulators, scalar tail.
    ///
    /// # Safety
    /// AVX2 and FMA; `a.len() == b.len()`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (ap, bp) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (k, a) in acc.iter_mut().enumerate() {
                // SAFETY: i + 8k + 7 < n.
                unsafe { *a = _mm256_fmadd_ps(_mm256_loadu_ps(ap.add(i + 8 * k)), _mm256_loadu_ps(bp.add(i + 8 * k)), *a) };
            }
            i += 32;
        }
        let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut lanes = [0.0f32; 8];
        // SAFETY: `lanes` holds 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
        lanes.iter().sum::<f32>() + a[i..n].iter().zip(&b[i..n]).map(|(x, y)| x * y).sum::<f32>()
    }
}
