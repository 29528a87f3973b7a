//! Dense weights times a tile of activations, through the `gemm` crate (which picks its own
//! AVX2/AVX-512 micro-kernels at run time), with a scalar twin.
//!
//! `y[r * w + s] = act(bias[r] + sum_c wt[r * cols + c] * x[c * w + s])` for `r < rows`, `s < w`:
//! `wt` is `[rows, cols]` row-major, `x` is `[cols, w]`, `y` is `[rows, w]`.

use super::Isa;

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

/// Dense layer on a tile with up to `threads` threads (1 = the calling thread only).
pub fn dense(isa: Isa, wt: &[f32], rows: usize, cols: usize, bias: &[f32], x: &[f32], w: usize, y: &mut [f32], relu: bool, threads: usize) {
    check(wt, rows, cols, bias, x, w, y);
    if isa == Isa::Scalar {
        return dense_ref(wt, rows, cols, bias, x, w, y, relu);
    }
    for (r, b) in bias.iter().enumerate() {
        y[r * w..(r + 1) * w].fill(*b);
    }
    if cols > 0 && w > 0 && rows > 0 {
        let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
        // SAFETY: dst is rows x w with row stride w, lhs rows x cols with row stride cols, rhs cols x w
        // with row stride w; all three sizes were checked above and the slices do not overlap.
        unsafe {
            gemm::gemm(
                rows,
                w,
                cols,
                y.as_mut_ptr(),
                1,
                w as isize,
                true,
                wt.as_ptr(),
                1,
                cols as isize,
                x.as_ptr(),
                1,
                w as isize,
                1.0f32,
                1.0f32,
                false,
                false,
                false,
                par,
            );
        }
    }
    if relu {
        y[..rows * w].iter_mut().for_each(|v| *v = v.max(0.0));
    }
}
