//! Weights in blocks of 4 output rows sharing their column indices (BCSR 4x1),
//! `f32-spmm-bcsr4x1`: each activation row loaded from cache feeds 4 output rows, so the kernel
//! does 16 FMAs per 4 vector loads instead of 4 per 4. Models pruned with `mask = "4x1"` fit it
//! exactly; unstructured weights fit it with zero fill, and dense weights are the case where
//! every column is present. The compiler keeps it only where it times fastest.

use std::ops::Range;

use super::Isa;

/// Rows per block.
pub const BR: usize = 4;

/// A `[rows, cols]` matrix in blocks of 4 rows; the last block is padded with zero rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Bcsr {
    pub rows: usize,
    pub cols: usize,
    /// `blk_ptr[b]..blk_ptr[b + 1]` are block row `b`'s entries.
    pub blk_ptr: Vec<u32>,
    /// Column of each entry, `< cols`.
    pub col: Vec<u32>,
    /// `BR` values per entry: rows `4b..4b + 4` at that column.
    pub val: Vec<f32>,
}

impl Bcsr {
    /// Packs a dense row-major `[rows, cols]` matrix: an entry for every column where any of the
    /// block's 4 rows is non-zero.
    pub fn from_dense(data: &[f32], rows: usize, cols: usize) -> Bcsr {
        assert_eq!(data.len(), rows * cols, "dense matrix size");
        let blocks = rows.div_ceil(BR);
        let (mut blk_ptr, mut col, mut val) = (vec![0u32], Vec::new(), Vec::new());
        for b in 0..blocks {
            for c in 0..cols {
                let vals: [f32; BR] = std::array::from_fn(|i| if b * BR + i < rows { data[(b * BR + i) * cols + c] } else { 0.0 });
                if vals.iter().any(|v| *v != 0.0) {
                    col.push(c as u32);
                    val.extend_from_slice(&vals);
                }
            }
            blk_ptr.push(col.len() as u32);
        }
        Bcsr { rows, cols, blk_ptr, col, val }
    }

    pub fn blocks(&self) -> usize {
        self.blk_ptr.len() - 1
    }

    /// Stored values over non-zeros: 1 when blocks are full, up to 4 for scattered weights.
    pub fn fill(&self, nnz: usize) -> f64 {
        self.val.len() as f64 / nnz.max(1) as f64
    }

    pub fn bytes(&self) -> usize {
        4 * (self.blk_ptr.len() + self.col.len() + self.val.len())
    }
}

fn check(m: &Bcsr, bias: &[f32], x: &[f32], w: usize, y: &[f32], blocks: &Range<usize>) {
    assert!(blocks.end <= m.blocks() && bias.len() == m.rows, "block range or bias does not fit the matrix");
    assert!(x.len() >= m.cols * w, "input tile too small");
    let rows = (blocks.end * BR).min(m.rows) - (blocks.start * BR).min(m.rows);
    assert!(y.len() >= rows * w, "output tile too small");
}

/// The scalar twin. Output rows of `blocks` (clipped to `rows`) are written to `y` as
/// `[rows in range, w]`.
pub fn spmm_bcsr_ref(m: &Bcsr, bias: &[f32], x: &[f32], w: usize, y: &mut [f32], blocks: Range<usize>, relu: bool) {
    check(m, bias, x, w, y, &blocks);
    let r0 = blocks.start * BR;
    for b in blocks {
        for i in 0..BR {
            let r = b * BR + i;
            if r >= m.rows {
                break;
            }
            for s in 0..w {
                let mut acc = bias[r];
                for j in m.blk_ptr[b] as usize..m.blk_ptr[b + 1] as usize {
                    acc += m.val[j * BR + i] * x[m.col[j] as usize * w + s];
                }
                y[(r - r0) * w + s] = if relu { acc.max(0.0) } else { acc };
            }
        }
    }
}

