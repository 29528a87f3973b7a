//! Layer-wise optimal brain surgeon as SparseGPT does it (Frantar & Alistarh, 2023): prune a
//! weight matrix `W [rows, cols]` given the Hessian `H = X^T X / n` of its inputs, column block by
//! column block, each pruned weight's error spread over the row's not-yet-visited weights through
//! the upper Cholesky factor of `H^-1`, so `W' X` stays close to `W X`.

use crate::mask::{MaskKind, layer_mask};

/// SparseGPT's settings: `damp` is added to the Hessian's diagonal as a fraction of its mean
/// (0.01 in the paper), `block` columns share one mask selection (128 in the paper).
#[derive(Debug, Clone, Copy)]
pub struct ObsOptions {
    pub damp: f64,
    pub block: usize,
}

impl Default for ObsOptions {
    /// The paper's settings.
    fn default() -> ObsOptions {
        ObsOptions { damp: 0.01, block: 128 }
    }
}

/// Lower Cholesky factor `L` of a symmetric positive definite `n x n` matrix (`A = L L^T`), or
/// `None` where it is not positive definite.
fn cholesky(a: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let dot: f64 = (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum();
            if i == j {
                let d = a[i * n + i] - dot;
                if d <= 0.0 || !d.is_finite() {
                    return None;
                }
                l[i * n + i] = d.sqrt();
            } else {
                l[i * n + j] = (a[i * n + j] - dot) / l[j * n + j];
            }
        }
    }
    Some(l)
}

/// Inverse of a lower triangular matrix (lower triangular too).
fn invert_lower(l: &[f64], n: usize) -> Vec<f64> {
    let mut inv = vec![0.0; n * n];
    for j in 0..n {
        inv[j * n + j] = 1.0 / l[j * n + j];
        for i in j + 1..n {
            let s: f64 = (j..i).map(|k| l[i * n + k] * inv[k * n + j]).sum();
            inv[i * n + j] = -s / l[i * n + i];
        }
    }
    inv
}

/// The upper Cholesky factor `U` of `H^-1` (`H^-1 = U^T U`), damping `H` by `damp` times its
/// mean diagonal, and tenfold more while it is not positive definite.
pub fn inverse_hessian_factor(hessian: &[f64], n: usize, damp: f64) -> Vec<f64> {
    let mean = (0..n).map(|i| hessian[i * n + i]).sum::<f64>() / n.max(1) as f64;
    let mut damp = damp.max(1e-8) * mean.max(1e-12);
    loop {
        let mut h = hessian.to_vec();
        (0..n).for_each(|i| h[i * n + i] += damp);
        if let Some(l) = cholesky(&h, n) {
            // H^-1 = L^-T L^-1; its lower factor's transpose is the upper factor.
            let li = invert_lower(&l, n);
            let mut hinv = vec![0.0; n * n];
            for i in 0..n {
                for j in 0..=i {
                    let v: f64 = (i..n).map(|k| li[k * n + i] * li[k * n + j]).sum();
                    hinv[i * n + j] = v;
                    hinv[j * n + i] = v;
                }
            }
            if let Some(l2) = cholesky(&hinv, n) {
                let mut u = vec![0.0; n * n];
                for i in 0..n {
                    for j in i..n {
                        u[i * n + j] = l2[j * n + i];
                    }
                }
                return u;
            }
        }
        damp *= 10.0;
    }
}

/// Prunes `weights` (`[rows, cols]`, row-major) to `sparsity` with structure `kind`, updating the
/// kept weights to compensate, given the inputs' Hessian (`[cols, cols]`). Inputs that never
/// vary (a zero diagonal) have their weights pruned first, as they carry nothing.
pub fn prune(weights: &mut [f32], rows: usize, cols: usize, hessian: &[f64], sparsity: f64, kind: MaskKind, o: ObsOptions) {
    let mut h = hessian.to_vec();
    let mut w: Vec<f64> = weights.iter().map(|&v| v as f64).collect();
    for c in 0..cols {
        if h[c * cols + c] == 0.0 {
            h[c * cols + c] = 1.0;
            (0..rows).for_each(|r| w[r * cols + c] = 0.0);
        }
    }
    let u = inverse_hessian_factor(&h, cols, o.damp);
    // N:M groups must not straddle blocks.
    let block = match kind {
        MaskKind::NOfM { m, .. } => o.block.div_ceil(m).max(1) * m,
        MaskKind::Block { cols: bw, .. } => o.block.div_ceil(bw).max(1) * bw,
        MaskKind::Unstructured => o.block.max(1),
    };
    for b0 in (0..cols).step_by(block) {
        let b1 = (b0 + block).min(cols);
        let width = b1 - b0;
        // The block's mask: the weights with the least `w^2 / d^2` (the loss of removing each).
        let mut keep = vec![true; rows * width];
        let select = |w: &[f64], keep: &mut Vec<bool>, c0: usize, c1: usize| {
            let scores: Vec<f32> = (0..rows)
                .flat_map(|r| (c0..c1).map(move |c| (r, c)))
                .map(|(r, c)| (w[r * cols + c].abs() / u[c * cols + c]) as f32)
                .collect();
            let part = layer_mask(&scores, rows, c1 - c0, sparsity, kind);
            for r in 0..rows {
                for c in c0..c1 {
                    keep[r * width + c - b0] = part[r * (c1 - c0) + c - c0];
                }
            }
        };
        if !matches!(kind, MaskKind::NOfM { .. }) {
            select(&w, &mut keep, b0, b1);
        }
        let mut errors = vec![0.0f64; rows * width];
        for c in b0..b1 {
            if let MaskKind::NOfM { m, .. } = kind
                && (c - b0) % m == 0
            {
                select(&w, &mut keep, c, (c + m).min(b1));
            }
            let d = u[c * cols + c];
            for r in 0..rows {
                if keep[r * width + c - b0] {
                    continue;
                }
                let err = w[r * cols + c] / d;
                errors[r * width + c - b0] = err;
                w[r * cols + c] = 0.0;
                // The rest of the block's row absorbs what this weight did.
                for k in c + 1..b1 {
                    w[r * cols + k] -= err * u[c * cols + k];
                }
            }
        }
        // The columns after the block absorb the block's errors at once.
        for r in 0..rows {
            for k in b1..cols {
                let delta: f64 = (b0..b1).map(|c| errors[r * width + c - b0] * u[c * cols + k]).sum();
                w[r * cols + k] -= delta;
            }
        }
    }
    weights.iter_mut().zip(&w).for_each(|(out, &v)| *out = v as f32);
}

