//! The networks sparsify trains, written directly on burn tensors so that every parameter is a
//! plain named array we own: masks, the optimizer, checkpoints and export all work on the same
//! `Vec<f32>`s, and each training step builds burn leaf tensors from them.
//!
//! Layouts (PyTorch's, and the engine's): linear weights `[out, in]`, convolution weights
//! `[out, in, kh, kw]`; pruning targets every weight tensor (never biases).

use burn::tensor::activation::relu;
use burn::tensor::module::{conv2d, max_pool2d};
use burn::tensor::ops::{ConvOptions, MaxPoolOptions};
use std::cell::RefCell;

use burn::tensor::{Device, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::quant::{self, ActQuant, QuantState};

/// Which architecture, with its sizes (the `[model]` table of a recipe).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "lowercase", deny_unknown_fields)]
pub enum Arch {
    /// Fully connected ReLU network on flattened images; LeNet-300-100 by default.
    Mlp {
        #[serde(default = "default_hidden")]
        hidden: Vec<usize>,
    },
    /// LeNet-5: conv 5x5 (6, padded) - maxpool - conv 5x5 (16) - maxpool - 120 - 84 - 10.
    Lenet5,
    /// A small residual CNN with BatchNorm: conv 3x3 (16) + BN + ReLU - maxpool - a residual
    /// block (conv-BN-ReLU-conv-BN, plus the block's input, ReLU) - maxpool - linear.
    Rescnn,
}

fn default_hidden() -> Vec<usize> {
    vec![300, 100]
}

/// One named parameter: its shape and values, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
    /// Weights can be pruned; biases cannot.
    pub prunable: bool,
    /// Updated by the optimizer; BatchNorm running statistics are not.
    pub trainable: bool,
}

impl Param {
    pub fn numel(&self) -> usize {
        self.values.len()
    }
}

/// A network: its architecture and its parameters in a fixed order.
#[derive(Debug, Clone)]
pub struct Network {
    pub arch: Arch,
    pub input_side: usize,
    pub classes: usize,
    pub params: Vec<Param>,
    /// Fake quantization, when a `quantization` modifier configured it.
    pub quant: Option<QuantState>,
    /// BatchNorm uses its running statistics in training too (`freeze_bn_epoch` passed).
    pub bn_frozen: bool,
}

/// Statistics a training forward pass gathers: BatchNorm batch statistics and the new range
/// of each active activation observer (by index in `QuantState::layers`).
#[derive(Debug, Default)]
pub struct ForwardStats {
    pub bn: Vec<BatchStats>,
    pub ranges: Vec<(usize, [f32; 2])>,
}

/// He-uniform initialisation of a weight with `fan_in` inputs; biases start at zero.
fn init(name: &str, shape: &[usize], rng: &mut StdRng) -> [Param; 2] {
    let fan_in: usize = shape[1..].iter().product();
    let bound = (6.0 / fan_in as f32).sqrt();
    let n: usize = shape.iter().product();
    [
        Param {
            name: format!("{name}.weight"),
            shape: shape.to_vec(),
            values: (0..n).map(|_| rng.random_range(-bound..bound)).collect(),
            prunable: true,
            trainable: true,
        },
        Param { name: format!("{name}.bias"), shape: vec![shape[0]], values: vec![0.0; shape[0]], prunable: false, trainable: true },
    ]
}

/// BatchNorm over `c` channels: scale and shift (trained), running mean and variance (not).
fn batchnorm(name: &str, c: usize) -> [Param; 4] {
    let p =
        |n: &str, v: f32, trainable| Param { name: format!("{name}.{n}"), shape: vec![c], values: vec![v; c], prunable: false, trainable };
    [p("gamma", 1.0, true), p("beta", 0.0, true), p("running_mean", 0.0, false), p("running_var", 1.0, false)]
}

/// BatchNorm's epsilon and the weight of each batch in the running statistics (PyTorch's).
pub const BN_EPS: f32 = 1e-5;
pub const BN_MOMENTUM: f32 = 0.1;

/// A BatchNorm's batch statistics from a training step: the index of its running mean (the
/// running variance follows it), and the batch's per-channel mean and variance.
pub type BatchStats = (usize, Vec<f32>, Vec<f32>);

/// Most parameters a built-in network may have (1 GiB of f32): a bound on what a recipe can make
/// `Network::new` allocate.
pub const MAX_PARAMETERS: usize = 1 << 28;

