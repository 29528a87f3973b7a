//! Weights in blocks of 4 output rows sharing their column indices (BCSR 4x1),
//! `f32-spmm-bcsr4x1`: each activation row loaded from cache feeds 4 output rows, so the kernel
//! does 16 FMAs per 4 vector loads instead of 4 per 4. Models pruned with `mask = "4x1"` fit it
//! exactly; unstructured weights fit it with zero fill, and dense weights are the case where
//! every column is present. The compiler keeps it only where it times fastest.
//!
//! Its sums start and end as the CSR kernel's do (`spmm::Sums`): rows `ld` apart in the input and
//! the output (a band of rows inside whole images), from the bias or the values in `y`, the
//! residual added and the ReLU and clip applied as they are stored, and the output rows of a large
//! region prefetched for writing (`spmm::COLD_OUTPUT_BYTES`).

use std::ops::Range;

use super::Isa;
use super::spmm::{Sums, check_tile, prefetch_rows};

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

/// Checks the sizes every variant relies on.
fn check(m: &Bcsr, bias: &[f32], x: &[f32], w: usize, y: &[f32], rows: &Range<usize>, sums: &Sums) {
    check_tile([m.rows, m.cols], bias, x, w, y, rows, sums)
}

/// The scalar twin. Output rows `rows` (any range; the blocks that hold them are computed) are
/// written to `y`, row `r` at `(r - rows.start) * ld.y`.
pub fn spmm_bcsr_ref(m: &Bcsr, bias: &[f32], x: &[f32], w: usize, y: &mut [f32], rows: Range<usize>, sums: Sums) {
    check(m, bias, x, w, y, &rows, &sums);
    let ld = sums.ld;
    for (i, r) in rows.enumerate() {
        let (b, lane) = (r / BR, r % BR);
        for s in 0..w {
            let mut acc = if sums.accumulate { y[i * ld.y + s] } else { bias[r] };
            for j in m.blk_ptr[b] as usize..m.blk_ptr[b + 1] as usize {
                acc += m.val[j * BR + lane] * x[m.col[j] as usize * ld.x + s];
            }
            if let Some(res) = sums.residual {
                acc += res[i * ld.y + s];
            }
            y[i * ld.y + s] = sums.finish(acc);
        }
    }
}

