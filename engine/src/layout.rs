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

/// A gather that swaps two axes: each sample `[outer, rows, cols, inner]` becomes
/// `[outer, cols, rows, inner]`, runs of `inner` elements moving whole (a matrix transpose where
/// `inner` is 1; BERT's split into attention heads, `[seq, heads, d] -> [heads, seq, d]`, where
/// it is the head size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Swap {
    pub outer: usize,
    pub rows: usize,
    pub cols: usize,
    pub inner: usize,
}

impl Swap {
    /// The swap `sources` describes, if it is one with `rows` and `cols` both above 1.
    pub fn of(sources: &[u32]) -> Option<Swap> {
        let at = |i: usize| sources.get(i).map(|&s| s as usize);
        let inner = (0..sources.len()).find(|&i| at(i) != Some(i)).filter(|&i| i > 0)?;
        let step = at(inner)?;
        let cols = step / inner;
        if cols < 2 || step != cols * inner {
            return None;
        }
        let rows = (1..).find(|&r| at(r * inner) != Some(r * cols * inner))?;
        let block = rows.checked_mul(cols)?.checked_mul(inner)?;
        if rows < 2 || !sources.len().is_multiple_of(block) {
            return None;
        }
        let swap = Swap { outer: sources.len() / block, rows, cols, inner };
        let fits = sources.iter().enumerate().all(|(i, &s)| {
            let (e, rest) = (i % inner, i / inner);
            let (r, rest) = (rest % rows, rest / rows);
            let (c, o) = (rest % cols, rest / cols);
            s as usize == ((o * rows + r) * cols + c) * inner + e
        });
        fits.then_some(swap)
    }
}

/// Output elements `len` in a row copied from every `step`-th input element from `from` (a run of
/// a gather; `Run::of`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub from: usize,
    pub step: usize,
    pub len: usize,
}

/// Gathers whose runs are shorter than this on average stay element by element.
const MIN_RUN: usize = 4;

impl Run {
    /// `sources` as runs of a constant step, longest first from each start, where they average at
    /// least `MIN_RUN` elements: the phase images of a strided convolution are one run a row
    /// (every second element of an input row at stride 2).
    pub fn of(sources: &[u32]) -> Option<Vec<Run>> {
        let mut runs: Vec<Run> = Vec::new();
        for &s in sources {
            let s = s as usize;
            match runs.last_mut() {
                Some(r) if r.len == 1 && s >= r.from => (r.step, r.len) = (s - r.from, 2),
                Some(r) if r.len > 1 && Some(s) == r.step.checked_mul(r.len).and_then(|d| d.checked_add(r.from)) => r.len += 1,
                _ => runs.push(Run { from: s, step: 1, len: 1 }),
            }
        }
        (runs.len().saturating_mul(MIN_RUN) <= sources.len()).then_some(runs)
    }
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

    /// Transposes of every pair of neighbouring axes are swaps; other permutations and
    /// selections are not.
    #[test]
    fn swaps_of_two_axes_are_recognised_and_nothing_else() {
        let shape = [2, 3, 4, 5];
        let swap = |perm: Vec<usize>| Swap::of(&sources(&Op::Transpose { perm }, &shape).unwrap());
        assert_eq!(swap(vec![0, 2, 1, 3]), Some(Swap { outer: 2, rows: 3, cols: 4, inner: 5 }));
        assert_eq!(swap(vec![0, 1, 3, 2]), Some(Swap { outer: 6, rows: 4, cols: 5, inner: 1 }));
        assert_eq!(swap(vec![1, 0, 2, 3]), Some(Swap { outer: 1, rows: 2, cols: 3, inner: 20 }));
        assert_eq!(swap(vec![2, 3, 0, 1]), Some(Swap { outer: 1, rows: 6, cols: 20, inner: 1 }));
        assert_eq!(swap(vec![0, 1, 2, 3]), None, "the identity moves nothing");
        assert_eq!(swap(vec![3, 1, 2, 0]), None);
        assert_eq!(swap(vec![2, 0, 1, 3]), Some(Swap { outer: 1, rows: 6, cols: 4, inner: 5 }));
        assert_eq!(swap(vec![1, 3, 0, 2]), None);
        let select = sources(&Op::Select { indices: vec![vec![1, 0], vec![0, 1, 2], vec![0, 1, 2, 3], vec![0, 1, 2, 3, 4]] }, &shape);
        assert_eq!(Swap::of(&select.unwrap()), None);
        assert_eq!(Swap::of(&[]), None);
        assert_eq!(Swap::of(&[0, 2, 1]), None);
    }

    #[test]
    fn a_selection_reads_the_chosen_coordinates_of_every_axis() {
        // Rows 2, 0, 0 of a [3, 2] value; both columns.
        let s = sources(&Op::Select { indices: vec![vec![2, 0, 0], vec![0, 1]] }, &[3, 2]).unwrap();
        assert_eq!(s, vec![4, 5, 0, 1, 0, 1]);
        assert_eq!(sources(&Op::Relu, &[3]), None);
    }
}
