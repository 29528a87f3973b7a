//! The kernel catalogue: every kernel a weighted layer can run, each as the weights packed for
//! it, so a layer cannot name a kernel whose weights it lacks. A layer keeps two choices (tiles
//! of one sample and wider tiles, `Kernels`); what the compiler, the executor, the planner and the
//! reports ask of a kernel is answered here: its name, its weights' bytes, the work that decides
//! whether a layer splits over threads, the row ranges it splits into, and how a range of rows
//! runs on a tile (`F32Kernel::run_rows`, which the compiler's timings call too).
//!
//! A new fp32 kernel on `[rows, cols] x [cols, w]` tiles is its file in `kernels/`, a variant
//! here (with its arm in each method) and its candidate in `compile::choose`.

use std::ops::Range;
use std::sync::Arc;

use crate::kernels::bcsr::{self, Bcsr};
use crate::kernels::csr::{Csr, balanced_ranges};
use crate::kernels::kblocked::{self, KBlocked};
use crate::kernels::q8::{Dequant, Q8Matrix};
use crate::kernels::q8amx::TileMatrix;
use crate::kernels::q8direct::ShiftConv;
use crate::kernels::spmm::Sums;
use crate::kernels::window::Geometry;
use crate::kernels::winograd::Winograd;
use crate::kernels::{Isa, dense, direct, elementwise, spmm, spmv};

/// A kernel by name: the variants of `F32Kernel` and `Int8Kernel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Dense GEMM (the `gemm` crate; dot products on one column).
    Dense,
    /// CSR weights (`spmm`, and `spmv` on one column).
    Sparse,
    /// Blocks of 4 output rows sharing columns (`bcsr`).
    Blocked,
    /// CSR weights in blocks of input columns over packed panels of the input (`kblocked`).
    ColumnBlocked,
    /// The column-blocked kernel on a convolution's image, each panel unfolded from the image
    /// itself (`kblocked::spmm_kblocked_unfolded`): no im2col buffer, but every thread unfolds
    /// every panel of its rows, so it wins on wide tiles, whose im2col would leave the cache.
    Unfolding,
    /// Sparse direct convolution from the image, no im2col (`direct`, `flat`): tiles of a
    /// multiple of 16 (AVX-512) or 8 (AVX2) samples, and one sample at stride 1 with AVX-512;
    /// other tiles run im2col and the CSR kernel on the same weights.
    Direct,
    /// Dense 3x3 convolution at stride 1 by Winograd's F(2x2, 3x3) on whole images of one
    /// sample (`winograd`); row bands and wider tiles run dense GEMM on the same weights.
    Winograd,
    /// Int8 weights in groups of four input columns on uint8 inputs (`q8`).
    Int8,
    /// Int8 direct convolution from a shifted quantized image (`q8direct`; AVX-512 VNNI).
    Int8Direct,
    /// Int8 weights dense in AMX tiles (`q8amx`; batched tiles of linear layers).
    Int8Tiles,
}

impl Kernel {
    /// Every kernel, for tests and benchmarks that go through the catalogue.
    pub const ALL: [Kernel; 10] = [
        Kernel::Dense,
        Kernel::Sparse,
        Kernel::Blocked,
        Kernel::ColumnBlocked,
        Kernel::Unfolding,
        Kernel::Direct,
        Kernel::Winograd,
        Kernel::Int8,
        Kernel::Int8Direct,
        Kernel::Int8Tiles,
    ];

    /// The kernel's name; `matrix_vector`: it runs on one column (a linear layer's one sample),
    /// where the CSR and int8 kernels have a matrix-vector form.
    pub fn name(self, matrix_vector: bool) -> &'static str {
        match (self, matrix_vector) {
            (Kernel::Dense, _) => "dense-gemm",
            (Kernel::Sparse, false) => "f32-spmm-csr",
            (Kernel::Sparse, true) => "f32-spmv-csr",
            (Kernel::Blocked, _) => "f32-spmm-bcsr4x1",
            (Kernel::ColumnBlocked, _) => "f32-spmm-csr-kc128",
            (Kernel::Unfolding, _) => "f32-conv-unfold-kc128",
            (Kernel::Int8, false) => "q8-spmm-k4",
            (Kernel::Int8, true) => "q8-spmv-k4",
            (Kernel::Int8Direct, _) => "q8-conv-direct",
            (Kernel::Int8Tiles, _) => "q8-amx-dense",
            (Kernel::Direct, _) => "f32-conv-direct",
            (Kernel::Winograd, _) => "f32-conv-winograd",
        }
    }
}

