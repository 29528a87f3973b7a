//! Per-sample rearrangements: a transpose or a selection along axes copies each output element
//! from one input element. `sources` lists, for a sample, which input element each output element
//! reads; the executor copies whole tile rows (one element of every sample) by that list.

use crate::graph::Op;

/// The input element of each output element (row-major) of `op` on a per-sample input of shape
/// `input`: `Some` for `Op::Transpose` and `Op::Select`, whose shapes `Graph::infer_shapes` has
/// checked.
pub fn sources(op: &Op, input: &[usize]) -> Option<Vec<u32>> {
    let mut strides = vec![1usize; input.len()];
    for a in (0..input.len().saturating_sub(1)).rev() {
        strides[a] = strides[a + 1] * input[a + 1];
    }
    // For each output axis, the input offset of each of its coordinates.
    let offsets: Vec<Vec<usize>> = match op {
        Op::Transpose { perm } => perm.iter().map(|&a| (0..input[a]).map(|c| c * strides[a]).collect()).collect(),
        Op::Select { indices } => indices.iter().zip(&strides).map(|(ix, &s)| ix.iter().map(|&i| i * s).collect()).collect(),
        _ => return None,
    };
    let mut sources = vec![0usize];
    for axis in &offsets {
        sources = sources.iter().flat_map(|&p| axis.iter().map(move |&o| p + o)).collect();
    }
    // A sample has at most `MAX_VALUE_ELEMENTS` (2^28) elements, so every offset fits in u32.
    Some(sources.into_iter().map(|s| s as u32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transpose_reads_each_element_from_its_permuted_place() {
        // [2, 3, 4] with axes (2, 0, 1): output [4, 2, 3], out[c][a][b] = in[a][b][c].
        let s = sources(&Op::Transpose { perm: vec![2, 0, 1] }, &[2, 3, 4]).unwrap();
        let mut want = Vec::new();
        for c in 0..4 {
            for a in 0..2 {
                for b in 0..3 {
                    want.push((a * 12 + b * 4 + c) as u32);
                }
            }
        }
        assert_eq!(s, want);
    }

    #[test]
    fn a_selection_reads_the_chosen_coordinates_of_every_axis() {
        // Rows 2, 0, 0 of a [3, 2] value; both columns.
        let s = sources(&Op::Select { indices: vec![vec![2, 0, 0], vec![0, 1]] }, &[3, 2]).unwrap();
        assert_eq!(s, vec![4, 5, 0, 1, 0, 1]);
        assert_eq!(sources(&Op::Relu, &[3]), None);
    }
}