impl Arch {
    /// Whether the network can be built for `side x side` images: every layer at least one unit
    /// wide and the parameters within `MAX_PARAMETERS` (counted in checked arithmetic).
    pub fn check(&self, side: usize, classes: usize) -> Result<(), String> {
        let Arch::Mlp { hidden } = self else { return Ok(()) };
        if hidden.contains(&0) {
            return Err(format!("every layer needs at least one unit, found {hidden:?}"));
        }
        let mut dims = vec![side * side];
        dims.extend(hidden);
        dims.push(classes);
        let params = dims.windows(2).try_fold(0usize, |sum, d| d[0].checked_mul(d[1])?.checked_add(d[1])?.checked_add(sum));
        match params {
            Some(n) if n <= MAX_PARAMETERS => Ok(()),
            _ => Err(format!("layers {hidden:?} make more than {MAX_PARAMETERS} parameters")),
        }
    }
}

impl Network {
    /// A freshly initialised network for `side x side` images and `classes` classes.
    pub fn new(arch: &Arch, side: usize, classes: usize, seed: u64) -> Network {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut params = Vec::new();
        match arch {
            Arch::Mlp { hidden } => {
                let mut dims = vec![side * side];
                dims.extend(hidden);
                dims.push(classes);
                for i in 0..dims.len() - 1 {
                    params.extend(init(&format!("fc{}", i + 1), &[dims[i + 1], dims[i]], &mut rng));
                }
            }
            Arch::Lenet5 => {
                let flat = 16 * ((side / 2 - 4) / 2).pow(2);
                params.extend(init("conv1", &[6, 1, 5, 5], &mut rng));
                params.extend(init("conv2", &[16, 6, 5, 5], &mut rng));
                params.extend(init("fc1", &[120, flat], &mut rng));
                params.extend(init("fc2", &[84, 120], &mut rng));
                params.extend(init("fc3", &[classes, 84], &mut rng));
            }
            Arch::Rescnn => {
                let flat = 16 * (side / 4) * (side / 4);
                params.extend(init("conv1", &[16, 1, 3, 3], &mut rng));
                params.extend(batchnorm("bn1", 16));
                params.extend(init("conv2", &[16, 16, 3, 3], &mut rng));
                params.extend(batchnorm("bn2", 16));
                params.extend(init("conv3", &[16, 16, 3, 3], &mut rng));
                params.extend(batchnorm("bn3", 16));
                params.extend(init("fc", &[classes, flat], &mut rng));
            }
        }
        Network { arch: arch.clone(), input_side: side, classes, params, quant: None, bn_frozen: false }
    }