/// A convolution's weights for the direct kernel: its taps, its CSR weights, and the kernel that
/// runs the tiles it does not take through im2col (`others`: the one the compiler timed fastest
/// before the direct kernel beat it, so that a width the direct kernel has no vector form for,
/// such as 8-sample tiles with AVX-512, runs that kernel rather than plain CSR).
#[derive(Debug)]
pub struct DirectWeights {
    pub taps: Arc<direct::Taps>,
    pub csr: Arc<Csr>,
    pub others: F32Kernel,
}

impl DirectWeights {
    /// The direct kernel on `csr`, a convolution of window `g`; other tiles on the CSR kernel.
    pub fn kernel(csr: Arc<Csr>, g: &Geometry) -> F32Kernel {
        let taps = Arc::new(direct::Taps::new(&csr, g));
        F32Kernel::Direct(Arc::new(DirectWeights { taps, others: F32Kernel::Sparse(csr.clone()), csr }))
    }

    /// This direct kernel with `others` for the tiles it does not take (not a direct kernel).
    pub fn with_others(&self, others: F32Kernel) -> F32Kernel {
        assert!(others.taps().is_none(), "a direct kernel's other tiles run another kernel");
        F32Kernel::Direct(Arc::new(DirectWeights { taps: self.taps.clone(), csr: self.csr.clone(), others }))
    }
}

/// An fp32 kernel with its packed weights, `[rows, cols]`. Two choices of a layer that pack the
/// same weights share them.
#[derive(Debug, Clone)]
pub enum F32Kernel {
    Dense(Arc<Vec<f32>>),
    Sparse(Arc<Csr>),
    Blocked(Arc<Bcsr>),
    ColumnBlocked(Arc<KBlocked>),
    /// The same weights as `ColumnBlocked`; on a tile already unfolded it runs as that kernel.
    Unfolding(Arc<KBlocked>),
    Direct(Arc<DirectWeights>),
    /// A convolution's weights transformed for Winograd's products, and dense (for the tiles
    /// and row bands that run GEMM).
    Winograd(Arc<Winograd>, Arc<Vec<f32>>),
}

impl F32Kernel {
    #[inline]
    pub fn kernel(&self) -> Kernel {
        match self {
            F32Kernel::Dense(_) => Kernel::Dense,
            F32Kernel::Sparse(_) => Kernel::Sparse,
            F32Kernel::Blocked(_) => Kernel::Blocked,
            F32Kernel::ColumnBlocked(_) => Kernel::ColumnBlocked,
            F32Kernel::Unfolding(_) => Kernel::Unfolding,
            F32Kernel::Direct(_) => Kernel::Direct,
            F32Kernel::Winograd(..) => Kernel::Winograd,
        }
    }

    /// The CSR weights the kernel runs on, where it has them.
    pub fn csr(&self) -> Option<&Csr> {
        match self {
            F32Kernel::Sparse(c) => Some(c),
            F32Kernel::Direct(d) => Some(&d.csr),
            _ => None,
        }
    }

    /// The unfolding kernel's weights, where this is it: it unfolds a convolution's image a
    /// panel at a time itself (`kblocked::spmm_kblocked_unfolded`), with no im2col buffer.
    pub fn unfolding(&self) -> Option<&KBlocked> {
        match self {
            F32Kernel::Unfolding(k) => Some(k),
            F32Kernel::Direct(d) => d.others.unfolding(),
            _ => None,
        }
    }

    /// The Winograd kernel's transformed weights, where this is it.
    pub fn winograd(&self) -> Option<&Winograd> {
        match self {
            F32Kernel::Winograd(wg, _) => Some(wg),
            _ => None,
        }
    }

    /// The direct kernel's taps, where this is it.
    pub fn taps(&self) -> Option<&direct::Taps> {
        match self {
            F32Kernel::Direct(d) => Some(&d.taps),
            _ => None,
        }
    }

