//! Applies a recipe's pruning modifiers during training: which parameters each targets, when
//! masks are updated (at `start_epoch`, every `update_frequency` epochs, and at `end_epoch`),
//! the target sparsity of each update, and keeping pruned weights and their gradients at zero.

use std::collections::BTreeMap;

use crate::mask::{self, MaskKind};
use crate::model::Network;
use crate::recipe::{ConstantPruning, Gmp, Recipe, Scope};
use crate::targets::{self, TargetError};

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

/// Which of the recipe's modifiers a state belongs to: its place among the recipe's gradual
/// (`Recipe::pruning`) or constant (`Recipe::constant_pruning`) ones.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Modifier {
    Gradual(usize),
    Constant(usize),
}

/// One pruning modifier through training: the parameters it targets, their masks once it has
/// made them, and (gradual ones) the epoch of its last mask update.
#[derive(Debug, Clone)]
struct State {
    modifier: Modifier,
    targets: Vec<usize>,
    /// Mask of each parameter, by parameter index.
    masks: BTreeMap<usize, Vec<bool>>,
    last_update: Option<f64>,
}

impl State {
    /// The checkpoint key of parameter `p`'s mask (`gmp.M.P` or `constant.M.P`, as every
    /// checkpoint has written them).
    fn key(&self, p: usize) -> String {
        match self.modifier {
            Modifier::Gradual(m) => format!("gmp.{m}.{p}"),
            Modifier::Constant(m) => format!("constant.{m}.{p}"),
        }
    }

    /// Whether the modifier holds its masks at `epoch`.
    fn live(&self, recipe: &Recipe, epoch: f64) -> bool {
        match self.modifier {
            Modifier::Gradual(m) => {
                let g = &recipe.pruning[m];
                epoch >= g.start_epoch && (g.leave_enabled || epoch < g.end_epoch)
            }
            Modifier::Constant(m) => {
                let c = &recipe.constant_pruning[m];
                epoch >= c.start_epoch && (c.end_epoch < 0.0 || epoch < c.end_epoch)
            }
        }
    }

    /// A gradual modifier's masks at fractional `epoch` if an update is due; whether it was.
    fn update_gradual(&mut self, g: &Gmp, net: &Network, epoch: f64) -> bool {
        let due = epoch >= g.start_epoch
            && match self.last_update {
                None => true,
                Some(last) if last >= g.end_epoch => false,
                Some(_) if epoch >= g.end_epoch => true,
                Some(_) if g.update_frequency == -1.0 => true,
                Some(last) => epoch >= last + g.update_frequency - 1e-9,
            };
        if !due {
            return false;
        }
        let at = epoch.min(g.end_epoch);
        match g.scope {
            Scope::Layer => {
                for &t in &self.targets {
                    let (rows, cols) = matrix(net, t);
                    let s = g.target(&net.params[t].name, at);
                    self.masks.insert(t, mask::layer_mask(&net.params[t].values, rows, cols, s, g.mask));
                }
            }
            Scope::Global => {
                let views: Vec<(&[f32], usize, usize)> = self
                    .targets
                    .iter()
                    .map(|&t| {
                        let (r, c) = matrix(net, t);
                        (net.params[t].values.as_slice(), r, c)
                    })
                    .collect();
                let masks = mask::global_masks(&views, g.target("", at), g.mask);
                self.masks.extend(self.targets.iter().copied().zip(masks));
            }
        }
        self.last_update = Some(at);
        true
    }

    /// A constant modifier's masks (the zeros its parameters have) when it starts; whether it
    /// made them now.
    fn update_constant(&mut self, c: &ConstantPruning, net: &Network, epoch: f64) -> bool {
        if epoch < c.start_epoch || !self.masks.is_empty() {
            return false;
        }
        for &t in &self.targets {
            self.masks.insert(t, net.params[t].values.iter().map(|v| *v != 0.0).collect());
        }
        true
    }
}

/// Pruning state through training: one state per pruning modifier of the recipe.
#[derive(Debug, Clone)]
pub struct Pruner {
    /// The gradual modifiers' states, in the recipe's order, then the constant ones'.
    states: Vec<State>,
    /// Per parameter, the masks in force combined into 0/1 factors, with the modifiers' liveness
    /// and the mask generation they were built for: applying them is a vectorised multiply.
    factors: Vec<Option<Factors>>,
    /// Bumped whenever a mask changes.
    generation: u64,
}

impl Pruner {
    pub fn new(recipe: &Recipe, net: &Network) -> Result<Pruner, TargetError> {
        let state = |modifier, targets| State { modifier, targets, masks: BTreeMap::new(), last_update: None };
        let gradual = targets::gradual(recipe, net)?.into_iter().enumerate().map(|(m, t)| state(Modifier::Gradual(m), t));
        let constant = targets::constant(recipe, net)?.into_iter().enumerate().map(|(m, t)| state(Modifier::Constant(m), t));
        Ok(Pruner { states: gradual.chain(constant).collect(), factors: vec![None; net.params.len()], generation: 0 })
    }

    /// Updates masks that are due at fractional `epoch`; returns whether any changed.
    pub fn update(&mut self, recipe: &Recipe, net: &Network, epoch: f64) -> bool {
        let mut changed = false;
        for state in &mut self.states {
            let made = match state.modifier {
                Modifier::Gradual(m) => state.update_gradual(&recipe.pruning[m], net, epoch),
                Modifier::Constant(m) => state.update_constant(&recipe.constant_pruning[m], net, epoch),
            };
            if made {
                self.generation += 1;
                changed = true;
            }
        }
        changed
    }

