//! Compressed sparse row weights for the unstructured sparse kernels: for each output row, the
//! non-zero values and their input (column) indices. Built once from a dense `[rows, cols]`
//! weight; every index is checked here, so the kernels can index without bounds checks.

/// A `[rows, cols]` matrix in CSR form.
#[derive(Debug, Clone, PartialEq)]
pub struct Csr {
    pub rows: usize,
    pub cols: usize,
    /// `row_ptr[r]..row_ptr[r + 1]` are row `r`'s entries; `rows + 1` long, non-decreasing.
    pub row_ptr: Vec<u32>,
    /// Column of each entry, `< cols`.
    pub col: Vec<u32>,
    pub val: Vec<f32>,
    /// The same column indices in 16 bits, kept for the batch-1 kernel (which streams every index
    /// once per inference, so 6 bytes per non-zero instead of 8 are 25% less traffic); added by
    /// `with_narrow_columns` where `cols <= 65536`.
    pub col16: Option<Vec<u16>>,
}

impl Csr {
    /// Packs the non-zeros of a dense row-major `[rows, cols]` matrix.
    pub fn from_dense(data: &[f32], rows: usize, cols: usize) -> Csr {
        assert_eq!(data.len(), rows * cols, "dense matrix size");
        assert!(cols <= i32::MAX as usize && data.len() / rows.max(1) <= i32::MAX as usize, "matrix too large for 32-bit indices");
        let mut row_ptr = Vec::with_capacity(rows + 1);
        let (mut col, mut val) = (Vec::new(), Vec::new());
        row_ptr.push(0);
        for r in 0..rows {
            for (c, &v) in data[r * cols..(r + 1) * cols].iter().enumerate() {
                if v != 0.0 {
                    col.push(c as u32);
                    val.push(v);
                }
            }
            row_ptr.push(val.len() as u32);
        }
        Csr { rows, cols, row_ptr, col, val, col16: None }
    }

    /// Adds the 16-bit copy of the column indices where every index fits.
    pub fn with_narrow_columns(mut self) -> Csr {
        if self.cols <= 1 << 16 {
            self.col16 = Some(self.col.iter().map(|&c| c as u16).collect());
        }
        self
    }

    pub fn nnz(&self) -> usize {
        self.val.len()
    }

    /// Bytes of the packed weights.
    pub fn bytes(&self) -> usize {
        4 * (self.row_ptr.len() + self.col.len() + self.val.len()) + 2 * self.col16.as_ref().map_or(0, Vec::len)
    }
}

/// Splits the rows described by `row_ptr` (`rows + 1` cumulative counts) into at most `parts`
/// contiguous non-empty ranges of about equal counts.
pub fn balanced_ranges(row_ptr: &[u32], parts: usize) -> Vec<std::ops::Range<usize>> {
    let rows = row_ptr.len().saturating_sub(1);
    let parts = parts.clamp(1, rows.max(1));
    let total = row_ptr.last().copied().unwrap_or(0).max(1) as usize;
    let mut ranges = Vec::with_capacity(parts);
    let mut start = 0;
    for p in 1..=parts {
        let target = (total * p).div_ceil(parts) as u32;
        let end = if p == parts { rows } else { row_ptr.partition_point(|&o| o < target).min(rows) }.max(start);
        if end > start {
            ranges.push(start..end);
        }
        start = end;
    }
    if ranges.is_empty() {
        ranges.push(0..rows);
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_and_balances() {
        let d = [0.0, 1.0, 0.0, 2.0, 0.0, 0.0, 3.0, 4.0, 5.0];
        let c = Csr::from_dense(&d, 3, 3);
        assert_eq!(c.row_ptr, vec![0, 1, 2, 5]);
        assert_eq!(c.col, vec![1, 0, 0, 1, 2]);
        let r = balanced_ranges(&c.row_ptr, 2);
        assert_eq!(r.first().unwrap().start, 0);
        assert_eq!(r.last().unwrap().end, 3);
        let total: usize = r.iter().map(|r| r.len()).sum();
        assert_eq!(total, 3);
        assert_eq!(balanced_ranges(&Csr::from_dense(&[], 0, 5).row_ptr, 4), vec![0..0]);
    }
}
