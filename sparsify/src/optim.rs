//! The optimizers, on our plain parameter arrays: SGD (momentum, Nesterov) and Adam, both with
//! L2 weight decay added to the gradient, as in PyTorch. Their state is saved in checkpoints.

use crate::recipe::{Optimizer, OptimizerKind};

/// Per-parameter optimizer state.
#[derive(Debug, Clone, PartialEq)]
pub struct OptimState {
    /// SGD momentum buffers, or Adam's first moments.
    pub first: Vec<Vec<f32>>,
    /// Adam's second moments (empty for SGD).
    pub second: Vec<Vec<f32>>,
    /// Steps taken (Adam's bias correction).
    pub steps: u64,
}

impl OptimState {
    pub fn new(sizes: &[usize], kind: OptimizerKind) -> OptimState {
        let zeros = || sizes.iter().map(|&n| vec![0.0; n]).collect();
        OptimState { first: zeros(), second: if kind == OptimizerKind::Adam { zeros() } else { vec![] }, steps: 0 }
    }
}

/// Elements per parallel task of an update (large weights split over the threads); a task's
/// arrays (values, gradient, state, mask) stay in the core's cache between the mask and the
/// update.
const CHUNK: usize = 1 << 14;

/// A run of one parameter's elements: its values, gradient, optimizer state (SGD's momentum or
/// Adam's first moments, and Adam's second moments, empty for SGD), the 0/1 factors of its masks
/// (`None`: unmasked) and whether it is frozen.
struct Run<'a> {
    w: &'a mut [f32],
    g: &'a [f32],
    first: &'a mut [f32],
    second: &'a mut [f32],
    mask: Option<&'a [f32]>,
    frozen: bool,
}

/// The first `n` elements of `s` (all of a shorter one), leaving `s` the rest.
fn split_off<'a>(s: &mut &'a mut [f32], n: usize) -> &'a mut [f32] {
    let n = n.min(s.len());
    let (head, tail) = std::mem::take(s).split_at_mut(n);
    *s = tail;
    head
}

/// `split_off` of a shared slice.
fn split_off_shared<'a>(s: &mut &'a [f32], n: usize) -> &'a [f32] {
    let (head, tail) = s.split_at(n.min(s.len()));
    *s = tail;
    head
}

/// Every parameter's elements in runs of at most `CHUNK`.
fn runs<'a>(
    params: &'a mut [Vec<f32>],
    grads: &'a [Vec<f32>],
    state: &'a mut OptimState,
    masks: &[Option<&'a [f32]>],
    frozen: &[bool],
) -> Vec<Run<'a>> {
    let mut second = state.second.iter_mut();
    let mut runs = Vec::new();
    for ((((w, g), first), mask), &frozen) in params.iter_mut().zip(grads).zip(&mut state.first).zip(masks).zip(frozen) {
        let (mut w, mut g, mut first, mut mask) = (w.as_mut_slice(), g.as_slice(), first.as_mut_slice(), *mask);
        let mut second = second.next().map_or(&mut [][..], |v| v.as_mut_slice());
        while !w.is_empty() {
            let n = CHUNK.min(w.len());
            runs.push(Run {
                w: split_off(&mut w, n),
                g: split_off_shared(&mut g, n),
                first: split_off(&mut first, n),
                second: split_off(&mut second, n),
                mask: mask.as_mut().map(|f| split_off_shared(f, n)),
                frozen,
            });
        }
    }
    runs
}

/// One element's optimizer state, whose first part (SGD's momentum, Adam's first moment) a mask
/// zeroes with the weight.
trait Moments {
    fn mask(&mut self, f: f32);
}

impl Moments for &mut f32 {
    #[inline(always)]
    fn mask(&mut self, f: f32) {
        **self *= f;
    }
}

impl Moments for (&mut f32, &mut f32) {
    #[inline(always)]
    fn mask(&mut self, f: f32) {
        *self.0 *= f;
    }
}