    /// The packed weights' address and bytes, so two choices sharing them count them once. The
    /// direct kernel counts its CSR weights only, as the column planner always has (its taps,
    /// twice those bytes, are left out of the working sets its plans were measured with).
    fn weights(&self) -> (usize, usize) {
        match self {
            F32Kernel::Dense(d) => (Arc::as_ptr(d) as usize, 4 * d.len()),
            F32Kernel::Sparse(c) => (Arc::as_ptr(c) as usize, c.bytes()),
            F32Kernel::Blocked(b) => (Arc::as_ptr(b) as usize, b.bytes()),
            F32Kernel::ColumnBlocked(k) | F32Kernel::Unfolding(k) => (Arc::as_ptr(k) as usize, k.bytes()),
            F32Kernel::Direct(d) => (Arc::as_ptr(&d.csr) as usize, d.csr.bytes()),
            // Counted with the dense weights it shares with a dense choice for wider tiles.
            F32Kernel::Winograd(wg, d) => (Arc::as_ptr(d) as usize, 4 * d.len() + wg.bytes()),
        }
    }

    /// The work of `rows x cols` weights on `cols_w` columns that decides whether the layer
    /// splits over threads (`exec::worth_splitting`): multiply-adds, or on one column gathered
    /// weights. Dense layers of fewer than 64 rows never split.
    #[inline]
    pub fn work(&self, rows: usize, cols: usize, cols_w: usize) -> usize {
        match self {
            F32Kernel::Dense(_) | F32Kernel::Winograd(..) if rows < 64 => 0,
            F32Kernel::Dense(_) | F32Kernel::Winograd(..) => rows * cols * cols_w,
            F32Kernel::ColumnBlocked(k) | F32Kernel::Unfolding(k) => k.row_ptr.last().map_or(0, |&n| n as usize) * cols_w,
            F32Kernel::Blocked(b) => b.blk_ptr.last().map_or(0, |&n| n as usize * bcsr::BR) * cols_w,
            F32Kernel::Sparse(c) => c.nnz() * cols_w,
            F32Kernel::Direct(d) => d.others.work(rows, cols, cols_w),
        }
    }

    /// The layer's `rows` cut into consecutive ranges for `threads`: slabs of 16-row multiples
    /// (two per thread) for dense GEMM; about equal non-zeros for the sparse kernels, several per
    /// thread so that work stealing evens out rows of unequal cost, except the column-blocked
    /// kernel, whose every part copies every panel of its input (one per thread); whole blocks
    /// of 4 rows for the blocked kernel.
    pub fn parts(&self, rows: usize, threads: usize) -> Vec<Range<usize>> {
        match self {
            F32Kernel::Dense(_) | F32Kernel::Winograd(..) => {
                let slab = rows.div_ceil(threads).next_multiple_of(16);
                (0..rows).step_by(slab.max(1)).map(|r| r..(r + slab).min(rows)).collect()
            }
            F32Kernel::Sparse(c) => balanced_ranges(&c.row_ptr, threads * 4),
            F32Kernel::Direct(d) => d.others.parts(rows, threads),
            F32Kernel::ColumnBlocked(k) | F32Kernel::Unfolding(k) => balanced_ranges(&k.row_ptr, threads),
            F32Kernel::Blocked(b) => balanced_ranges(&b.blk_ptr, threads * 4)
                .into_iter()
                .map(|blocks| (blocks.start * bcsr::BR).min(rows)..(blocks.end * bcsr::BR).min(rows))
                .collect(),
        }
    }

    /// Rows `rows` of `y = act(W x + bias (+ residual))` on a `[cols, w]` tile, on the calling
    /// thread: `y` holds those rows, `sums.ld` apart (packed on one column), `bias` the whole
    /// layer's, `sums.residual` the same rows of the residual and `sums.relu` the activation after
    /// it, `sums.clip` the clamp after that. The sparse kernels on two columns or more (and the
    /// blocked one on any) add the residual and clamp as they store; the others add it to their
    /// rows after (bit for bit the separate addition), with their own activation off, and clamp
    /// their rows after.
    #[allow(clippy::too_many_arguments)] // the tile, its rows and how the sums end
    #[inline]
    pub fn run_rows(&self, isa: Isa, bias: &[f32], cols: usize, x: &[f32], w: usize, y: &mut [f32], rows: Range<usize>, sums: Sums) {
        let (ld, relu) = (sums.ld, sums.relu && sums.residual.is_none());
        match self {
            F32Kernel::ColumnBlocked(k) | F32Kernel::Unfolding(k) => return kblocked::spmm_kblocked(isa, k, bias, x, w, y, rows, sums),
            F32Kernel::Sparse(c) if w > 1 => return spmm::spmm_strided(isa, c, bias, x, w, y, rows, sums),
            F32Kernel::Direct(d) => return d.others.run_rows(isa, bias, cols, x, w, y, rows, sums),
            F32Kernel::Blocked(b) => return bcsr::spmm_bcsr(isa, b, bias, x, w, y, rows, sums),
            F32Kernel::Sparse(c) => spmv::spmv(isa, c, bias, x, y, rows.clone(), relu),
            F32Kernel::Dense(wt) | F32Kernel::Winograd(_, wt) => {
                let (wt, bias) = (&wt[rows.start * cols..rows.end * cols], &bias[rows.clone()]);
                if w == 1 {
                    dense::dense(isa, wt, rows.len(), cols, bias, x, 1, y, relu)
                } else {
                    dense::dense_strided(isa, wt, rows.len(), cols, bias, x, w, y, relu, ld)
                }
            }
        }
        if let Some(residual) = sums.residual {
            for (i, y) in y.chunks_mut(ld.y).take(rows.len()).enumerate() {
                elementwise::add_in_place(isa, &mut y[..w], &residual[i * ld.y..i * ld.y + w], sums.relu, None);
            }
        }
        if let Some([lo, hi]) = sums.clip {
            for y in y.chunks_mut(ld.y).take(rows.len()) {
                elementwise::each_value_in_place(isa, &mut y[..w], |v| elementwise::clamp(v, lo, hi));
            }
        }
    }
}

