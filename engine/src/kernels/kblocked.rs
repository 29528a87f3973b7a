//! Unstructured sparse weights in blocks of `kc` input columns over packed panels of the input,
//! `f32-spmm-csr-kc`.
//!
//! The plain CSR kernel reads, for every non-zero, a 64-column strip of one input row, and walks
//! all `cols` input rows for each output row: on ResNet-50's 3x3 layers (2304 inputs) a strip of
//! the input is 590 KiB, read from L2 once per non-zero, and rows of a tile lie `w` floats apart,
//! so each strip straddles cache lines. Here each 64-column strip is taken `kc` input rows at a
//! time: that block of the strip is copied into a packed panel (`kc x 64 x 4` bytes, 32 KiB for
//! `kc = 128`, in L1) and every output row consumes it, accumulating into the output strip (in
//! L2). The price is the copy and reading and writing the output strip once per block; the
//! compiler keeps this kernel only where it times faster than the plain one on the layer's shape.
//!
//! On a convolution the panels can come straight from the image (`spmm_kblocked_unfolded`,
//! `window::Unfold`), so its im2col buffer is never written: `f32-conv-unfold-kc128`.

use std::ops::Range;

use super::Isa;
use super::csr::Csr;
use super::lines::line_offset;
use super::spmm::{Ld, Sums, spmm_strided, spmm_strided_ref};
use super::window::Unfold;

/// Input rows per block: 128 x 64 columns x 4 bytes = 32 KiB, within a 48 KiB L1.
pub const DEFAULT_KC: usize = 128;

/// Columns of a strip, as the AVX-512 CSR kernel's widest loop.
pub const STRIP: usize = 64;

/// A CSR matrix cut into column blocks: block `b` holds columns `b * kc ..` of the same rows,
/// its column indices relative to the block's first column.
#[derive(Debug, Clone, PartialEq)]
pub struct KBlocked {
    pub rows: usize,
    pub cols: usize,
    pub kc: usize,
    /// At least one block (an empty one when `cols == 0`).
    pub blocks: Vec<Csr>,
    /// Non-zeros per row over all blocks, cumulative (`rows + 1`), for balancing threads.
    pub row_ptr: Vec<u32>,
}

impl KBlocked {
    pub fn from_csr(m: &Csr, kc: usize) -> KBlocked {
        let kc = kc.max(1);
        let n_blocks = m.cols.div_ceil(kc).max(1);
        let width = |b: usize| kc.min(m.cols.saturating_sub(b * kc));
        let mut blocks: Vec<Csr> =
            (0..n_blocks).map(|b| Csr { rows: m.rows, cols: width(b), row_ptr: vec![0], col: vec![], val: vec![], col16: None }).collect();
        for r in 0..m.rows {
            for j in m.row_ptr[r] as usize..m.row_ptr[r + 1] as usize {
                let c = m.col[j] as usize;
                let b = &mut blocks[c / kc];
                b.col.push((c % kc) as u32);
                b.val.push(m.val[j]);
            }
            for b in &mut blocks {
                b.row_ptr.push(b.val.len() as u32);
            }
        }
        KBlocked { rows: m.rows, cols: m.cols, kc, blocks, row_ptr: m.row_ptr.clone() }
    }

    pub fn bytes(&self) -> usize {
        self.blocks.iter().map(Csr::bytes).sum()
    }

    /// Floats of the panel scratch one call uses, with room to start it on a cache line.
    pub fn panel_len(&self) -> usize {
        self.kc.min(self.cols) * STRIP + 16
    }
}

/// Same contract as `spmm::spmm_strided`: output rows `rows` of `y`, from the `[cols, w]` input
/// `x`, rows and sums as `sums` says.
pub fn spmm_kblocked(isa: Isa, m: &KBlocked, bias: &[f32], x: &[f32], w: usize, y: &mut [f32], rows: Range<usize>, sums: Sums) {
    let ld = sums.ld;
    assert!(ld.x >= w && ld.y >= w, "leading dimensions below the width");
    assert!(m.cols == 0 || x.len() >= (m.cols - 1) * ld.x + w, "input tile too small");
    with_panel(m, |panel| run(isa, m, bias, Input::Tile(x), w, y, rows, sums, panel))
}

