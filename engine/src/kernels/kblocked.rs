//! Unstructured sparse weights split into blocks of `kc` input columns, `f32-spmm-csr-kc`.
//!
//! The plain CSR kernel reads, for every non-zero, a 64-column row of the activation panel
//! (`cols x 64` floats, 512 KiB for 2048 inputs) from L2. Taking the columns `kc` at a time
//! keeps that block's slice of the panel (`kc x 64 x 4` bytes, 32 KiB for `kc = 128`) in L1
//! while every output row consumes it; the price is reading and writing the output rows once per
//! block. The compiler keeps whichever of the two is faster on the layer's real shape.

use std::ops::Range;

use super::Isa;
use super::csr::Csr;
use super::spmm::{spmm_acc, spmm_acc_ref};

/// Input columns per block: 128 x 64 samples x 4 bytes = 32 KiB, within a 48 KiB L1.
pub const DEFAULT_KC: usize = 128;

/// A CSR matrix cut into column blocks, each a CSR of the same rows with absolute column indices.
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
        let mut blocks: Vec<Csr> =
            (0..n_blocks).map(|_| Csr { rows: m.rows, cols: m.cols, row_ptr: vec![0], col: vec![], val: vec![], col16: None }).collect();
        for r in 0..m.rows {
            for j in m.row_ptr[r] as usize..m.row_ptr[r + 1] as usize {
                let b = &mut blocks[m.col[j] as usize / kc];
                b.col.push(m.col[j]);
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
}

/// Same contract as `spmm::spmm`.
pub fn spmm_kblocked(isa: Isa, m: &KBlocked, bias: &[f32], x: &[f32], w: usize, y: &mut [f32], rows: Range<usize>, relu: bool) {
    let last = m.blocks.len() - 1;
    for (i, b) in m.blocks.iter().enumerate() {
        spmm_acc(isa, b, bias, x, w, y, rows.clone(), relu && i == last, i > 0);
    }
}

/// The scalar twin.
pub fn spmm_kblocked_ref(m: &KBlocked, bias: &[f32], x: &[f32], w: usize, y: &mut [f32], rows: Range<usize>, relu: bool) {
    let last = m.blocks.len() - 1;
    for (i, b) in m.blocks.iter().enumerate() {
        spmm_acc_ref(b, bias, x, w, y, rows.clone(), relu && i == last, i > 0);
    }
}
