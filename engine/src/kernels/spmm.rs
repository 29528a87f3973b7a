//! Sparse (CSR) weights times a tile of activations: `f32-spmm-64x1` in XNNPACK's terms.
//!
//! For each output row `r` of `rows`, and every sample column `s < w`:
//! `y[(r - rows.start) * w + s] = act(bias[r] + sum_j val[j] * x[col[j] * w + s])` (row strides other
//! than `w`: `spmm_strided`).
//! `x` is `[cols, w]` feature-major, `y` holds the rows of `rows` as `[rows.len(), w]`.
//! The vector variants keep a 64-column (AVX-512) or 32-column (AVX2) strip of one output row
//! in registers while streaming that row's non-zeros, so each weight is loaded once per strip.
//! The strided forms can add a residual laid out as `y` to the sums before the ReLU (a residual
//! connection fused into the layer: `MatMul::residual`), and clamp what they store (a fused Clip,
//! ReLU6).

use std::ops::Range;

use super::csr::Csr;
use super::{Isa, elementwise};

/// Leading dimensions: input row `c` starts at `c * x` in `x`, output row `i` at `i * y` in `y`.
/// Both are `w` for a packed tile; larger for rows of a band inside whole images (a pointwise
/// convolution reading and writing the band's rows in place, see `spmm_strided`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ld {
    pub x: usize,
    pub y: usize,
}

impl Ld {
    /// A packed `[_, w]` tile in and out.
    pub fn packed(w: usize) -> Ld {
        Ld { x: w, y: w }
    }
}

/// Elements a `[rows, w]` matrix with leading dimension `ld` spans.
pub(super) fn span(rows: usize, w: usize, ld: usize) -> usize {
    if rows == 0 { 0 } else { (rows - 1) * ld + w }
}

/// How a call's sums start and end, and where its rows lie: from the bias, or with `accumulate`
/// from the values already in `y` (weights split into column blocks, see `kblocked`); then the
/// `residual` (laid out as `y`, a residual connection fused into the layer), the ReLU, and the
/// `clip` to `[lo, hi]` (a fused Clip such as ReLU6, as `elementwise::clamp`: NaN stays NaN).
#[derive(Debug, Clone, Copy)]
pub struct Sums<'a> {
    pub ld: Ld,
    pub relu: bool,
    pub accumulate: bool,
    pub residual: Option<&'a [f32]>,
    pub clip: Option<[f32; 2]>,
}

impl<'a> Sums<'a> {
    /// From the bias, rows `ld` apart, ReLU where `relu`, no residual, no clip.
    pub fn new(ld: Ld, relu: bool) -> Sums<'a> {
        Sums { ld, relu, accumulate: false, residual: None, clip: None }
    }

    /// These sums with `residual` added before the ReLU.
    pub fn with_residual(self, residual: Option<&'a [f32]>) -> Sums<'a> {
        Sums { residual, ..self }
    }

    /// These sums clamped to `clip` (`[lo, hi]`) after the ReLU.
    pub fn with_clip(self, clip: Option<[f32; 2]>) -> Sums<'a> {
        Sums { clip, ..self }
    }

    /// A stored value's end: the ReLU, then the clip.
    #[inline]
    pub fn finish(&self, acc: f32) -> f32 {
        let v = if self.relu { acc.max(0.0) } else { acc };
        match self.clip {
            Some([lo, hi]) => elementwise::clamp(v, lo, hi),
            None => v,
        }
    }
}

/// Checks the sizes every variant relies on.
fn check(m: &Csr, bias: &[f32], x: &[f32], w: usize, y: &[f32], rows: &Range<usize>, sums: &Sums) {
    check_tile([m.rows, m.cols], bias, x, w, y, rows, sums)
}