/// A quantized layer's packed int8 weights, its dequantization and its input quantization.
#[derive(Debug, Clone)]
pub struct Int8Layer {
    pub matrix: Q8Matrix,
    pub dequant: Dequant,
    pub input_scale: f32,
    pub input_zero: u8,
}

/// An int8 kernel and the weights it adds to the layer's `Int8Layer::matrix`.
#[derive(Debug, Clone)]
pub enum Int8Kernel {
    /// The layer's matrix in groups of four input columns (`q8`).
    Grouped,
    /// A convolution's weights regrouped for the direct kernel (`q8direct`).
    Direct(Arc<ShiftConv>),
    /// The weights in AMX tiles (`q8amx`): a linear layer's batched tiles, or a convolution's
    /// quantized im2col columns.
    Tiles(Arc<TileMatrix>),
}

impl Int8Kernel {
    pub fn kernel(&self) -> Kernel {
        match self {
            Int8Kernel::Grouped => Kernel::Int8,
            Int8Kernel::Direct(_) => Kernel::Int8Direct,
            Int8Kernel::Tiles(_) => Kernel::Int8Tiles,
        }
    }

    /// As `F32Kernel::weights`: the weights this kernel adds to the layer's matrix.
    fn weights(&self) -> (usize, usize) {
        match self {
            Int8Kernel::Grouped => (0, 0),
            Int8Kernel::Direct(s) => (Arc::as_ptr(s) as usize, s.bytes()),
            Int8Kernel::Tiles(t) => (Arc::as_ptr(t) as usize, t.bytes()),
        }
    }
}

/// A weighted layer's kernels: one for tiles of one sample, one for wider tiles.
#[derive(Debug, Clone)]
pub enum Kernels {
    F32 { one_sample: F32Kernel, batched: F32Kernel },
    Int8 { layer: Box<Int8Layer>, one_sample: Int8Kernel, batched: Int8Kernel },
}

impl Kernels {
    /// The kernel that tiles of one sample (`one_sample`) or wider ones run.
    #[inline]
    pub fn kernel(&self, one_sample: bool) -> Kernel {
        match (self, one_sample) {
            (Kernels::F32 { one_sample: k, .. }, true) | (Kernels::F32 { batched: k, .. }, false) => k.kernel(),
            (Kernels::Int8 { one_sample: k, .. }, true) | (Kernels::Int8 { batched: k, .. }, false) => k.kernel(),
        }
    }

    /// The fp32 kernel of those tiles, for a fp32 layer.
    #[inline]
    pub fn f32(&self, one_sample: bool) -> Option<&F32Kernel> {
        match (self, one_sample) {
            (Kernels::F32 { one_sample: k, .. }, true) | (Kernels::F32 { batched: k, .. }, false) => Some(k),
            _ => None,
        }
    }

    /// The int8 layer, for a quantized one.
    #[inline]
    pub fn int8(&self) -> Option<&Int8Layer> {
        match self {
            Kernels::Int8 { layer, .. } => Some(layer),
            Kernels::F32 { .. } => None,
        }
    }

    /// The int8 layer, to fuse what follows into its dequantization.
    pub fn int8_mut(&mut self) -> Option<&mut Int8Layer> {
        match self {
            Kernels::Int8 { layer, .. } => Some(layer),
            Kernels::F32 { .. } => None,
        }
    }

