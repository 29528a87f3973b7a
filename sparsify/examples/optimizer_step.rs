//! Times one SGD step (Nesterov momentum 0.9, weight decay 5e-4) over LeNet-300-100's parameters:
//! burn's own optimizer (`burn::optim::Sgd`, one tensor at a time on the `flex` device) against
//! ours (`sparsify::optim::step`, one loop per element over the operators' team), and ours with a
//! 90% mask acting inside its loop. Both run the same steps from the same values and gradients,
//! and the example says whether their weights agree bit for bit. Medians of 101 steps,
//! microseconds.
use std::time::Instant;

use burn::optim::momentum::MomentumConfig;
use burn::optim::{Optimizer as _, SgdConfig, decay::WeightDecayConfig};
use burn::tensor::{Device, Tensor, TensorData};
use sparsify::optim::{self, OptimState};
use sparsify::recipe::{Optimizer, OptimizerKind};

const SHAPES: [&[usize]; 6] = [&[300, 784], &[300], &[100, 300], &[100], &[10, 100], &[10]];
const STEPS: usize = 101;
const LR: f64 = 0.05;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * 7919 + seed * 104729) % 1009) as f32 / 1009.0 - 0.5).collect()
}

/// Our optimizer's weights after `STEPS` steps and the time of each, with `masks` in force.
fn ours(params: &[Vec<f32>], grads: &[Vec<f32>], masks: &[Option<&[f32]>]) -> (Vec<Vec<f32>>, Vec<f64>) {
    let o = Optimizer { kind: OptimizerKind::Sgd, momentum: 0.9, nesterov: true, weight_decay: 5e-4, betas: [0.9, 0.999] };
    let sizes: Vec<usize> = params.iter().map(Vec::len).collect();
    let mut state = OptimState::new(&sizes, o.kind);
    let mut params = params.to_vec();
    let frozen = vec![false; params.len()];
    let times = (0..STEPS)
        .map(|_| {
            let t = Instant::now();
            optim::step(&o, &mut state, &mut params, grads, masks, &frozen, LR);
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    (params, times)
}

/// One parameter of rank `D` through burn's optimizer: its state kept between steps.
fn burn_steps<const D: usize>(
    sgd: &burn::optim::Sgd,
    w: Tensor<D>,
    g: Tensor<D>,
    state: Option<<burn::optim::Sgd as burn::optim::Optimizer>::State<D>>,
) -> (Tensor<D>, Option<<burn::optim::Sgd as burn::optim::Optimizer>::State<D>>) {
    sgd.step(LR, w, g, state)
}

/// burn's weights after `STEPS` steps and the time of each (every parameter's step, then the
/// weights read back so that the work is done).
fn burns(params: &[Vec<f32>], grads: &[Vec<f32>]) -> (Vec<Vec<f32>>, Vec<f64>) {
    let device = Device::flex();
    let momentum = MomentumConfig::new().with_momentum(0.9).with_dampening(0.0).with_nesterov(true);
    let sgd = SgdConfig::new().with_momentum(Some(momentum)).with_weight_decay(Some(WeightDecayConfig::new(5e-4))).build();
    let tensor2 = |v: &[f32], s: &[usize]| Tensor::<2>::from_data(TensorData::new(v.to_vec(), [s[0], s[1]]), &device);
    let tensor1 = |v: &[f32], s: &[usize]| Tensor::<1>::from_data(TensorData::new(v.to_vec(), [s[0]]), &device);
    let (mut weights, mut biases, mut weight_states, mut bias_states) = (vec![], vec![], vec![], vec![]);
    for (i, s) in SHAPES.iter().enumerate() {
        if s.len() == 2 {
            weights.push((tensor2(&params[i], s), tensor2(&grads[i], s)));
            weight_states.push(None);
        } else {
            biases.push((tensor1(&params[i], s), tensor1(&grads[i], s)));
            bias_states.push(None);
        }
    }
    let times = (0..STEPS)
        .map(|_| {
            let t = Instant::now();
            for ((w, g), state) in weights.iter_mut().zip(&mut weight_states) {
                let (next, s) = burn_steps(&sgd, w.clone(), g.clone(), state.take());
                (*w, *state) = (next, s);
            }
            for ((w, g), state) in biases.iter_mut().zip(&mut bias_states) {
                let (next, s) = burn_steps(&sgd, w.clone(), g.clone(), state.take());
                (*w, *state) = (next, s);
            }
            // burn's `flex` runs eagerly; reading one value back makes sure of it.
            let _ = weights[0].0.clone().slice([0..1, 0..1]).into_data();
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    let read = |t: Tensor<2>| t.into_data().try_into_vec::<f32>().expect("f32");
    let read1 = |t: Tensor<1>| t.into_data().try_into_vec::<f32>().expect("f32");
    let (mut weights, mut biases) = (weights.into_iter(), biases.into_iter());
    let out = SHAPES
        .iter()
        .map(|s| if s.len() == 2 { read(weights.next().expect("weight").0) } else { read1(biases.next().expect("bias").0) })
        .collect();
    (out, times)
}

fn main() {
    println!("{} threads", sparsify::ops::threads());
    let params: Vec<Vec<f32>> = SHAPES.iter().enumerate().map(|(i, s)| values(s.iter().product(), i)).collect();
    let grads: Vec<Vec<f32>> = SHAPES.iter().enumerate().map(|(i, s)| values(s.iter().product(), i + 7)).collect();
    let factors: Vec<Vec<f32>> = params.iter().map(|p| (0..p.len()).map(|i| if i % 10 == 0 { 1.0 } else { 0.0 }).collect()).collect();
    let masks: Vec<Option<&[f32]>> = SHAPES.iter().zip(&factors).map(|(s, f)| (s.len() == 2).then_some(f.as_slice())).collect();
    let (burn_weights, burn_times) = burns(&params, &grads);
    let (our_weights, our_times) = ours(&params, &grads, &vec![None; params.len()]);
    let (_, masked_times) = ours(&params, &grads, &masks);
    let same = burn_weights.iter().flatten().zip(our_weights.iter().flatten()).filter(|(a, b)| a.to_bits() == b.to_bits()).count();
    let total: usize = params.iter().map(Vec::len).sum();
    println!(
        "step over {total} parameters: burn's Sgd {:.0} us, ours {:.0} us, ours with 90% masks {:.0} us; after {STEPS} steps {same} of {total} weights agree bit for bit",
        median(burn_times),
        median(our_times),
        median(masked_times)
    );
}