/// `update(w, g, state)` over a run's elements; under a mask, in the same loop, on the gradient
/// times the element's 0/1 factor, then the weight and the first moment times it, so that pruned
/// weights and their momentum stay exactly zero (a pruned `-x` becomes `-0`, as ever).
#[inline(always)]
fn each<S: Moments>(
    w: &mut [f32],
    g: &[f32],
    state: impl Iterator<Item = S>,
    mask: Option<&[f32]>,
    update: impl Fn(&mut f32, f32, &mut S),
) {
    let elements = w.iter_mut().zip(g).zip(state);
    match mask {
        None => elements.for_each(|((w, g), mut s)| update(w, *g, &mut s)),
        Some(factors) => elements.zip(factors).for_each(|(((w, g), mut s), &f)| {
            update(w, g * f, &mut s);
            *w *= f;
            s.mask(f);
        }),
    }
}

/// SGD on one run: `g += wd * w`, then with momentum `b = mu * b + g` and the direction
/// `g + mu * b` (Nesterov) or `b`; `w -= lr * direction`. One loop per case, so each vectorizes.
fn sgd_update(run: Run, [lr, wd, mu]: [f32; 3], nesterov: bool) {
    let (w, g, b, mask) = (run.w, run.g, run.first.iter_mut(), run.mask);
    if mu == 0.0 {
        each(w, g, b, mask, |w, g, _| *w -= lr * (g + wd * *w));
    } else if nesterov {
        each(w, g, b, mask, |w, g, b| {
            let g = g + wd * *w;
            **b = mu * **b + g;
            *w -= lr * (g + mu * **b);
        });
    } else {
        each(w, g, b, mask, |w, g, b| {
            **b = mu * **b + (g + wd * *w);
            *w -= lr * **b;
        });
    }
}

/// Adam on one run, with L2 weight decay added to the gradient; `c1`, `c2`: the bias corrections
/// of this step.
fn adam_update(run: Run, [lr, wd, b1, b2, c1, c2]: [f32; 6]) {
    let moments = run.first.iter_mut().zip(run.second.iter_mut());
    each(run.w, run.g, moments, run.mask, |w, g, (m, v)| {
        let g = g + wd * *w;
        **m = b1 * **m + (1.0 - b1) * g;
        **v = b2 * **v + (1.0 - b2) * g * g;
        *w -= lr * (**m / c1) / ((**v / c2).sqrt() + 1e-8);
    });
}

