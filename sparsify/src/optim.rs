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

/// Elements per parallel task of an update (large weights split over the threads).
const CHUNK: usize = 1 << 14;

/// SGD on one run of elements: `g += wd * w`, then with momentum `b = mu * b + g` and the
/// direction `g + mu * b` (Nesterov) or `b`; `w -= lr * direction`. One loop per case, so each
/// vectorizes.
fn sgd_update(w: &mut [f32], g: &[f32], b: &mut [f32], [lr, wd, mu]: [f32; 3], nesterov: bool) {
    let elements = w.iter_mut().zip(g).zip(b.iter_mut());
    if mu == 0.0 {
        elements.for_each(|((w, g), _)| *w -= lr * (g + wd * *w));
    } else if nesterov {
        elements.for_each(|((w, g), b)| {
            let g = g + wd * *w;
            *b = mu * *b + g;
            *w -= lr * (g + mu * *b);
        });
    } else {
        elements.for_each(|((w, g), b)| {
            *b = mu * *b + (g + wd * *w);
            *w -= lr * *b;
        });
    }
}

/// Updates `params[i] -= lr * direction(grads[i])` for every parameter not `frozen`.
pub fn step(o: &Optimizer, state: &mut OptimState, params: &mut [Vec<f32>], grads: &[Vec<f32>], frozen: &[bool], lr: f64) {
    state.steps += 1;
    let (lr, wd, mu) = (lr as f32, o.weight_decay as f32, o.momentum as f32);
    match o.kind {
        OptimizerKind::Sgd => {
            let chunks = params
                .iter_mut()
                .zip(grads)
                .zip(&mut state.first)
                .zip(frozen)
                .filter(|(_, f)| !**f)
                .flat_map(|(((w, g), b), _)| w.chunks_mut(CHUNK).zip(g.chunks(CHUNK)).zip(b.chunks_mut(CHUNK)));
            crate::ops::for_each(chunks, |((w, g), b)| sgd_update(w, g, b, [lr, wd, mu], o.nesterov));
        }
        OptimizerKind::Adam => {
            let [b1, b2] = [o.betas[0] as f32, o.betas[1] as f32];
            let c1 = 1.0 - b1.powi(state.steps as i32);
            let c2 = 1.0 - b2.powi(state.steps as i32);
            let tensors = params.iter_mut().zip(grads).zip(state.first.iter_mut().zip(&mut state.second)).zip(frozen).filter(|(_, f)| !**f);
            crate::ops::for_each(tensors, |(((w, g), (m, v)), _)| {
                for (((w, g), m), v) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                    let g = g + wd * *w;
                    *m = b1 * *m + (1.0 - b1) * g;
                    *v = b2 * *v + (1.0 - b2) * g * g;
                    *w -= lr * (*m / c1) / ((*v / c2).sqrt() + 1e-8);
                }
            });
        }
    }
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
        step(&o, &mut s, &mut p, &[vec![0.5]], &[false], 0.1);
        // g = 0.5 + 0.1 * 1 = 0.6; buf = 0.6; w = 1 - 0.06
        assert!((p[0][0] - 0.94).abs() < 1e-6);
        step(&o, &mut s, &mut p, &[vec![0.5]], &[false], 0.1);
        // g = 0.5 + 0.094 = 0.594; buf = 0.54 + 0.594 = 1.134; w = 0.94 - 0.1134
        assert!((p[0][0] - 0.8266).abs() < 1e-6);
        let o = sgd(0.9, true, 0.0);
        let mut s = OptimState::new(&[1], o.kind);
        let mut p = vec![vec![1.0f32]];
        step(&o, &mut s, &mut p, &[vec![1.0]], &[false], 0.1);
        // buf = 1; d = 1 + 0.9 = 1.9
        assert!((p[0][0] - 0.81).abs() < 1e-6);
    }

    #[test]
    fn adam_first_step_moves_by_lr() {
        let o = Optimizer { kind: OptimizerKind::Adam, momentum: 0.0, nesterov: false, weight_decay: 0.0, betas: [0.9, 0.999] };
        let mut s = OptimState::new(&[2], o.kind);
        let mut p = vec![vec![1.0f32, 1.0]];
        step(&o, &mut s, &mut p, &[vec![3.0, -0.01]], &[false], 0.01);
        assert!((p[0][0] - 0.99).abs() < 1e-5 && (p[0][1] - 1.01).abs() < 1e-4, "{p:?}");
    }
}