    /// Zeroes the entries of `values` (a parameter, its gradient or its momentum) that the masks
    /// in force at `epoch` prune.
    pub fn zero_pruned(&mut self, recipe: &Recipe, p: usize, epoch: f64, values: &mut [f32]) {
        let live = self.live(recipe, epoch);
        if let Some(factors) = self.refreshed(p, &live) {
            let run = crate::ops::run_length(values.len());
            crate::ops::for_each(values.chunks_mut(run).zip(factors.chunks(run)), |(values, factors)| zero_pruned(values, factors));
        }
    }

    /// Per parameter, the 0/1 factors of the masks in force at `epoch` (`None`: no mask), for the
    /// optimizer to apply as it updates (`optim::step`).
    pub fn factors(&mut self, recipe: &Recipe, epoch: f64) -> Vec<Option<&[f32]>> {
        let live = self.live(recipe, epoch);
        for p in 0..self.factors.len() {
            self.refreshed(p, &live);
        }
        self.factors.iter().map(|f| f.as_ref().map(|f| f.values.as_slice()).filter(|v| !v.is_empty())).collect()
    }

    /// Whether each modifier holds its masks at `epoch`.
    fn live(&self, recipe: &Recipe, epoch: f64) -> Vec<bool> {
        self.states.iter().map(|s| s.live(recipe, epoch)).collect()
    }

    /// Parameter `p`'s factors for the modifiers `live`, rebuilt if a mask or the liveness changed
    /// since they were built; `None` when no mask is in force.
    fn refreshed(&mut self, p: usize, live: &[bool]) -> Option<&[f32]> {
        let fresh = matches!(&self.factors[p], Some(f) if f.live == live && f.generation == self.generation);
        if !fresh {
            let masks = self.states.iter().zip(live).filter(|(_, l)| **l).filter_map(|(s, _)| s.masks.get(&p));
            let mut factors: Option<Vec<f32>> = None;
            for mask in masks {
                let f = factors.get_or_insert_with(|| vec![1.0; mask.len()]);
                f.iter_mut().zip(mask).for_each(|(f, &keep)| *f = if keep { *f } else { 0.0 });
            }
            self.factors[p] = Some(Factors { live: live.to_vec(), generation: self.generation, values: factors.unwrap_or_default() });
        }
        Some(self.factors[p].as_ref().expect("built above").values.as_slice()).filter(|v| !v.is_empty())
    }

    /// Parameters any modifier targets, in order.
    pub fn targeted(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self.states.iter().flat_map(|s| s.targets.iter().copied()).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The gradual modifiers' states, in the recipe's order (they come first).
    fn gradual(&self) -> &[State] {
        let n = self.states.iter().take_while(|s| matches!(s.modifier, Modifier::Gradual(_))).count();
        &self.states[..n]
    }

    /// The parameters each gradual modifier targets, in the recipe's order.
    pub fn gradual_targets(&self) -> impl Iterator<Item = &[usize]> {
        self.gradual().iter().map(|s| s.targets.as_slice())
    }

    /// The epoch of each gradual modifier's last mask update (for checkpoints).
    pub fn last_updates(&self) -> Vec<Option<f64>> {
        self.gradual().iter().map(|s| s.last_update).collect()
    }

    /// Restores the epochs `last_updates` gave; a list that does not fit the recipe is an error.
    pub fn restore_last_updates(&mut self, epochs: &[Option<f64>]) -> Result<(), String> {
        let n = self.gradual().len();
        let gradual = &mut self.states[..n];
        if gradual.len() != epochs.len() {
            return Err(format!("the checkpoint has {} gmp modifiers, the recipe {}", epochs.len(), gradual.len()));
        }
        gradual.iter_mut().zip(epochs).for_each(|(s, &e)| s.last_update = e);
        Ok(())
    }

    /// Every modifier's masks for checkpoints: `(key, mask)`.
    pub fn saved_masks(&self) -> Vec<(String, &[bool])> {
        self.states.iter().flat_map(|s| s.masks.iter().map(|(&p, mask)| (s.key(p), mask.as_slice()))).collect()
    }

    /// Restores a mask saved by `saved_masks`.
    pub fn restore_mask(&mut self, key: &str, mask: Vec<bool>) -> Result<(), String> {
        let bad = || format!("checkpoint mask '{key}' does not fit this recipe");
        let [kind, m, p] = key.split('.').collect::<Vec<_>>()[..] else { return Err(bad()) };
        let (m, p): (usize, usize) = (m.parse().map_err(|_| bad())?, p.parse().map_err(|_| bad())?);
        let modifier = match kind {
            "gmp" => Modifier::Gradual(m),
            "constant" => Modifier::Constant(m),
            _ => return Err(bad()),
        };
        let state = self.states.iter_mut().find(|s| s.modifier == modifier).ok_or_else(bad)?;
        if p >= self.factors.len() {
            return Err(bad());
        }
        state.masks.insert(p, mask);
        self.generation += 1;
        Ok(())
    }
}

/// Zeroes the entries of `values` whose factor is 0 (multiplying, so a pruned entry keeps its
/// sign: `-x * 0 = -0`, as checkpoints have always stored it).
pub fn zero_pruned(values: &mut [f32], factors: &[f32]) {
    values.iter_mut().zip(factors).for_each(|(v, f)| *v *= f);
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