/// Runs the variant for `isa` on block rows `blocks`.
pub fn spmm_bcsr(isa: Isa, m: &Bcsr, bias: &[f32], x: &[f32], w: usize, y: &mut [f32], blocks: Range<usize>, relu: bool) {
    check(m, bias, x, w, y, &blocks);
    match isa {
        // SAFETY: sizes checked above; columns validated at construction; ISA chosen from the CPU.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::spmm_bcsr_avx512(m, bias, x, w, y, blocks, relu) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::spmm_bcsr_avx2(m, bias, x, w, y, blocks, relu) },
        _ => spmm_bcsr_ref(m, bias, x, w, y, blocks, relu),
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::{BR, Bcsr};

    /// Strips of 4 vectors of `$lanes` sample columns from `c0` on: 4 rows x 4 vectors = 16
    /// accumulators per block, each column's activations loaded once for the block's 4 rows.
    /// Expands inside each variant, so its intrinsics compile under that variant's features.
    macro_rules! strips {
        ($m:ident, $bias_of:ident, $xp:ident, $yp:ident, $w:ident, $blocks:ident, $r0:ident, $relu:ident, $c0:ident,
         $lanes:literal, $zero:expr, $set1:ident, $fmadd:ident, $loadu:ident, $storeu:ident, $max:ident) => {
            while $c0 + 4 * $lanes <= $w {
                for b in $blocks.clone() {
                    let mut acc = [[$zero; 4]; BR];
                    for (i, row) in acc.iter_mut().enumerate() {
                        *row = [$set1($bias_of(b * BR + i)); 4];
                    }
                    // SAFETY (whole block): entries j < nnz blocks by the BCSR invariants;
                    // col * w + c0 + 4 * lanes - 1 < cols * w <= x.len().
                    unsafe {
                        for j in *$m.blk_ptr.get_unchecked(b) as usize..*$m.blk_ptr.get_unchecked(b + 1) as usize {
                            let p = $xp.add(*$m.col.get_unchecked(j) as usize * $w + $c0);
                            let xs = [$loadu(p), $loadu(p.add($lanes)), $loadu(p.add(2 * $lanes)), $loadu(p.add(3 * $lanes))];
                            let v = $m.val.as_ptr().add(j * BR);
                            for (i, row) in acc.iter_mut().enumerate() {
                                let vi = $set1(*v.add(i));
                                for (a, xv) in row.iter_mut().zip(xs) {
                                    *a = $fmadd(vi, xv, *a);
                                }
                            }
                        }
                    }
                    for (i, row) in acc.iter().enumerate() {
                        let r = b * BR + i;
                        if r >= $m.rows {
                            break;
                        }
                        // SAFETY: (r - r0) * w + c0 + 4 * lanes - 1 < rows in range * w <= y.len().
                        unsafe {
                            let q = $yp.add((r - $r0) * $w + $c0);
                            for (k, a) in row.iter().enumerate() {
                                $storeu(q.add($lanes * k), if $relu { $max(*a, $zero) } else { *a });
                            }
                        }
                    }
                }
                $c0 += 4 * $lanes;
            }
        };
    }

    /// # Safety
    /// AVX-512F must be available; sizes as checked by `super::check`; `m.col[j] < m.cols`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn spmm_bcsr_avx512(m: &Bcsr, bias: &[f32], x: &[f32], w: usize, y: &mut [f32], blocks: Range<usize>, relu: bool) {
        let (xp, yp) = (x.as_ptr(), y.as_mut_ptr());
        let zero = _mm512_setzero_ps();
        let r0 = blocks.start * BR;
        // Bias of a row, 0 for the padding rows of the last block.
        let bias_of = |r: usize| if r < m.rows { bias[r] } else { 0.0 };
        let mut c0 = 0;
        // LOOP 1: strips of 64 sample columns.
        strips!(
            m,
            bias_of,
            xp,
            yp,
            w,
            blocks,
            r0,
            relu,
            c0,
            16,
            zero,
            _mm512_set1_ps,
            _mm512_fmadd_ps,
            _mm512_loadu_ps,
            _mm512_storeu_ps,
            _mm512_max_ps
        );
        // LOOP 2: the remaining columns, 16 at a time, the last strip masked.
        while c0 < w {
            let n = (w - c0).min(16);
            let mask: __mmask16 = if n == 16 { 0xffff } else { (1u16 << n) - 1 };
            for b in blocks.clone() {
                let mut acc: [__m512; BR] = std::array::from_fn(|i| _mm512_set1_ps(bias_of(b * BR + i)));
                // SAFETY: as above; masked lanes are neither read nor written.
                unsafe {
                    for j in *m.blk_ptr.get_unchecked(b) as usize..*m.blk_ptr.get_unchecked(b + 1) as usize {
                        let xv = _mm512_maskz_loadu_ps(mask, xp.add(*m.col.get_unchecked(j) as usize * w + c0));
                        let v = m.val.as_ptr().add(j * BR);
                        for (i, a) in acc.iter_mut().enumerate() {
                            *a = _mm512_fmadd_ps(_mm512_set1_ps(*v.add(i)), xv, *a);
                        }
                    }
                    for (i, a) in acc.iter().enumerate() {
                        let r = b * BR + i;
                        if r >= m.rows {
                            break;
                        }
                        _mm512_mask_storeu_ps(yp.add((r - r0) * w + c0), mask, if relu { _mm512_max_ps(*a, zero) } else { *a });
                    }
                }
            }
            c0 += n;
        }
    }

    /// The AVX2 variant: strips of 32 sample columns (4 rows x 4 vectors of 8), then 8 at a
    /// time, then the last columns one by one.
    ///
    /// # Safety
    /// AVX2 and FMA must be available; sizes as checked by `super::check`; `m.col[j] < m.cols`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn spmm_bcsr_avx2(m: &Bcsr, bias: &[f32], x: &[f32], w: usize, y: &mut [f32], blocks: Range<usize>, relu: bool) {
        let (xp, yp) = (x.as_ptr(), y.as_mut_ptr());
        let zero = _mm256_setzero_ps();
        let r0 = blocks.start * BR;
        let bias_of = |r: usize| if r < m.rows { bias[r] } else { 0.0 };
        let mut c0 = 0;
        // LOOP 1: strips of 32 sample columns.
        strips!(
            m,
            bias_of,
            xp,
            yp,
            w,
            blocks,
            r0,
            relu,
            c0,
            8,
            zero,
            _mm256_set1_ps,
            _mm256_fmadd_ps,
            _mm256_loadu_ps,
            _mm256_storeu_ps,
            _mm256_max_ps
        );
        // LOOP 2: 8 columns at a time.
        while c0 + 8 <= w {
            for b in blocks.clone() {
                let mut acc: [__m256; BR] = std::array::from_fn(|i| _mm256_set1_ps(bias_of(b * BR + i)));
                // SAFETY: as above, with 8-column strips.
                unsafe {
                    for j in *m.blk_ptr.get_unchecked(b) as usize..*m.blk_ptr.get_unchecked(b + 1) as usize {
                        let xv = _mm256_loadu_ps(xp.add(*m.col.get_unchecked(j) as usize * w + c0));
                        let v = m.val.as_ptr().add(j * BR);
                        for (i, a) in acc.iter_mut().enumerate() {
                            *a = _mm256_fmadd_ps(_mm256_set1_ps(*v.add(i)), xv, *a);
                        }
                    }
                    for (i, a) in acc.iter().enumerate() {
                        let r = b * BR + i;
                        if r >= m.rows {
                            break;
                        }
                        _mm256_storeu_ps(yp.add((r - r0) * w + c0), if relu { _mm256_max_ps(*a, zero) } else { *a });
                    }
                }
            }
            c0 += 8;
        }
        // The last columns, one at a time.
        for s in c0..w {
            for b in blocks.clone() {
                for i in 0..BR {
                    let r = b * BR + i;
                    if r >= m.rows {
                        break;
                    }
                    let mut acc = bias_of(r);
                    for j in m.blk_ptr[b] as usize..m.blk_ptr[b + 1] as usize {
                        acc += m.val[j * BR + i] * x[m.col[j] as usize * w + s];
                    }
                    y[(r - r0) * w + s] = if relu { acc.max(0.0) } else { acc };
                }
            }
        }
    }
}