/// `spmm_kblocked` on a convolution's image: its input is the unfolded matrix `x` stands for
/// (`[m.cols, x.columns()]`), each panel unfolded straight from the image (`sums.ld.x` unused).
pub fn spmm_kblocked_unfolded(isa: Isa, m: &KBlocked, bias: &[f32], x: &Unfold, y: &mut [f32], rows: Range<usize>, sums: Sums) {
    assert!(x.taps() == m.cols && sums.ld.y >= x.columns(), "unfolded input does not match the layer");
    with_panel(m, |panel| run(isa, m, bias, Input::Image(x), x.columns(), y, rows, sums, panel))
}

/// Where a call's input columns come from.
#[derive(Clone, Copy)]
enum Input<'a> {
    /// A `[cols, w]` tile, rows `ld.x` apart.
    Tile(&'a [f32]),
    /// A convolution's image, unfolded panel by panel.
    Image(&'a Unfold<'a>),
}

/// `f` on this thread's panel, grown to `m.panel_len()` where it is shorter.
fn with_panel(m: &KBlocked, f: impl FnOnce(&mut [f32])) {
    PANEL.with_borrow_mut(|panel| {
        if panel.len() < m.panel_len() {
            panel.resize(m.panel_len(), 0.0);
        }
        f(panel)
    })
}

thread_local! {
    /// Each thread's panel, kept between calls: a fresh 32 KiB buffer per call page-faulted
    /// inside whole models, where the allocator had given the memory back.
    static PANEL: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Block `i`'s sums of a call's `sums` on rows `ld` apart: each block after the first adds to
/// the ones before it, and the last one finishes the sums (the residual, the ReLU, the clip).
fn block_sums<'a>(m: &KBlocked, i: usize, sums: &Sums<'a>, ld: Ld) -> Sums<'a> {
    let last = i + 1 == m.blocks.len();
    Sums {
        ld,
        relu: sums.relu && last,
        accumulate: sums.accumulate || i > 0,
        residual: sums.residual.filter(|_| last),
        clip: sums.clip.filter(|_| last),
    }
}

#[allow(clippy::too_many_arguments)] // spmm_kblocked's arguments and its panel
fn run(isa: Isa, m: &KBlocked, bias: &[f32], x: Input, w: usize, y: &mut [f32], rows: Range<usize>, sums: Sums, panel: &mut [f32]) {
    let ld = sums.ld;
    let mut c0 = 0;
    while c0 < w {
        let cw = STRIP.min(w - c0);
        // The strip's columns of the residual.
        let strip_sums = sums.with_residual(sums.residual.map(|r| &r[c0..]));
        // Panel rows start on cache lines (the panel on one, rows a multiple of 16 floats
        // apart): the kernel's vector loads then never straddle two lines.
        let row_len = cw.next_multiple_of(16);
        let start = line_offset(panel);
        for (i, b) in m.blocks.iter().enumerate() {
            // This block's input rows of the strip, packed `row_len` apart.
            let first = i * m.kc;
            let block = &mut panel[start..start + b.cols * row_len];
            match x {
                Input::Tile(x) => {
                    for (r, row) in block.chunks_exact_mut(row_len).enumerate() {
                        let at = (first + r) * ld.x + c0;
                        copy_row(&mut row[..cw], &x[at..at + cw]);
                    }
                }
                Input::Image(image) => image.fill(first..first + b.cols, c0..c0 + cw, block, row_len),
            }
            let sums = block_sums(m, i, &strip_sums, Ld { x: row_len, y: ld.y });
            spmm_strided(isa, b, bias, block, cw, &mut y[c0..], rows.clone(), sums);
        }
        c0 += cw;
    }
}

/// Copies a strip's row in 16-float arrays, which compile to single vector moves (a call to
/// `memcpy` per row had taken an eighth of the kernel's time, and copying slices of 16 still
/// called it: a tenth of ResNet-50's batch-1 run at 90%).
pub(super) fn copy_row(to: &mut [f32], from: &[f32]) {
    let (pieces, to_rest) = to.as_chunks_mut::<16>();
    let (sources, from_rest) = from.as_chunks::<16>();
    for (t, f) in pieces.iter_mut().zip(sources) {
        *t = *f;
    }
    for (t, f) in to_rest.iter_mut().zip(from_rest) {
        *t = *f;
    }
}

/// The scalar twin: the plain CSR definition over the blocks in turn.
pub fn spmm_kblocked_ref(m: &KBlocked, bias: &[f32], x: &[f32], w: usize, y: &mut [f32], rows: Range<usize>, sums: Sums) {
    for (i, b) in m.blocks.iter().enumerate() {
        let x = &x[(i * m.kc * sums.ld.x).min(x.len())..];
        spmm_strided_ref(b, bias, x, w, y, rows.clone(), block_sums(m, i, &sums, sums.ld));
    }
}