/// The sizes a sparse kernel on a `[rows, cols]` matrix (`matrix`) relies on: its output rows
/// `rows` and bias within the matrix, and the input, output and residual tiles as `sums.ld` lays
/// them out (the blocked kernel checks the same).
pub(super) fn check_tile(matrix: [usize; 2], bias: &[f32], x: &[f32], w: usize, y: &[f32], rows: &Range<usize>, sums: &Sums) {
    let ([m_rows, cols], ld) = (matrix, sums.ld);
    assert!(rows.start <= rows.end && rows.end <= m_rows && bias.len() == m_rows, "row range or bias does not fit the matrix");
    assert!(ld.x >= w && ld.y >= w, "leading dimensions below the width");
    assert!(x.len() >= span(cols, w, ld.x), "input tile too small: {} < {cols} x {w}", x.len());
    assert!(y.len() >= span(rows.len(), w, ld.y), "output tile too small");
    assert!(sums.residual.is_none_or(|r| r.len() >= span(rows.len(), w, ld.y)), "residual smaller than the output");
}

/// The scalar twin: the definition, written plainly.
pub fn spmm_ref(m: &Csr, bias: &[f32], x: &[f32], w: usize, y: &mut [f32], rows: Range<usize>, relu: bool) {
    spmm_strided_ref(m, bias, x, w, y, rows, Sums::new(Ld::packed(w), relu))
}

/// Scalar twin of `spmm_strided`.
pub fn spmm_strided_ref(m: &Csr, bias: &[f32], x: &[f32], w: usize, y: &mut [f32], rows: Range<usize>, sums: Sums) {
    check(m, bias, x, w, y, &rows, &sums);
    let ld = sums.ld;
    for (i, r) in rows.enumerate() {
        for s in 0..w {
            let mut acc = if sums.accumulate { y[i * ld.y + s] } else { bias[r] };
            for j in m.row_ptr[r] as usize..m.row_ptr[r + 1] as usize {
                acc += m.val[j] * x[m.col[j] as usize * ld.x + s];
            }
            if let Some(res) = sums.residual {
                acc += res[i * ld.y + s];
            }
            y[i * ld.y + s] = sums.finish(acc);
        }
    }
}

/// Runs the variant for `isa` (which the CPU must support).
pub fn spmm(isa: Isa, m: &Csr, bias: &[f32], x: &[f32], w: usize, y: &mut [f32], rows: Range<usize>, relu: bool) {
    spmm_strided(isa, m, bias, x, w, y, rows, Sums::new(Ld::packed(w), relu))
}

/// `spmm` on `w` columns of rows that lie `sums.ld.x` apart in `x` and `sums.ld.y` apart in `y`,
/// the sums started and ended as `sums` says.
pub fn spmm_strided(isa: Isa, m: &Csr, bias: &[f32], x: &[f32], w: usize, y: &mut [f32], rows: Range<usize>, sums: Sums) {
    check(m, bias, x, w, y, &rows, &sums);
    match isa {
        // SAFETY: sizes checked above (the residual's too); the CSR indices were validated at
        // construction (`col < cols`); the caller selected `isa` from what the CPU reports.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::spmm_avx512(m, bias, x, w, y, rows, &sums) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::spmm_avx2(m, bias, x, w, y, rows, &sums) },
        _ => spmm_strided_ref(m, bias, x, w, y, rows, sums),
    }
}

/// An output region larger than this (about an L2) is taken to be written to lines that left the
/// cache long ago: a depth-wise column writes each band of a value's whole-image region once per
/// tile, and a layer-wise layer writes more than fits. Each store then waits for its line to come
/// from memory, unless the row is prefetched for writing a few rows ahead (`PREFETCH_ROWS`).
/// On ResNet-50's pointwise shapes (`f32-spmm-csr`, one thread, 196-column bands) that took cold
/// outputs from 15-35 to 20-44 useful GFLOP/s, and cost up to 5% where the output stayed in L2
/// (results/cold-outputs.md).
pub const COLD_OUTPUT_BYTES: usize = 1 << 20;

/// How many output rows ahead a kernel writing a cold region prefetches (and a residual's rows):
/// 2 to 8 rows did about as well on ResNet-50's shapes; 16 less.
pub const PREFETCH_ROWS: usize = 4;

