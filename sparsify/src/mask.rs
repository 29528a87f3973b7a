//! Pruning masks: which weights to keep for a target sparsity, by magnitude, for every structure
//! a recipe can ask for. A weight tensor is viewed as `[rows, cols]`: rows are output channels,
//! columns the inputs (times the kernel positions for convolutions).
//!
//! Counts are exact: unstructured masks prune `round(numel * s)` weights; block masks prune
//! `round(blocks * s)` whole blocks; N:M masks keep the `n` largest of every `m` inputs.
//! Ties are broken by position, so a mask is a pure function of the weights.

use serde::{Serialize, Serializer};

/// The shape of what is pruned together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskKind {
    Unstructured,
    /// Blocks of `rows x cols` weights (`1x4`: four consecutive inputs of one output, the int8
    /// VNNI group; `4x1`: one input of four consecutive outputs, the engine's blocked kernel).
    Block {
        rows: usize,
        cols: usize,
    },
    /// Keep `n` of every `m` consecutive inputs (`2:4`).
    NOfM {
        n: usize,
        m: usize,
    },
}

impl MaskKind {
    /// Parses `unstructured`, `RxC` (a block) or `N:M`.
    pub fn parse(s: &str) -> Result<MaskKind, String> {
        let bad = || format!("'{s}' is not a mask: use \"unstructured\", a block such as \"1x4\" or \"4x1\", or N:M such as \"2:4\"");
        if s == "unstructured" {
            return Ok(MaskKind::Unstructured);
        }
        let two = |sep: char| -> Option<(usize, usize)> {
            let (a, b) = s.split_once(sep)?;
            Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
        };
        if let Some((rows, cols)) = two('x') {
            if rows == 0 || cols == 0 {
                return Err(bad());
            }
            return Ok(MaskKind::Block { rows, cols });
        }
        if let Some((n, m)) = two(':') {
            if m == 0 || n == 0 || n >= m {
                return Err(format!("'{s}': N:M needs 0 < N < M"));
            }
            return Ok(MaskKind::NOfM { n, m });
        }
        Err(bad())
    }

    pub fn label(&self) -> String {
        match self {
            MaskKind::Unstructured => "unstructured".into(),
            MaskKind::Block { rows, cols } => format!("{rows}x{cols}"),
            MaskKind::NOfM { n, m } => format!("{n}:{m}"),
        }
    }
}

impl Serialize for MaskKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.label())
    }
}

/// A group of weights pruned together: its score (mean magnitude) and members.
struct Group {
    score: f32,
    members: Vec<usize>,
}

/// Groups of a `[rows, cols]` tensor for a block structure (edge blocks may be smaller).
fn blocks(rows: usize, cols: usize, bh: usize, bw: usize, values: &[f32]) -> Vec<Group> {
    let mut groups = Vec::new();
    for r0 in (0..rows).step_by(bh) {
        for c0 in (0..cols).step_by(bw) {
            let members: Vec<usize> =
                (r0..(r0 + bh).min(rows)).flat_map(|r| (c0..(c0 + bw).min(cols)).map(move |c| r * cols + c)).collect();
            let score = members.iter().map(|&i| values[i].abs()).sum::<f32>() / members.len() as f32;
            groups.push(Group { score, members });
        }
    }
    groups
}

/// Prunes the lowest-scoring groups until `target` weights are pruned: a group that would
/// overshoot is skipped (only edge blocks are smaller than the rest), so the count is exact
/// whenever the group sizes allow it.
fn prune_groups(groups: &[(f32, &[usize])], target: usize, mut prune: impl FnMut(usize)) {
    let mut order: Vec<usize> = (0..groups.len()).collect();
    order.sort_by(|&a, &b| groups[a].0.total_cmp(&groups[b].0).then(a.cmp(&b)));
    let mut pruned = 0;
    for g in order {
        let members = groups[g].1;
        if pruned + members.len() <= target {
            members.iter().for_each(|&i| prune(i));
            pruned += members.len();
        }
        if pruned == target {
            break;
        }
    }
}

