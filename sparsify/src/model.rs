//! The networks sparsify trains, written directly on burn tensors so that every parameter is a
//! plain named array we own: masks, the optimizer, checkpoints and export all work on the same
//! `Vec<f32>`s, and each training step builds burn leaf tensors from them.
//!
//! Layouts (PyTorch's, and the engine's): linear weights `[out, in]`, convolution weights
//! `[out, in, kh, kw]`; pruning targets every weight tensor (never biases).

use burn::tensor::activation::relu;
use burn::tensor::module::{conv2d, max_pool2d};
use burn::tensor::ops::{ConvOptions, MaxPoolOptions};
use burn::tensor::{Device, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

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
        },
        Param { name: format!("{name}.bias"), shape: vec![shape[0]], values: vec![0.0; shape[0]], prunable: false },
    ]
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
        }
        Network { arch: arch.clone(), input_side: side, classes, params }
    }

    /// Parameters as burn tensors on `device` (leaves that track gradients when `device` is an
    /// autodiff device).
    pub fn tensors(&self, device: &Device, track: bool) -> Vec<Tensor<1>> {
        self.params
            .iter()
            .map(|p| {
                let t = Tensor::<1>::from_data(TensorData::new(p.values.clone(), [p.numel()]), device);
                if track { t.require_grad() } else { t }
            })
            .collect()
    }

    /// Logits for a batch.
    ///
    /// # Shapes
    /// `x`: `[batch, side * side]` normalised pixels; returns `[batch, classes]`.
    pub fn forward(&self, params: &[Tensor<1>], x: Tensor<2>) -> Tensor<2> {
        let p = |i: usize| -> Tensor<1> { params[i].clone() };
        let shape = |i: usize| self.params[i].shape.clone();
        let linear = |x: Tensor<2>, i: usize| -> Tensor<2> {
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
                h
            }
            Arch::Lenet5 => {
                let [b, _] = x.dims();
                let side = self.input_side;
                let conv = |x: Tensor<4>, i: usize, pad: usize| -> Tensor<4> {
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
                linear(h, 8)
            }
        }
    }

    /// Indices of the prunable parameters.
    pub fn prunable(&self) -> Vec<usize> {
        (0..self.params.len()).filter(|&i| self.params[i].prunable).collect()
    }

    /// Layer name of a parameter (`fc1.weight` -> `fc1`).
    pub fn layer_name(&self, i: usize) -> &str {
        self.params[i].name.rsplit_once('.').map_or(&self.params[i].name, |(l, _)| l)
    }
}