    /// Parameters as burn tensors on `device` (leaves that track gradients when `device` is an
    /// autodiff device).
    pub fn tensors(&self, device: &Device, track: bool) -> Vec<Tensor<1>> {
        self.params
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let values = match self.quant.as_ref().filter(|q| q.active && q.layer(i).is_some()) {
                    // Straight-through estimator: the forward pass sees the quantized weight and
                    // the gradient lands on the fp32 one.
                    Some(q) => quant::fake_quant_weight(&p.values, p.shape[0], q.per_channel),
                    None => p.values.clone(),
                };
                let t = Tensor::<1>::from_data(TensorData::new(values, [p.numel()]), device);
                if track { t.require_grad() } else { t }
            })
            .collect()
    }

    /// Logits for a batch, in inference mode (BatchNorm uses its running statistics).
    ///
    /// # Shapes
    /// `x`: `[batch, side * side]` normalised pixels; returns `[batch, classes]`.
    pub fn forward(&self, params: &[Tensor<1>], x: Tensor<2>) -> Tensor<2> {
        self.forward_mode(params, x, false).0
    }

    /// Logits for a batch; with `train`, BatchNorm normalises with the batch's statistics and
    /// returns them for the running averages.
    pub fn forward_mode(&self, params: &[Tensor<1>], x: Tensor<2>, train: bool) -> (Tensor<2>, ForwardStats) {
        let mut stats = Vec::new();
        let ranges = RefCell::new(Vec::new());
        let p = |i: usize| -> Tensor<1> { params[i].clone() };
        let shape = |i: usize| self.params[i].shape.clone();
        let linear = |x: Tensor<2>, i: usize| -> Tensor<2> {
            let x = self.quant_input(x, i, train, &ranges);
            let s = shape(i);
            let w: Tensor<2> = p(i).reshape([s[0], s[1]]);
            x.matmul(w.transpose()) + p(i + 1).reshape([1, s[0]])
        };
        match &self.arch {
            Arch::Mlp { .. } => {
                let layers = self.params.len() / 2;
                let mut h = x;
                for l in 0..layers {
                    h = linear(h, 2 * l);
                    if l + 1 < layers {
                        h = relu(h);
                    }
                }
                (h, ForwardStats { bn: stats, ranges: ranges.into_inner() })
            }
            Arch::Lenet5 => {
                let [b, _] = x.dims();
                let side = self.input_side;
                let conv = |x: Tensor<4>, i: usize, pad: usize| -> Tensor<4> {
                    let x = self.quant_input(x, i, train, &ranges);
                    let s = shape(i);
                    let w: Tensor<4> = p(i).reshape([s[0], s[1], s[2], s[3]]);
                    conv2d(x, w, Some(p(i + 1)), ConvOptions::new([1, 1], [pad, pad], [1, 1], 1))
                };
                let pool = |x: Tensor<4>| max_pool2d(x, MaxPoolOptions::new([2, 2]));
                let h = x.reshape([b, 1, side, side]);
                let h = pool(relu(conv(h, 0, 2)));
                let h = pool(relu(conv(h, 2, 0)));
                let h: Tensor<2> = h.reshape([b as i32, -1]);
                let h = relu(linear(h, 4));
                let h = relu(linear(h, 6));
                let logits = linear(h, 8);
                (logits, ForwardStats { bn: stats, ranges: ranges.into_inner() })
            }
            Arch::Rescnn => {
                let [b, _] = x.dims();
                let side = self.input_side;
                let conv = |x: Tensor<4>, i: usize| -> Tensor<4> {
                    let x = self.quant_input(x, i, train, &ranges);
                    let s = shape(i);
                    let w: Tensor<4> = p(i).reshape([s[0], s[1], s[2], s[3]]);
                    conv2d(x, w, Some(p(i + 1)), ConvOptions::new([1, 1], [1, 1], [1, 1], 1))
                };
                let mut bn = |x: Tensor<4>, i: usize| -> Tensor<4> {
                    let c = self.params[i].numel();
                    let (mean, var) = if train && !self.bn_frozen {
                        let mean: Tensor<4> = x.clone().mean_dim(0).mean_dim(2).mean_dim(3);
                        let var: Tensor<4> = (x.clone() - mean.clone()).powi_scalar(2).mean_dim(0).mean_dim(2).mean_dim(3);
                        let host = |t: &Tensor<4>| t.to_data().try_to_vec::<f32>().expect("f32 statistics");
                        stats.push((i + 2, host(&mean), host(&var)));
                        (mean, var)
                    } else {
                        (p(i + 2).reshape([1, c, 1, 1]), p(i + 3).reshape([1, c, 1, 1]))
                    };
                    (x - mean) / (var + BN_EPS).sqrt() * p(i).reshape([1, c, 1, 1]) + p(i + 1).reshape([1, c, 1, 1])
                };
                let pool = |x: Tensor<4>| max_pool2d(x, MaxPoolOptions::new([2, 2]));
                let h = x.reshape([b, 1, side, side]);
                let h = pool(relu(bn(conv(h, 0), 2)));
                let r = relu(bn(conv(h.clone(), 6), 8));
                let r = bn(conv(r, 12), 14);
                let h = pool(relu(r + h));
                let h: Tensor<2> = h.reshape([b as i32, -1]);
                let logits = linear(h, 18);
                (logits, ForwardStats { bn: stats, ranges: ranges.into_inner() })
            }
        }
    }

    /// Fake-quantizes the input of the layer whose weight is parameter `weight`, if quantization
    /// is active for it; in training, the observer sees the batch first (its new range is
    /// recorded in `ranges`).
    fn quant_input<const D: usize>(&self, x: Tensor<D>, weight: usize, train: bool, ranges: &RefCell<Vec<(usize, [f32; 2])>>) -> Tensor<D> {
        let Some(q) = self.quant.as_ref().filter(|q| q.active) else { return x };
        let Some(l) = q.layer(weight) else { return x };
        let mut range = q.layers[l].range;
        if train && q.observe {
            let r = quant::observe(range, quant::min_max(&x), q.averaging);
            ranges.borrow_mut().push((l, r));
            range = Some(r);
        }
        match range {
            Some(r) => quant::fake_quant_tensor(x, ActQuant::from_range(r)),
            None => x,
        }
    }

    /// Folds a training step's statistics into the running averages and observer ranges.
    pub fn update_running_stats(&mut self, stats: &ForwardStats) {
        if let Some(q) = self.quant.as_mut() {
            for (l, r) in &stats.ranges {
                q.layers[*l].range = Some(*r);
            }
        }
        for (i, mean, var) in &stats.bn {
            for (r, m) in self.params[*i].values.iter_mut().zip(mean) {
                *r = (1.0 - BN_MOMENTUM) * *r + BN_MOMENTUM * m;
            }
            for (r, v) in self.params[*i + 1].values.iter_mut().zip(var) {
                *r = (1.0 - BN_MOMENTUM) * *r + BN_MOMENTUM * v;
            }
        }
    }

    /// Indices of the prunable parameters.
    pub fn prunable(&self) -> Vec<usize> {
        (0..self.params.len()).filter(|&i| self.params[i].prunable).collect()
    }
}