/// Updates `params[i] -= lr * direction(grads[i])` for every parameter not `frozen`. Where
/// `masks[i]` holds a parameter's mask factors, the update reads its gradients masked and leaves
/// its pruned values and momentum (Adam: first moments) zero; a frozen parameter's values and
/// momentum are masked alone.
pub fn step(
    o: &Optimizer,
    state: &mut OptimState,
    params: &mut [Vec<f32>],
    grads: &[Vec<f32>],
    masks: &[Option<&[f32]>],
    frozen: &[bool],
    lr: f64,
) {
    state.steps += 1;
    let (lr, wd, mu) = (lr as f32, o.weight_decay as f32, o.momentum as f32);
    let [b1, b2] = [o.betas[0] as f32, o.betas[1] as f32];
    let corrections = [1.0 - b1.powi(state.steps as i32), 1.0 - b2.powi(state.steps as i32)];
    let (kind, nesterov) = (o.kind, o.nesterov);
    crate::ops::for_each(runs(params, grads, state, masks, frozen).into_iter(), |run| match (run.frozen, run.mask) {
        (true, Some(f)) => {
            crate::prune::zero_pruned(run.w, f);
            crate::prune::zero_pruned(run.first, f);
        }
        (true, None) => {}
        (false, _) => match kind {
            OptimizerKind::Sgd => sgd_update(run, [lr, wd, mu], nesterov),
            OptimizerKind::Adam => adam_update(run, [lr, wd, b1, b2, corrections[0], corrections[1]]),
        },
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sgd(momentum: f64, nesterov: bool, wd: f64) -> Optimizer {
        Optimizer { kind: OptimizerKind::Sgd, momentum, nesterov, weight_decay: wd, betas: [0.9, 0.999] }
    }

    #[test]
    fn sgd_matches_hand_computation() {
        let o = sgd(0.9, false, 0.1);
        let mut s = OptimState::new(&[1], o.kind);
        let mut p = vec![vec![1.0f32]];
        step(&o, &mut s, &mut p, &[vec![0.5]], &[None], &[false], 0.1);
        // g = 0.5 + 0.1 * 1 = 0.6; buf = 0.6; w = 1 - 0.06
        assert!((p[0][0] - 0.94).abs() < 1e-6);
        step(&o, &mut s, &mut p, &[vec![0.5]], &[None], &[false], 0.1);
        // g = 0.5 + 0.094 = 0.594; buf = 0.54 + 0.594 = 1.134; w = 0.94 - 0.1134
        assert!((p[0][0] - 0.8266).abs() < 1e-6);
        let o = sgd(0.9, true, 0.0);
        let mut s = OptimState::new(&[1], o.kind);
        let mut p = vec![vec![1.0f32]];
        step(&o, &mut s, &mut p, &[vec![1.0]], &[None], &[false], 0.1);
        // buf = 1; d = 1 + 0.9 = 1.9
        assert!((p[0][0] - 0.81).abs() < 1e-6);
    }

    #[test]
    fn adam_first_step_moves_by_lr() {
        let o = Optimizer { kind: OptimizerKind::Adam, momentum: 0.0, nesterov: false, weight_decay: 0.0, betas: [0.9, 0.999] };
        let mut s = OptimState::new(&[2], o.kind);
        let mut p = vec![vec![1.0f32, 1.0]];
        step(&o, &mut s, &mut p, &[vec![3.0, -0.01]], &[None], &[false], 0.01);
        assert!((p[0][0] - 0.99).abs() < 1e-5 && (p[0][1] - 1.01).abs() < 1e-4, "{p:?}");
    }

    /// A masked update over more than one run gives, bit for bit, what zeroing the gradient,
    /// updating the whole array and zeroing the values and momentum gives; a frozen masked
    /// parameter is only zeroed.
    #[test]
    fn masks_act_inside_the_update_across_runs() {
        let o = sgd(0.9, true, 5e-4);
        let n = CHUNK + 5;
        let values: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1013) as f32 / 500.0 - 1.0).collect();
        let grads: Vec<f32> = (0..n).map(|i| ((i * 104729) % 997) as f32 / 400.0 - 1.2).collect();
        let mask: Vec<f32> = (0..n).map(|i| if i % 3 == 0 { 0.0 } else { 1.0 }).collect();
        let mut s = OptimState::new(&[n, n], o.kind);
        let mut p = vec![values.clone(), values.clone()];
        for _ in 0..2 {
            step(&o, &mut s, &mut p, &[grads.clone(), grads.clone()], &[Some(&mask), Some(&mask)], &[false, true], 0.1);
        }
        // The same steps as three passes: gradients masked, the update, weights and momentum
        // masked.
        let (mut w, mut b) = (values.clone(), vec![0.0f32; n]);
        for _ in 0..2 {
            let mut g = grads.clone();
            crate::prune::zero_pruned(&mut g, &mask);
            for ((w, g), b) in w.iter_mut().zip(&g).zip(b.iter_mut()) {
                let g = g + 5e-4 * *w;
                *b = 0.9 * *b + g;
                *w -= 0.1 * (g + 0.9 * *b);
            }
            crate::prune::zero_pruned(&mut w, &mask);
            crate::prune::zero_pruned(&mut b, &mask);
        }
        assert!(p[0].iter().zip(&w).all(|(a, b)| a.to_bits() == b.to_bits()), "masked update");
        assert!(s.first[0].iter().zip(&b).all(|(a, b)| a.to_bits() == b.to_bits()), "masked momentum");
        let mut frozen = values.clone();
        crate::prune::zero_pruned(&mut frozen, &mask);
        assert_eq!(p[1], frozen, "a frozen parameter is only masked");
        assert!(p[0].iter().step_by(3).all(|v| *v == 0.0));
    }
}