/// Rows ahead to prefetch for a call writing `rows` rows `ld_y` floats apart: `PREFETCH_ROWS`
/// where that region is larger than `COLD_OUTPUT_BYTES`, else none.
pub(super) fn prefetch_rows(rows: usize, ld_y: usize) -> usize {
    if rows.saturating_mul(ld_y).saturating_mul(size_of::<f32>()) > COLD_OUTPUT_BYTES { PREFETCH_ROWS } else { 0 }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::{Csr, Sums, prefetch_rows};

    /// Strips of 64 sample columns (four vectors of accumulators per output row); the columns
    /// left after them, up to one vector more than a strip, go in one last strip of as many
    /// vectors, its last one masked. (Strips of 32, then 16, then a masked remainder had read
    /// every weight three times on a 7x7 image.)
    ///
    /// # Safety
    /// AVX-512F must be available; sizes as checked by `super::check`; `m.col[j] < m.cols`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn spmm_avx512(m: &Csr, bias: &[f32], x: &[f32], w: usize, y: &mut [f32], rows: Range<usize>, sums: &Sums) {
        let mut c0 = 0;
        while c0 < w {
            let left = w - c0;
            let vectors = if left <= 80 { left.div_ceil(16) } else { 4 };
            let lanes = left.min(16 * vectors);
            // SAFETY: columns c0..c0 + lanes <= w; the rest as this function's.
            unsafe {
                match vectors {
                    1 => strip::<1, 4>(m, bias, x, y, &rows, sums, c0, lanes),
                    2 => strip::<2, 4>(m, bias, x, y, &rows, sums, c0, lanes),
                    3 => strip::<3, 3>(m, bias, x, y, &rows, sums, c0, lanes),
                    4 => strip::<4, 2>(m, bias, x, y, &rows, sums, c0, lanes),
                    _ => strip::<5, 2>(m, bias, x, y, &rows, sums, c0, lanes),
                }
            }
            c0 += lanes;
        }
    }

    /// Columns `c0..c0 + lanes` of rows `rows` (`lanes` more than `16 * (V - 1)`, at most
    /// `16 * V`): `V` vectors of sums per row, the last masked. Non-zeros go in turn to `S` sets
    /// of accumulators, `S * V` independent FMA chains (eight or more cover the FMA latency on two
    /// ports); the sets are summed pairwise.
    ///
    /// # Safety
    /// As `spmm_avx512`, with `c0 + lanes <= w`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn strip<const V: usize, const S: usize>(
        m: &Csr,
        bias: &[f32],
        x: &[f32],
        y: &mut [f32],
        rows: &Range<usize>,
        sums: &Sums,
        c0: usize,
        lanes: usize,
    ) {
        let (xp, yp, ld) = (x.as_ptr(), y.as_mut_ptr(), sums.ld);
        // The residual's row `r` starts where the output's does (same layout).
        let rp = sums.residual.map(<[f32]>::as_ptr);
        let tail = lanes - 16 * (V - 1);
        let last: __mmask16 = if tail == 16 { 0xffff } else { (1u16 << tail) - 1 };
        // SAFETY (the closures): vector k of a strip at `p` reads lanes c0 + 16k.. below
        // c0 + lanes <= w, the last one masked to them.
        let load = |p: *const f32, k: usize| unsafe {
            if k + 1 < V || tail == 16 { _mm512_loadu_ps(p.add(16 * k)) } else { _mm512_maskz_loadu_ps(last, p.add(16 * k)) }
        };
        let store = |p: *mut f32, k: usize, v: __m512| unsafe {
            if k + 1 < V || tail == 16 { _mm512_storeu_ps(p.add(16 * k), v) } else { _mm512_mask_storeu_ps(p.add(16 * k), last, v) }
        };
        let zero = _mm512_setzero_ps();
        let ahead = prefetch_rows(rows.len(), ld.y);
        for r in rows.clone() {
            // SAFETY (whole block): j < nnz by the CSR invariants; col * ld.x + c0 + lanes <= x's
            // span (`super::check`); (r - r0) * ld.y + c0 + lanes within y's and the residual's.
            unsafe {
                let q = yp.add((r - rows.start) * ld.y + c0);
                if ahead > 0 && r + ahead < rows.end {
                    // The strip of output row r + ahead, for writing, and of the residual's.
                    for k in 0..V {
                        _mm_prefetch::<_MM_HINT_ET0>(q.add(ahead * ld.y + 16 * k) as *const i8);
                        if let Some(rp) = rp {
                            _mm_prefetch::<_MM_HINT_T0>(rp.add((r + ahead - rows.start) * ld.y + c0 + 16 * k) as *const i8);
                        }
                    }
                }
                let mut sets = [[zero; V]; S];
                for (k, acc) in sets[0].iter_mut().enumerate() {
                    *acc = if sums.accumulate { load(q, k) } else { _mm512_set1_ps(*bias.get_unchecked(r)) };
                }
                let (start, end) = (*m.row_ptr.get_unchecked(r) as usize, *m.row_ptr.get_unchecked(r + 1) as usize);
                let nonzero = |j: usize, set: &mut [__m512; V]| {
                    let v = _mm512_set1_ps(*m.val.get_unchecked(j));
                    let p = xp.add(*m.col.get_unchecked(j) as usize * ld.x + c0);
                    for (k, acc) in set.iter_mut().enumerate() {
                        *acc = _mm512_fmadd_ps(v, load(p, k), *acc);
                    }
                };
                let mut j = start;
                while j + S <= end {
                    for (s, set) in sets.iter_mut().enumerate() {
                        nonzero(j + s, set);
                    }
                    j += S;
                }
                for j in j..end {
                    nonzero(j, &mut sets[0]);
                }
                for k in 0..V {
                    // Pairwise: (s0 + s1) + (s2 + s3).
                    let mut parts = [zero; S];
                    for (s, set) in sets.iter().enumerate() {
                        parts[s] = set[k];
                    }
                    let mut n = S;
                    while n > 1 {
                        for i in 0..n / 2 {
                            parts[i] = _mm512_add_ps(parts[2 * i], parts[2 * i + 1]);
                        }
                        if n % 2 == 1 {
                            parts[n / 2] = parts[n - 1];
                        }
                        n = n.div_ceil(2);
                    }
                    let mut a = parts[0];
                    if let Some(rp) = rp {
                        a = _mm512_add_ps(a, load(rp.add((r - rows.start) * ld.y + c0), k));
                    }
                    if sums.relu {
                        a = _mm512_max_ps(a, zero);
                    }
                    if let Some([lo, hi]) = sums.clip {
                        // As `elementwise::clamp`: max and min return their second operand
                        // where one is NaN, so a NaN sum stays NaN.
                        a = _mm512_min_ps(_mm512_set1_ps(hi), _mm512_max_ps(_mm512_set1_ps(lo), a));
                    }
                    store(q, k, a);
                }
            }
        }
    }

    /// # Safety
    /// AVX2 and FMA must be available; sizes as checked by `super::check`; `m.col[j] < m.cols`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn spmm_avx2(m: &Csr, bias: &[f32], x: &[f32], w: usize, y: &mut [f32], rows: Range<usize>, sums: &Sums) {
        let Sums { ld, relu, accumulate, residual, clip } = *sums;
        // As `elementwise::clamp` (see the AVX-512 variant); no clip is the whole range.
        let [lo, hi] = clip.unwrap_or([f32::NEG_INFINITY, f32::INFINITY]);
        let (lo8, hi8) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
        let clamp = |a: __m256| if clip.is_some() { _mm256_min_ps(hi8, _mm256_max_ps(lo8, a)) } else { a };
        let (xp, yp) = (x.as_ptr(), y.as_mut_ptr());
        let rp = residual.map(<[f32]>::as_ptr);
        let zero = _mm256_setzero_ps();
        let r0 = rows.start;
        let mut c0 = 0;
        // LOOP 1: strips of 32 sample columns, four vectors of accumulators per output row.
        while c0 + 32 <= w {
            for r in rows.clone() {
                // SAFETY: as in the AVX-512 variant, with 32-column strips.
                unsafe {
                    let q = yp.add((r - r0) * ld.y + c0);
                    let (mut a0, mut a1, mut a2, mut a3) = if accumulate {
                        (_mm256_loadu_ps(q), _mm256_loadu_ps(q.add(8)), _mm256_loadu_ps(q.add(16)), _mm256_loadu_ps(q.add(24)))
                    } else {
                        let b = _mm256_set1_ps(*bias.get_unchecked(r));
                        (b, b, b, b)
                    };
                    for j in *m.row_ptr.get_unchecked(r) as usize..*m.row_ptr.get_unchecked(r + 1) as usize {
                        let v = _mm256_set1_ps(*m.val.get_unchecked(j));
                        let p = xp.add(*m.col.get_unchecked(j) as usize * ld.x + c0);
                        a0 = _mm256_fmadd_ps(v, _mm256_loadu_ps(p), a0);
                        a1 = _mm256_fmadd_ps(v, _mm256_loadu_ps(p.add(8)), a1);
                        a2 = _mm256_fmadd_ps(v, _mm256_loadu_ps(p.add(16)), a2);
                        a3 = _mm256_fmadd_ps(v, _mm256_loadu_ps(p.add(24)), a3);
                    }
                    if let Some(rp) = rp {
                        let s = rp.add((r - r0) * ld.y + c0);
                        a0 = _mm256_add_ps(a0, _mm256_loadu_ps(s));
                        a1 = _mm256_add_ps(a1, _mm256_loadu_ps(s.add(8)));
                        a2 = _mm256_add_ps(a2, _mm256_loadu_ps(s.add(16)));
                        a3 = _mm256_add_ps(a3, _mm256_loadu_ps(s.add(24)));
                    }
                    if relu {
                        (a0, a1, a2, a3) =
                            (_mm256_max_ps(a0, zero), _mm256_max_ps(a1, zero), _mm256_max_ps(a2, zero), _mm256_max_ps(a3, zero));
                    }
                    (a0, a1, a2, a3) = (clamp(a0), clamp(a1), clamp(a2), clamp(a3));
                    _mm256_storeu_ps(q, a0);
                    _mm256_storeu_ps(q.add(8), a1);
                    _mm256_storeu_ps(q.add(16), a2);
                    _mm256_storeu_ps(q.add(24), a3);
                }
            }
            c0 += 32;
        }
        // LOOP 2: strips of 8 columns.
        while c0 + 8 <= w {
            for r in rows.clone() {
                // SAFETY: as above.
                unsafe {
                    let q = yp.add((r - r0) * ld.y + c0);
                    let mut a = if accumulate { _mm256_loadu_ps(q) } else { _mm256_set1_ps(*bias.get_unchecked(r)) };
                    for j in *m.row_ptr.get_unchecked(r) as usize..*m.row_ptr.get_unchecked(r + 1) as usize {
                        let v = _mm256_set1_ps(*m.val.get_unchecked(j));
                        a = _mm256_fmadd_ps(v, _mm256_loadu_ps(xp.add(*m.col.get_unchecked(j) as usize * ld.x + c0)), a);
                    }
                    if let Some(rp) = rp {
                        a = _mm256_add_ps(a, _mm256_loadu_ps(rp.add((r - r0) * ld.y + c0)));
                    }
                    if relu {
                        a = _mm256_max_ps(a, zero);
                    }
                    _mm256_storeu_ps(q, clamp(a));
                }
            }
            c0 += 8;
        }
        // LOOP 3: fewer than 8 columns left, one at a time.
        for s in c0..w {
            for r in rows.clone() {
                let mut acc = if accumulate { y[(r - r0) * ld.y + s] } else { bias[r] };
                for j in m.row_ptr[r] as usize..m.row_ptr[r + 1] as usize {
                    acc += m.val[j] * x[m.col[j] as usize * ld.x + s];
                }
                if let Some(res) = residual {
                    acc += res[(r - r0) * ld.y + s];
                }
                y[(r - r0) * ld.y + s] = sums.finish(acc);
            }
        }
    }
}
