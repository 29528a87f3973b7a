//! Applies a recipe's pruning modifiers during training: which parameters each targets, when
//! masks are updated (at `start_epoch`, every `update_frequency` epochs, and at `end_epoch`),
//! the target sparsity of each update, and keeping pruned weights and their gradients at zero.

use regex::Regex;

use crate::mask::{self, MaskKind};
use crate::model::Network;
use crate::recipe::{Recipe, Scope};

/// The token that targets every prunable weight, as in SparseML.
pub const ALL_PRUNABLE: &str = "__ALL_PRUNABLE__";

/// Parameter indices matched by `patterns` (names, `*`/`?` globs, `re:` regular expressions, or
/// `__ALL_PRUNABLE__`); a pattern that matches nothing is an error.
pub fn resolve_params(net: &Network, patterns: &[String]) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for p in patterns {
        let matched: Vec<usize> = if p == ALL_PRUNABLE {
            net.prunable()
        } else if let Some(re) = p.strip_prefix("re:") {
            let re = Regex::new(re).map_err(|e| format!("params: bad regular expression '{re}': {e}"))?;
            (0..net.params.len()).filter(|&i| re.is_match(&net.params[i].name)).collect()
        } else {
            (0..net.params.len()).filter(|&i| glob(p, &net.params[i].name)).collect()
        };
        if matched.is_empty() {
            let names: Vec<&str> = net.params.iter().map(|p| p.name.as_str()).collect();
            return Err(format!("params: '{p}' matches no parameter of this model ({})", names.join(", ")));
        }
        if let Some(&b) = matched.iter().find(|&&i| !net.params[i].prunable) {
            return Err(format!("params: '{p}' matches '{}', which is not a prunable weight", net.params[b].name));
        }
        out.extend(matched);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// `*` matches any run of characters, `?` any one character.
pub fn glob(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    fn rec(p: &[char], n: &[char]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some('*'), _) => rec(&p[1..], n) || (!n.is_empty() && rec(p, &n[1..])),
            (Some('?'), Some(_)) => rec(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => rec(&p[1..], &n[1..]),
            _ => false,
        }
    }
    rec(&p, &n)
}

/// `[rows, cols]` view of a parameter for masking.
fn matrix(net: &Network, i: usize) -> (usize, usize) {
    let s = &net.params[i].shape;
    (s[0], s[1..].iter().product::<usize>().max(1))
}

/// The masks of one parameter combined into 0/1 factors (empty when no mask is in force), for
/// the liveness of the modifiers and the mask generation they were built from.
#[derive(Debug, Clone)]
struct Factors {
    live: Vec<bool>,
    generation: u64,
    values: Vec<f32>,
}

/// Pruning state through training.
#[derive(Debug, Clone)]
pub struct Pruner {
    /// Parameters targeted by each gradual modifier.
    pub gmp_targets: Vec<Vec<usize>>,
    /// Parameters held by each constant-pruning modifier.
    pub constant_targets: Vec<Vec<usize>>,
    /// Epoch of each gradual modifier's last mask update.
    pub last_update: Vec<Option<f64>>,
    /// Mask of each gradual modifier's parameters (by parameter index).
    pub gmp_masks: Vec<Vec<Option<Vec<bool>>>>,
    /// Mask of each constant-pruning modifier, fixed when it starts.
    pub constant_masks: Vec<Vec<Option<Vec<bool>>>>,
    /// Per parameter, the masks in force combined into 0/1 factors, with the modifiers' liveness
    /// and the mask generation they were built for: applying them is a vectorised multiply.
    factors: Vec<Option<Factors>>,
    /// Bumped whenever a mask changes.
    generation: u64,
}

impl Pruner {
    pub fn new(recipe: &Recipe, net: &Network) -> Result<Pruner, String> {
        let gmp_targets: Vec<Vec<usize>> = recipe.pruning.iter().map(|g| resolve_params(net, &g.params)).collect::<Result<_, _>>()?;
        let mut seen = vec![false; net.params.len()];
        for t in gmp_targets.iter().flatten() {
            if std::mem::replace(&mut seen[*t], true) {
                return Err(format!("params: '{}' is targeted by two gmp modifiers", net.params[*t].name));
            }
        }
        for (g, targets) in recipe.pruning.iter().zip(&gmp_targets) {
            if let crate::recipe::FinalSparsity::PerParam(m) = &g.final_sparsity
                && let Some(k) = m.keys().find(|k| !targets.iter().any(|&t| &net.params[t].name == *k))
            {
                return Err(format!("final_sparsity: '{k}' is not among the parameters this modifier targets"));
            }
        }
        let constant_targets: Vec<Vec<usize>> =
            recipe.constant_pruning.iter().map(|c| resolve_params(net, &c.params)).collect::<Result<_, _>>()?;
        let n = net.params.len();
        Ok(Pruner {
            last_update: vec![None; gmp_targets.len()],
            gmp_masks: vec![vec![None; n]; gmp_targets.len()],
            constant_masks: vec![vec![None; n]; constant_targets.len()],
            factors: vec![None; n],
            generation: 0,
            gmp_targets,
            constant_targets,
        })
    }