    /// An int8 convolution's weights regrouped for the direct kernel, where some tile runs it.
    pub fn shift(&self) -> Option<&ShiftConv> {
        match self {
            Kernels::Int8 { one_sample: Int8Kernel::Direct(s), .. } | Kernels::Int8 { batched: Int8Kernel::Direct(s), .. } => Some(s),
            _ => None,
        }
    }

    /// A convolution's weights decoded for the fp32 direct kernel, where some tile runs it.
    #[inline]
    pub fn taps(&self) -> Option<&direct::Taps> {
        match self {
            Kernels::F32 { one_sample, batched } => batched.taps().or_else(|| one_sample.taps()),
            Kernels::Int8 { .. } => None,
        }
    }

    /// The int8 kernel of those tiles, for a quantized layer.
    pub fn int8_kernel(&self, one_sample: bool) -> Option<&Int8Kernel> {
        match (self, one_sample) {
            (Kernels::Int8 { one_sample: k, .. }, true) | (Kernels::Int8 { batched: k, .. }, false) => Some(k),
            _ => None,
        }
    }

    /// Bytes of packed weights kept for execution, weights both choices share counted once
    /// (int8 layers: the matrix and 12 bytes per row of dequantization).
    pub fn weight_bytes(&self) -> usize {
        let (a, b, base) = match self {
            Kernels::F32 { one_sample, batched } => (one_sample.weights(), batched.weights(), 0),
            Kernels::Int8 { layer, one_sample, batched } => {
                (one_sample.weights(), batched.weights(), layer.matrix.bytes() + 12 * layer.matrix.rows)
            }
        };
        base + a.1 + if a.0 == b.0 { 0 } else { b.1 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Window;
    use crate::kernels::active_isa;
    use crate::kernels::spmm::Ld;

    /// The fp32 kernel `kernel` on dense `[rows, cols]` weights (`cols` input channels of a 1x1
    /// convolution for the direct kernel, which runs its CSR weights here); None for int8 kernels.
    fn packed(kernel: Kernel, data: &[f32], rows: usize, cols: usize) -> Option<F32Kernel> {
        let csr = Arc::new(Csr::from_dense(data, rows, cols));
        let window = Window { kernel: [1, 1], stride: [1, 1], pads: [0; 4], dilation: [1, 1], ceil_mode: false };
        let g = Geometry { channels: cols, in_hw: [2, 3], out_hw: [2, 3], window, w: 1 };
        Some(match kernel {
            Kernel::Dense => F32Kernel::Dense(Arc::new(data.to_vec())),
            Kernel::Sparse => F32Kernel::Sparse(Arc::new(Csr::from_dense(data, rows, cols).with_narrow_columns())),
            Kernel::Blocked => F32Kernel::Blocked(Arc::new(Bcsr::from_dense(data, rows, cols))),
            // Narrow column blocks, so that these small layers span several.
            Kernel::ColumnBlocked => F32Kernel::ColumnBlocked(Arc::new(KBlocked::from_csr(&csr, 16))),
            Kernel::Unfolding => F32Kernel::Unfolding(Arc::new(KBlocked::from_csr(&csr, 16))),
            Kernel::Direct => DirectWeights::kernel(csr, &g),
            // Rows run on its dense weights (the transform is tested on convolutions, in
            // tests/kernels.rs), so a placeholder transform of one input channel.
            Kernel::Winograd => F32Kernel::Winograd(Arc::new(Winograd::new(&vec![0.0; rows * 9], rows, 1)), Arc::new(data.to_vec())),
            Kernel::Int8 | Kernel::Int8Direct | Kernel::Int8Tiles => return None,
        })
    }

    #[test]
    fn every_f32_kernel_runs_any_row_part_as_the_definition_with_residual_and_strides() {
        let isa = active_isa().unwrap_or(Isa::Scalar);
        for (rows, cols, w) in [(1, 1, 1), (5, 3, 1), (7, 40, 2), (37, 70, 1), (33, 129, 3), (64, 50, 16), (70, 33, 21)] {
            // Weights with about 70% zeros, some rows empty; inputs and residual of both signs.
            let data: Vec<f32> = (0..rows * cols)
                .map(|i| if (i * 7 + i / cols) % 10 < 7 || (i / cols) % 9 == 4 { 0.0 } else { (i % 13) as f32 * 0.1 - 0.6 })
                .collect();
            let bias: Vec<f32> = (0..rows).map(|r| (r % 5) as f32 * 0.2 - 0.4).collect();
            for kernel in Kernel::ALL {
                let Some(k) = packed(kernel, &data, rows, cols) else { continue };
                assert_eq!(k.kernel(), kernel);
                // Packed rows, and (on two columns or more) rows 3 and 5 values apart.
                let lds = if w >= 2 { vec![Ld::packed(w), Ld { x: w + 3, y: w + 5 }] } else { vec![Ld::packed(w)] };
                for ld in lds {
                    let x: Vec<f32> = (0..cols * ld.x).map(|i| ((i * 37) % 23) as f32 * 0.05 - 0.5).collect();
                    let residual: Vec<f32> = (0..rows * ld.y).map(|i| ((i * 11) % 17) as f32 * 0.1 - 0.8).collect();
                    for (relu, with_residual) in [(false, false), (true, false), (false, true), (true, true)] {
                        let mut want = vec![0.0; rows * ld.y];
                        for r in 0..rows {
                            for s in 0..w {
                                let mut v = bias[r] + (0..cols).map(|c| data[r * cols + c] * x[c * ld.x + s]).sum::<f32>();
                                v += if with_residual { residual[r * ld.y + s] } else { 0.0 };
                                want[r * ld.y + s] = if relu { v.max(0.0) } else { v };
                            }
                        }
                        for threads in [1, 2, 3] {
                            let mut y = vec![f32::NAN; rows * ld.y];
                            let mut at = 0;
                            for part in k.parts(rows, threads) {
                                assert_eq!(part.start, at, "{kernel:?}: parts are consecutive");
                                at = part.end;
                                let sums = Sums::new(ld, relu).with_residual(with_residual.then(|| &residual[part.start * ld.y..]));
                                k.run_rows(isa, &bias, cols, &x, w, &mut y[part.start * ld.y..], part, sums);
                            }
                            assert_eq!(at, rows, "{kernel:?}: parts cover the rows");
                            for r in 0..rows {
                                for s in 0..w {
                                    let (got, want) = (y[r * ld.y + s], want[r * ld.y + s]);
                                    assert!(
                                        (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                                        "{kernel:?} [{rows}, {cols}] x {w} {ld:?} relu {relu} residual {with_residual} {threads} threads: row {r} column {s}: {got} != {want}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_direct_kernel_runs_the_tiles_it_does_not_take_on_the_kernel_it_beat() {
        let isa = active_isa().unwrap_or(Isa::Scalar);
        let (rows, cols, w) = (10, 12, 8);
        let data: Vec<f32> = (0..rows * cols).map(|i| if i % 3 == 0 { (i % 7) as f32 * 0.25 - 0.5 } else { 0.0 }).collect();
        let bias: Vec<f32> = (0..rows).map(|r| r as f32 * 0.1).collect();
        let x: Vec<f32> = (0..cols * w).map(|i| ((i * 5) % 11) as f32 * 0.1 - 0.5).collect();
        let Some(F32Kernel::Direct(plain)) = packed(Kernel::Direct, &data, rows, cols) else { unreachable!("a direct kernel") };
        let blocked = packed(Kernel::Blocked, &data, rows, cols).expect("fp32");
        let direct = plain.with_others(blocked.clone());
        assert_eq!(direct.kernel(), Kernel::Direct);
        assert_eq!(direct.parts(rows, 2), blocked.parts(rows, 2));
        assert_eq!(direct.work(rows, cols, w), blocked.work(rows, cols, w));
        let run = |k: &F32Kernel| {
            let mut y = vec![0.0; rows * w];
            k.run_rows(isa, &bias, cols, &x, w, &mut y, 0..rows, Sums::new(Ld::packed(w), true));
            y
        };
        assert_eq!(run(&direct), run(&blocked), "the blocked kernel's sums, bit for bit");
    }

    #[test]
    fn shared_weights_count_once() {
        let data = [1.0, 0.0, 0.0, 2.0];
        let csr = Arc::new(Csr::from_dense(&data, 2, 2));
        let sparse = F32Kernel::Sparse(csr.clone());
        let both = Kernels::F32 { one_sample: sparse.clone(), batched: sparse.clone() };
        assert_eq!(both.weight_bytes(), csr.bytes());
        let dense = F32Kernel::Dense(Arc::new(data.to_vec()));
        assert_eq!(Kernels::F32 { one_sample: sparse, batched: dense }.weight_bytes(), csr.bytes() + 16);
    }
}