/// Runs the variant for `isa` (which the CPU must support) on output rows `rows`, laid out and
/// started and ended as `sums` says.
pub fn spmm_bcsr(isa: Isa, m: &Bcsr, bias: &[f32], x: &[f32], w: usize, y: &mut [f32], rows: Range<usize>, sums: Sums) {
    check(m, bias, x, w, y, &rows, &sums);
    match isa {
        // SAFETY: sizes checked above (the residual's too); columns validated at construction;
        // the caller selected `isa` from what the CPU reports.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::spmm_bcsr_avx512(m, bias, x, w, y, rows, &sums) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::spmm_bcsr_avx2(m, bias, x, w, y, rows, &sums) },
        _ => spmm_bcsr_ref(m, bias, x, w, y, rows, sums),
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::{BR, Bcsr, Sums, prefetch_rows};

    /// Strips of up to 64 sample columns, as the CSR kernel's (4 vectors; the columns left after
    /// them, up to one vector more than a strip, in one last strip, its last vector masked):
    /// 4 rows x 4 vectors = 16 accumulators per block, each column's activations loaded once for
    /// the block's 4 rows.
    ///
    /// # Safety
    /// AVX-512F must be available; sizes as checked by `super::check`; `m.col[j] < m.cols`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn spmm_bcsr_avx512(m: &Bcsr, bias: &[f32], x: &[f32], w: usize, y: &mut [f32], rows: Range<usize>, sums: &Sums) {
        let mut c0 = 0;
        while c0 < w {
            let left = w - c0;
            let vectors = if left <= 80 { left.div_ceil(16) } else { 4 };
            let lanes = left.min(16 * vectors);
            // SAFETY: columns c0..c0 + lanes <= w; the rest as this function's.
            unsafe {
                match (vectors, lanes == 16 * vectors) {
                    (1, true) => strip::<1, false>(m, bias, x, y, &rows, sums, c0, lanes),
                    (1, false) => strip::<1, true>(m, bias, x, y, &rows, sums, c0, lanes),
                    (2, true) => strip::<2, false>(m, bias, x, y, &rows, sums, c0, lanes),
                    (2, false) => strip::<2, true>(m, bias, x, y, &rows, sums, c0, lanes),
                    (3, true) => strip::<3, false>(m, bias, x, y, &rows, sums, c0, lanes),
                    (3, false) => strip::<3, true>(m, bias, x, y, &rows, sums, c0, lanes),
                    (4, true) => strip::<4, false>(m, bias, x, y, &rows, sums, c0, lanes),
                    (4, false) => strip::<4, true>(m, bias, x, y, &rows, sums, c0, lanes),
                    (_, true) => strip::<5, false>(m, bias, x, y, &rows, sums, c0, lanes),
                    (_, false) => strip::<5, true>(m, bias, x, y, &rows, sums, c0, lanes),
                }
            }
            c0 += lanes;
        }
    }

    /// Columns `c0..c0 + lanes` of rows `rows` (`lanes` more than `16 * (V - 1)`, at most
    /// `16 * V`, all of it unless `MASKED`): for each block holding some of them, `BR x V` sums,
    /// the last vector masked where `MASKED`; the block's rows outside `rows` are computed and not
    /// stored. (A mask chosen at run time in the inner loop had halved the kernel's speed.)
    ///
    /// # Safety
    /// As `spmm_bcsr_avx512`, with `c0 + lanes <= w`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn strip<const V: usize, const MASKED: bool>(
        m: &Bcsr,
        bias: &[f32],
        x: &[f32],
        y: &mut [f32],
        rows: &Range<usize>,
        sums: &Sums,
        c0: usize,
        lanes: usize,
    ) {
        let (xp, yp, ld, r0) = (x.as_ptr(), y.as_mut_ptr(), sums.ld, rows.start);
        // The residual's row `r` starts where the output's does (same layout).
        let rp = sums.residual.map(<[f32]>::as_ptr);
        let tail = lanes - 16 * (V - 1);
        let last: __mmask16 = if tail == 16 { 0xffff } else { (1u16 << tail) - 1 };
        // SAFETY (the closures): vector k of a strip at `p` reads lanes c0 + 16k.. below
        // c0 + lanes <= w, the last one masked to them.
        let load = |p: *const f32, k: usize| unsafe {
            if k + 1 < V || !MASKED { _mm512_loadu_ps(p.add(16 * k)) } else { _mm512_maskz_loadu_ps(last, p.add(16 * k)) }
        };
        let store = |p: *mut f32, k: usize, v: __m512| unsafe {
            if k + 1 < V || !MASKED { _mm512_storeu_ps(p.add(16 * k), v) } else { _mm512_mask_storeu_ps(p.add(16 * k), last, v) }
        };
        let zero = _mm512_setzero_ps();
        let ahead = prefetch_rows(rows.len(), ld.y);
        let clip = sums.clip.map(|[lo, hi]| (_mm512_set1_ps(lo), _mm512_set1_ps(hi)));
        for b in rows.start / BR..rows.end.div_ceil(BR) {
            // The block's rows that are stored: `lo..hi` of its `BR`.
            let (lo, hi) = (rows.start.max(b * BR) - b * BR, rows.end.min(b * BR + BR) - b * BR);
            // SAFETY (whole block): entries j < nnz blocks by the BCSR invariants; col * ld.x +
            // c0 + lanes within x's span (`super::check`); the rows stored, r in `rows`, at
            // (r - r0) * ld.y + c0 + lanes within y's and the residual's; prefetches do not fault.
            unsafe {
                if ahead > 0 {
                    // The next block's strips, for writing, and the residual's.
                    for r in (b + 1) * BR..((b + 2) * BR).min(rows.end) {
                        for k in 0..V {
                            let at = (r - r0) * ld.y + c0 + 16 * k;
                            _mm_prefetch::<_MM_HINT_ET0>(yp.add(at) as *const i8);
                            if let Some(rp) = rp {
                                _mm_prefetch::<_MM_HINT_T0>(rp.add(at) as *const i8);
                            }
                        }
                    }
                }
                // One array of sums per row of the block, indexed only by the vector: one array
                // of all 16 (4 x 4 vectors) was kept on the stack, each FMA stored, at half the
                // speed.
                let init = |i: usize| -> [__m512; V] {
                    let r = b * BR + i;
                    if !sums.accumulate {
                        [_mm512_set1_ps(if r < m.rows { *bias.get_unchecked(r) } else { 0.0 }); V]
                    } else if (lo..hi).contains(&i) {
                        std::array::from_fn(|k| load(yp.add((r - r0) * ld.y + c0), k))
                    } else {
                        [zero; V]
                    }
                };
                let (mut a0, mut a1, mut a2, mut a3) = (init(0), init(1), init(2), init(3));
                let fma = |acc: &mut [__m512; V], v: f32, xs: &[__m512; V]| {
                    let v = _mm512_set1_ps(v);
                    for (a, &xv) in acc.iter_mut().zip(xs) {
                        *a = _mm512_fmadd_ps(v, xv, *a);
                    }
                };
                for j in *m.blk_ptr.get_unchecked(b) as usize..*m.blk_ptr.get_unchecked(b + 1) as usize {
                    let p = xp.add(*m.col.get_unchecked(j) as usize * ld.x + c0);
                    let mut xs = [zero; V];
                    for (k, xv) in xs.iter_mut().enumerate() {
                        *xv = load(p, k);
                    }
                    let v = m.val.as_ptr().add(j * BR);
                    fma(&mut a0, *v, &xs);
                    fma(&mut a1, *v.add(1), &xs);
                    fma(&mut a2, *v.add(2), &xs);
                    fma(&mut a3, *v.add(3), &xs);
                }
                let finish = |i: usize, acc: &[__m512; V]| {
                    if !(lo..hi).contains(&i) {
                        return;
                    }
                    let at = (b * BR + i - r0) * ld.y + c0;
                    for (k, &a) in acc.iter().enumerate() {
                        let mut a = a;
                        if let Some(rp) = rp {
                            a = _mm512_add_ps(a, load(rp.add(at), k));
                        }
                        if sums.relu {
                            a = _mm512_max_ps(a, zero);
                        }
                        if let Some((lo, hi)) = clip {
                            // As `elementwise::clamp`: max and min return their second operand
                            // where one is NaN, so a NaN sum stays NaN.
                            a = _mm512_min_ps(hi, _mm512_max_ps(lo, a));
                        }
                        store(yp.add(at), k, a);
                    }
                };
                finish(0, &a0);
                finish(1, &a1);
                finish(2, &a2);
                finish(3, &a3);
            }
        }
    }

    /// The AVX2 variant: strips of 16 sample columns (4 rows x 2 vectors of 8), then 8, then the
    /// last columns on the scalar twin.
    ///
    /// # Safety
    /// AVX2 and FMA must be available; sizes as checked by `super::check`; `m.col[j] < m.cols`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn spmm_bcsr_avx2(m: &Bcsr, bias: &[f32], x: &[f32], w: usize, y: &mut [f32], rows: Range<usize>, sums: &Sums) {
        let mut c0 = 0;
        while c0 + 16 <= w {
            // SAFETY: columns c0..c0 + 16 <= w.
            unsafe { strip8::<2>(m, bias, x, y, &rows, sums, c0) };
            c0 += 16;
        }
        if c0 + 8 <= w {
            // SAFETY: columns c0..c0 + 8 <= w.
            unsafe { strip8::<1>(m, bias, x, y, &rows, sums, c0) };
            c0 += 8;
        }
        if c0 < w {
            // The last columns, as the scalar twin does them: the tile from column c0 on keeps its
            // rows' strides (an empty tile, of no input column or output row, stays empty).
            let from = |len: usize| c0.min(len)..;
            let tail = Sums { residual: sums.residual.map(|r| &r[from(r.len())]), ..*sums };
            let (x, y_len) = (&x[from(x.len())], y.len());
            let y = &mut y[from(y_len)];
            super::spmm_bcsr_ref(m, bias, x, w - c0, y, rows, tail);
        }
    }

    /// Columns `c0..c0 + 8 * V` of rows `rows`, `BR x V` sums per block.
    ///
    /// # Safety
    /// As `spmm_bcsr_avx2`, with `c0 + 8 * V <= w`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn strip8<const V: usize>(m: &Bcsr, bias: &[f32], x: &[f32], y: &mut [f32], rows: &Range<usize>, sums: &Sums, c0: usize) {
        let (xp, yp, ld, r0) = (x.as_ptr(), y.as_mut_ptr(), sums.ld, rows.start);
        let rp = sums.residual.map(<[f32]>::as_ptr);
        let zero = _mm256_setzero_ps();
        let clip = sums.clip.map(|[lo, hi]| (_mm256_set1_ps(lo), _mm256_set1_ps(hi)));
        for b in rows.start / BR..rows.end.div_ceil(BR) {
            let (lo, hi) = (rows.start.max(b * BR) - b * BR, rows.end.min(b * BR + BR) - b * BR);
            // SAFETY: as in the AVX-512 variant, with strips of 8 * V columns.
            unsafe {
                // One array of sums per row, as in the AVX-512 variant.
                let init = |i: usize| -> [__m256; V] {
                    let r = b * BR + i;
                    if !sums.accumulate {
                        [_mm256_set1_ps(if r < m.rows { *bias.get_unchecked(r) } else { 0.0 }); V]
                    } else if (lo..hi).contains(&i) {
                        std::array::from_fn(|k| _mm256_loadu_ps(yp.add((r - r0) * ld.y + c0 + 8 * k)))
                    } else {
                        [zero; V]
                    }
                };
                let (mut a0, mut a1, mut a2, mut a3) = (init(0), init(1), init(2), init(3));
                let fma = |acc: &mut [__m256; V], v: f32, xs: &[__m256; V]| {
                    let v = _mm256_set1_ps(v);
                    for (a, &xv) in acc.iter_mut().zip(xs) {
                        *a = _mm256_fmadd_ps(v, xv, *a);
                    }
                };
                for j in *m.blk_ptr.get_unchecked(b) as usize..*m.blk_ptr.get_unchecked(b + 1) as usize {
                    let p = xp.add(*m.col.get_unchecked(j) as usize * ld.x + c0);
                    let xs: [__m256; V] = std::array::from_fn(|k| _mm256_loadu_ps(p.add(8 * k)));
                    let v = m.val.as_ptr().add(j * BR);
                    fma(&mut a0, *v, &xs);
                    fma(&mut a1, *v.add(1), &xs);
                    fma(&mut a2, *v.add(2), &xs);
                    fma(&mut a3, *v.add(3), &xs);
                }
                let finish = |i: usize, acc: &[__m256; V]| {
                    if !(lo..hi).contains(&i) {
                        return;
                    }
                    let at = (b * BR + i - r0) * ld.y + c0;
                    for (k, &a) in acc.iter().enumerate() {
                        let mut a = a;
                        if let Some(rp) = rp {
                            a = _mm256_add_ps(a, _mm256_loadu_ps(rp.add(at + 8 * k)));
                        }
                        if sums.relu {
                            a = _mm256_max_ps(a, zero);
                        }
                        if let Some((lo, hi)) = clip {
                            a = _mm256_min_ps(hi, _mm256_max_ps(lo, a));
                        }
                        _mm256_storeu_ps(yp.add(at + 8 * k), a);
                    }
                };
                finish(0, &a0);
                finish(1, &a1);
                finish(2, &a2);
                finish(3, &a3);
            }
        }
    }
}
