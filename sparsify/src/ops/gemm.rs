//! One-thread GEMM on strided `f32` views (the `gemm` crate), for the training operators'
//! kernels, which split their work over the team's threads themselves.

/// A matrix operand: its values and the distance between consecutive rows and columns, element
/// `(i, j)` at `values[i * row_stride + j * col_stride]`.
#[derive(Clone, Copy)]
pub struct Operand<'a> {
    pub values: &'a [f32],
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> Operand<'a> {
    /// A row-major matrix with `cols` columns.
    pub fn rows(values: &'a [f32], cols: usize) -> Operand<'a> {
        Operand { values, row_stride: cols, col_stride: 1 }
    }

    /// The transpose of a row-major matrix with `cols` columns.
    pub fn transposed(values: &'a [f32], cols: usize) -> Operand<'a> {
        Operand { values, row_stride: 1, col_stride: cols }
    }

    /// Whether a `rows x cols` view stays inside the values.
    fn fits(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.row_stride + (cols - 1) * self.col_stride < self.values.len()
    }
}

/// `dst (m x n, row-major) = [dst +] a (m x k) * b (k x n)`, on one thread.
pub fn matmul(dst: &mut [f32], accumulate: bool, a: Operand, b: Operand, [m, k, n]: [usize; 3]) {
    assert!(dst.len() >= m * n && a.fits(m, k) && b.fits(k, n), "matmul operands smaller than {m}x{k} by {k}x{n}");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    // SAFETY: the assertion above keeps every element the strides address inside its slice,
    // and `dst` is borrowed mutably, so it overlaps neither operand.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.values.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.values.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}