    /// Updates masks that are due at fractional `epoch`; returns whether any changed.
    pub fn update(&mut self, recipe: &Recipe, net: &Network, epoch: f64) -> bool {
        let mut changed = false;
        for (m, g) in recipe.pruning.iter().enumerate() {
            if epoch < g.start_epoch {
                continue;
            }
            let due = match self.last_update[m] {
                None => true,
                Some(last) if last >= g.end_epoch => false,
                Some(_) if epoch >= g.end_epoch => true,
                Some(_) if g.update_frequency == -1.0 => true,
                Some(last) => epoch >= last + g.update_frequency - 1e-9,
            };
            if !due {
                continue;
            }
            let at = epoch.min(g.end_epoch);
            let targets = &self.gmp_targets[m];
            match g.scope {
                Scope::Layer => {
                    for &t in targets {
                        let (rows, cols) = matrix(net, t);
                        let s = g.target(&net.params[t].name, at);
                        self.gmp_masks[m][t] = Some(mask::layer_mask(&net.params[t].values, rows, cols, s, g.mask));
                    }
                }
                Scope::Global => {
                    let views: Vec<(&[f32], usize, usize)> = targets
                        .iter()
                        .map(|&t| {
                            let (r, c) = matrix(net, t);
                            (net.params[t].values.as_slice(), r, c)
                        })
                        .collect();
                    let s = g.target("", at);
                    for (&t, keep) in targets.iter().zip(mask::global_masks(&views, s, g.mask)) {
                        self.gmp_masks[m][t] = Some(keep);
                    }
                }
            }
            self.last_update[m] = Some(at);
            self.generation += 1;
            changed = true;
        }
        for (c, cp) in recipe.constant_pruning.iter().enumerate() {
            if epoch >= cp.start_epoch && self.constant_masks[c].iter().all(Option::is_none) {
                for &t in &self.constant_targets[c] {
                    self.constant_masks[c][t] = Some(net.params[t].values.iter().map(|v| *v != 0.0).collect());
                }
                self.generation += 1;
                changed = true;
            }
        }
        changed
    }

    /// Which modifiers hold their masks at `epoch`: gradual ones, then constant ones.
    fn liveness(recipe: &Recipe, epoch: f64) -> Vec<bool> {
        let gmp = recipe.pruning.iter().map(|g| epoch >= g.start_epoch && (g.leave_enabled || epoch < g.end_epoch));
        let constant = recipe.constant_pruning.iter().map(|c| epoch >= c.start_epoch && (c.end_epoch < 0.0 || epoch < c.end_epoch));
        gmp.chain(constant).collect()
    }

    /// Zeroes the entries of `values` (a parameter, its gradient or its momentum) that the masks
    /// in force at `epoch` prune.
    pub fn zero_pruned(&mut self, recipe: &Recipe, p: usize, epoch: f64, values: &mut [f32]) {
        let live = Self::liveness(recipe, epoch);
        let fresh = matches!(&self.factors[p], Some(f) if f.live == live && f.generation == self.generation);
        if !fresh {
            let n_gmp = recipe.pruning.len();
            let masks =
                live.iter().enumerate().filter(|(_, l)| **l).filter_map(|(i, _)| {
                    if i < n_gmp { self.gmp_masks[i][p].as_ref() } else { self.constant_masks[i - n_gmp][p].as_ref() }
                });
            let mut factors: Option<Vec<f32>> = None;
            for mask in masks {
                let f = factors.get_or_insert_with(|| vec![1.0; mask.len()]);
                f.iter_mut().zip(mask).for_each(|(f, &keep)| *f = if keep { *f } else { 0.0 });
            }
            self.factors[p] = Some(Factors { live, generation: self.generation, values: factors.unwrap_or_default() });
        }
        let factors = &self.factors[p].as_ref().expect("built above").values;
        if !factors.is_empty() {
            values.iter_mut().zip(factors).for_each(|(v, f)| *v *= f);
        }
    }

    /// Parameters any modifier targets, in order.
    pub fn targeted(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self.gmp_targets.iter().chain(&self.constant_targets).flatten().copied().collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Masks of every gradual modifier flattened for checkpoints: `(modifier, param, mask)`.
    pub fn saved_masks(&self) -> Vec<(String, &[bool])> {
        let mut out = Vec::new();
        for (kind, all) in [("gmp", &self.gmp_masks), ("constant", &self.constant_masks)] {
            for (m, masks) in all.iter().enumerate() {
                for (p, mask) in masks.iter().enumerate() {
                    if let Some(mask) = mask {
                        out.push((format!("{kind}.{m}.{p}"), mask.as_slice()));
                    }
                }
            }
        }
        out
    }

    /// Restores a mask saved by `saved_masks`.
    pub fn restore_mask(&mut self, key: &str, mask: Vec<bool>) -> Result<(), String> {
        let parts: Vec<&str> = key.split('.').collect();
        let bad = || format!("checkpoint mask '{key}' does not fit this recipe");
        let [kind, m, p] = parts[..] else { return Err(bad()) };
        let (m, p): (usize, usize) = (m.parse().map_err(|_| bad())?, p.parse().map_err(|_| bad())?);
        let all = if kind == "gmp" { &mut self.gmp_masks } else { &mut self.constant_masks };
        *all.get_mut(m).and_then(|v| v.get_mut(p)).ok_or_else(bad)? = Some(mask);
        self.generation += 1;
        Ok(())
    }
}

/// Fraction of zeros over a set of parameters.
pub fn sparsity_of(net: &Network, params: &[usize]) -> f64 {
    let (zeros, total) = params.iter().fold((0usize, 0usize), |(z, t), &p| {
        let v = &net.params[p].values;
        (z + v.iter().filter(|x| **x == 0.0).count(), t + v.len())
    });
    if total == 0 { 0.0 } else { zeros as f64 / total as f64 }
}

/// The mask kind label for reports.
pub fn structure(recipe: &Recipe) -> String {
    recipe.pruning.first().map_or("dense".into(), |g| if g.mask == MaskKind::Unstructured { "unstructured".into() } else { g.mask.label() })
}

#[cfg(test)]
mod tests {
    #[test]
    fn globs() {
        assert!(super::glob("fc*.weight", "fc1.weight"));
        assert!(super::glob("conv?.weight", "conv2.weight"));
        assert!(!super::glob("fc*.weight", "fc1.bias"));
    }
}