/// Indices of the `k` lowest-scoring items, ties broken by index.
fn lowest(scores: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    if k == 0 {
        return vec![];
    }
    let k = k.min(order.len());
    order.select_nth_unstable_by(k - 1, |&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
    order.truncate(k);
    order
}

/// The keep-mask (`true` = kept) of one tensor at `sparsity`.
pub fn layer_mask(values: &[f32], rows: usize, cols: usize, sparsity: f64, kind: MaskKind) -> Vec<bool> {
    let mut keep = vec![true; values.len()];
    match kind {
        MaskKind::Unstructured => {
            let mags: Vec<f32> = values.iter().map(|v| v.abs()).collect();
            for i in lowest(&mags, (values.len() as f64 * sparsity).round() as usize) {
                keep[i] = false;
            }
        }
        MaskKind::Block { rows: bh, cols: bw } => {
            let groups = blocks(rows, cols, bh, bw, values);
            let view: Vec<(f32, &[usize])> = groups.iter().map(|g| (g.score, g.members.as_slice())).collect();
            prune_groups(&view, (values.len() as f64 * sparsity).round() as usize, |i| keep[i] = false);
        }
        MaskKind::NOfM { n, m } => {
            for r in 0..rows {
                for c0 in (0..cols).step_by(m) {
                    let len = m.min(cols - c0);
                    let prune = len - (n * len).div_ceil(m);
                    let mags: Vec<f32> = (0..len).map(|j| values[r * cols + c0 + j].abs()).collect();
                    for j in lowest(&mags, prune) {
                        keep[r * cols + c0 + j] = false;
                    }
                }
            }
        }
    }
    keep
}

/// Keep-masks for several tensors with one global threshold: the `round(total * sparsity)`
/// smallest weights (or blocks) over all of them are pruned. `tensors` are `(values, rows, cols)`.
pub fn global_masks(tensors: &[(&[f32], usize, usize)], sparsity: f64, kind: MaskKind) -> Vec<Vec<bool>> {
    let (bh, bw) = match kind {
        MaskKind::Block { rows, cols } => (rows, cols),
        _ => (1, 1),
    };
    // Number every weight of every tensor consecutively, so groups of all tensors compete.
    let mut offset = 0;
    let mut flat: Vec<Group> = Vec::new();
    for (v, r, c) in tensors {
        flat.extend(
            blocks(*r, *c, bh, bw, v)
                .into_iter()
                .map(|g| Group { score: g.score, members: g.members.iter().map(|m| m + offset).collect() }),
        );
        offset += v.len();
    }
    let mut keep_flat = vec![true; offset];
    let view: Vec<(f32, &[usize])> = flat.iter().map(|g| (g.score, g.members.as_slice())).collect();
    prune_groups(&view, (offset as f64 * sparsity).round() as usize, |i| keep_flat[i] = false);
    let mut keep = Vec::with_capacity(tensors.len());
    let mut at = 0;
    for (v, _, _) in tensors {
        keep.push(keep_flat[at..at + v.len()].to_vec());
        at += v.len();
    }
    keep
}

/// Fraction of `false` in a mask.
pub fn mask_sparsity(keep: &[bool]) -> f64 {
    if keep.is_empty() {
        return 0.0;
    }
    keep.iter().filter(|k| !**k).count() as f64 / keep.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weights(n: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 100.0).collect()
    }

    #[test]
    fn unstructured_prunes_exactly_round_numel_times_s() {
        for (n, s) in [(100, 0.9), (333, 0.5), (10, 0.05), (7, 0.0), (1000, 0.999)] {
            let m = layer_mask(&weights(n), 1, n, s, MaskKind::Unstructured);
            assert_eq!(m.iter().filter(|k| !**k).count(), (n as f64 * s).round() as usize, "n={n} s={s}");
        }
        // The smallest magnitudes go first.
        let m = layer_mask(&[0.5, -0.1, 2.0, 0.2], 1, 4, 0.5, MaskKind::Unstructured);
        assert_eq!(m, vec![true, false, true, false]);
        // Ties break by position: all equal, the first ones go.
        assert_eq!(layer_mask(&[1.0; 4], 2, 2, 0.5, MaskKind::Unstructured), vec![false, false, true, true]);
    }

    #[test]
    fn blocks_prune_whole_blocks() {
        let w = weights(8 * 12);
        for kind in [MaskKind::Block { rows: 1, cols: 4 }, MaskKind::Block { rows: 4, cols: 1 }] {
            let m = layer_mask(&w, 8, 12, 0.75, kind);
            assert_eq!(m.iter().filter(|k| !**k).count(), 72, "{kind:?}");
            let MaskKind::Block { rows: bh, cols: bw } = kind else { unreachable!() };
            for r0 in (0..8).step_by(bh) {
                for c0 in (0..12).step_by(bw) {
                    let vals: Vec<bool> =
                        (r0..r0 + bh).flat_map(|r| (c0..c0 + bw).map(move |c| (r, c))).map(|(r, c)| m[r * 12 + c]).collect();
                    assert!(vals.iter().all(|v| *v == vals[0]), "block at {r0},{c0} split");
                }
            }
        }
    }

    #[test]
    fn n_of_m_keeps_n_per_group() {
        let w = weights(6 * 16);
        let m = layer_mask(&w, 6, 16, 0.5, MaskKind::NOfM { n: 2, m: 4 });
        for g in m.chunks(4) {
            assert_eq!(g.iter().filter(|k| **k).count(), 2);
        }
        assert!((mask_sparsity(&m) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn global_threshold_counts_over_all_tensors() {
        let a: Vec<f32> = vec![0.1; 10];
        let b: Vec<f32> = vec![5.0; 30];
        let masks = global_masks(&[(&a, 1, 10), (&b, 1, 30)], 0.25, MaskKind::Unstructured);
        assert_eq!(masks[0].iter().filter(|k| !**k).count(), 10, "the small tensor goes first");
        assert_eq!(masks[1].iter().filter(|k| !**k).count(), 0);
    }

    /// Distinct magnitudes in a random order with random signs, so the smallest set is unique.
    fn shuffled_weights(n: usize, seed: u64) -> Vec<f32> {
        use rand::{Rng, SeedableRng, seq::SliceRandom};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut v: Vec<f32> = (1..=n).map(|i| i as f32 * 0.37).collect();
        v.shuffle(&mut rng);
        v.iter().map(|x| if rng.random_bool(0.5) { -x } else { *x }).collect()
    }

    /// Every `k`-subset of `0..n`, in lexicographic order.
    fn subsets(n: usize, k: usize) -> Vec<Vec<usize>> {
        let mut out = Vec::new();
        let mut pick: Vec<usize> = (0..k).collect();
        loop {
            out.push(pick.clone());
            let Some(i) = (0..k).rev().find(|&i| pick[i] < n - k + i) else { return out };
            pick[i] += 1;
            for j in i + 1..k {
                pick[j] = pick[j - 1] + 1;
            }
        }
    }

    /// The groups (lists of flat indices) that a brute-force search may prune: single weights,
    /// `bh x bw` blocks, over `tensors` numbered consecutively.
    fn brute_groups(shapes: &[(usize, usize)], bh: usize, bw: usize) -> Vec<Vec<usize>> {
        let mut out = Vec::new();
        let mut offset = 0;
        for &(rows, cols) in shapes {
            for r0 in (0..rows).step_by(bh) {
                for c0 in (0..cols).step_by(bw) {
                    out.push((r0..r0 + bh).flat_map(|r| (c0..c0 + bw).map(move |c| offset + r * cols + c)).collect());
                }
            }
            offset += rows * cols;
        }
        out
    }

    /// Checks that `keep` prunes exactly `count` whole groups and that no other choice of `count`
    /// groups, tried one by one, prunes less total magnitude (ties within f32 rounding allowed).
    fn assert_smallest(values: &[f32], groups: &[Vec<usize>], count: usize, keep: &[bool], what: &str) {
        let pruned: Vec<usize> = (0..groups.len()).filter(|&g| groups[g].iter().all(|&i| !keep[i])).collect();
        let pruned_weights = keep.iter().filter(|k| !**k).count();
        assert!(
            pruned.len() == count && pruned_weights == groups[0].len() * count,
            "{what}: pruned {pruned_weights} weights, not {count} whole groups"
        );
        let cost = |pick: &[usize]| pick.iter().flat_map(|&g| &groups[g]).map(|&i| values[i].abs() as f64).sum::<f64>();
        let best = subsets(groups.len(), count).iter().map(|p| cost(p)).fold(f64::INFINITY, f64::min);
        let got = cost(&pruned);
        assert!(got <= best * (1.0 + 1e-6) + 1e-9, "{what}: pruned magnitude {got}, the smallest possible {best}");
    }

    #[test]
    fn masks_prune_the_smallest_weights_a_brute_force_search_finds() {
        for seed in 0..6 {
            // Unstructured on a 3x4 tensor, blocks on a 4x8 one: every count that can be pruned.
            for (kind, rows, cols, bh, bw) in [
                (MaskKind::Unstructured, 3, 4, 1, 1),
                (MaskKind::Block { rows: 1, cols: 4 }, 4, 8, 1, 4),
                (MaskKind::Block { rows: 4, cols: 1 }, 4, 8, 4, 1),
                (MaskKind::Block { rows: 2, cols: 2 }, 4, 8, 2, 2),
                (MaskKind::Block { rows: 2, cols: 4 }, 4, 8, 2, 4),
            ] {
                let w = shuffled_weights(rows * cols, seed);
                let groups = brute_groups(&[(rows, cols)], bh, bw);
                for count in 0..=groups.len() {
                    let s = (count * bh * bw) as f64 / (rows * cols) as f64;
                    let got = layer_mask(&w, rows, cols, s, kind);
                    assert_smallest(&w, &groups, count, &got, &format!("seed {seed} {kind:?} sparsity {s}"));
                }
            }
            // Global: the pruned weights (or blocks) over two tensors together are the smallest.
            let (a, b) = (shuffled_weights(8, seed + 100), shuffled_weights(12, seed + 200));
            let both: Vec<f32> = a.iter().chain(&b).copied().collect();
            for (kind, bh, bw) in [(MaskKind::Unstructured, 1, 1), (MaskKind::Block { rows: 1, cols: 2 }, 1, 2)] {
                let groups = brute_groups(&[(2, 4), (3, 4)], bh, bw);
                for count in 0..=groups.len() {
                    let s = (count * bh * bw) as f64 / 20.0;
                    let got = global_masks(&[(&a, 2, 4), (&b, 3, 4)], s, kind).concat();
                    assert_smallest(&both, &groups, count, &got, &format!("seed {seed} global {kind:?} sparsity {s}"));
                }
            }
            // N:M: in every group of m inputs of a row, the n kept have the largest magnitudes.
            for (n, m) in [(2, 4), (1, 4), (3, 4), (1, 2), (2, 3)] {
                let cols = 3 * m;
                let w = shuffled_weights(2 * cols, seed + 300);
                let got = layer_mask(&w, 2, cols, 1.0 - n as f64 / m as f64, MaskKind::NOfM { n, m });
                for (g, (keep, vals)) in got.chunks(m).zip(w.chunks(m)).enumerate() {
                    let groups: Vec<Vec<usize>> = (0..m).map(|i| vec![i]).collect();
                    assert_smallest(vals, &groups, m - n, keep, &format!("seed {seed} {n}:{m} group {g}"));
                }
            }
        }
    }

    #[test]
    fn parses_mask_names() {
        assert_eq!(MaskKind::parse("4x1").unwrap(), MaskKind::Block { rows: 4, cols: 1 });
        assert_eq!(MaskKind::parse("2:4").unwrap(), MaskKind::NOfM { n: 2, m: 4 });
        assert!(MaskKind::parse("4:2").is_err());
        assert!(MaskKind::parse("block").is_err());
    }
}