/// `tr(D H D^T) / tr(W H W^T)` with `D = W' - W`: how much of the layer's output on the
/// calibration inputs the pruning changed (0: nothing).
pub fn relative_error(before: &[f32], after: &[f32], rows: usize, cols: usize, hessian: &[f64]) -> f64 {
    let quad = |v: &dyn Fn(usize) -> f64| -> f64 {
        let mut total = 0.0;
        for r in 0..rows {
            for i in 0..cols {
                let vi = v(r * cols + i);
                if vi == 0.0 {
                    continue;
                }
                total += vi * (0..cols).map(|j| hessian[i * cols + j] * v(r * cols + j)).sum::<f64>();
            }
        }
        total
    };
    let change = quad(&|i| after[i] as f64 - before[i] as f64);
    change / quad(&|i| before[i] as f64).max(1e-30)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Hessian of correlated inputs: `X^T X / n` for `n` rows of a random mixing of `cols`.
    fn correlated(cols: usize, n: usize, seed: u64) -> Vec<f64> {
        let mut state = seed;
        let mut rand = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 33) as f64 / (1u64 << 31) as f64) - 1.0
        };
        let mix: Vec<f64> = (0..cols * cols).map(|_| rand()).collect();
        let mut h = vec![0.0; cols * cols];
        for _ in 0..n {
            let z: Vec<f64> = (0..cols).map(|_| rand()).collect();
            let x: Vec<f64> = (0..cols).map(|i| (0..cols).map(|k| mix[i * cols + k] * z[k]).sum::<f64>() + z[i]).collect();
            for i in 0..cols {
                for j in 0..cols {
                    h[i * cols + j] += x[i] * x[j] / n as f64;
                }
            }
        }
        h
    }

    #[test]
    fn the_factor_inverts_the_damped_hessian() {
        let n = 12;
        let h = correlated(n, 200, 1);
        let u = inverse_hessian_factor(&h, n, 0.0);
        // (U^T U) (H + damp I) = I, damp being 1e-8 of the mean diagonal.
        let mean = (0..n).map(|i| h[i * n + i]).sum::<f64>() / n as f64;
        for i in 0..n {
            for j in 0..n {
                let hinv_h: f64 = (0..n)
                    .map(|k| {
                        let hinv_ik: f64 = (0..n).map(|m| u[m * n + i] * u[m * n + k]).sum();
                        hinv_ik * (h[k * n + j] + if k == j { 1e-8 * mean } else { 0.0 })
                    })
                    .sum();
                assert!((hinv_h - if i == j { 1.0 } else { 0.0 }).abs() < 1e-6, "{i},{j}: {hinv_h}");
            }
        }
    }

    #[test]
    fn obs_prunes_exactly_and_loses_less_than_magnitude() {
        let (rows, cols) = (16, 40);
        let h = correlated(cols, 400, 2);
        let w: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919 % 1013) as f32 / 506.5 - 1.0) * if i % 3 == 0 { 2.0 } else { 1.0 }).collect();
        let o = ObsOptions { damp: 0.01, block: 16 };
        for kind in [MaskKind::Unstructured, MaskKind::NOfM { n: 2, m: 4 }, MaskKind::Block { rows: 4, cols: 1 }] {
            let mut pruned = w.clone();
            prune(&mut pruned, rows, cols, &h, 0.5, kind, o);
            assert_eq!(pruned.iter().filter(|v| **v == 0.0).count(), rows * cols / 2, "{kind:?}");
            let keep = layer_mask(&w, rows, cols, 0.5, kind);
            let magnitude: Vec<f32> = w.iter().zip(&keep).map(|(v, k)| if *k { *v } else { 0.0 }).collect();
            let (e_obs, e_mag) = (relative_error(&w, &pruned, rows, cols, &h), relative_error(&w, &magnitude, rows, cols, &h));
            assert!(e_obs < 0.7 * e_mag, "{kind:?}: obs {e_obs}, magnitude {e_mag}");
        }
        let mut same = w.clone();
        prune(&mut same, rows, cols, &h, 0.0, MaskKind::Unstructured, o);
        assert!(same.iter().zip(&w).all(|(a, b)| (a - b).abs() < 1e-6), "sparsity 0 changes nothing");
    }
}
