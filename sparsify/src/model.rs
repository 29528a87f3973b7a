//! The networks sparsify trains: parameters built from an architecture's description
//! (`arch`) as plain named arrays we own, so that masks, the optimizer, checkpoints and export
//! all work on the same `Vec<f32>`s; each training step builds burn leaf tensors from them and
//! runs the description's layers on burn.
//!
//! Layouts (PyTorch's, and the engine's): linear weights `[out, in]`, convolution weights
//! `[out, in / groups, kh, kw]`; pruning targets every weight tensor (never biases).

use std::cell::RefCell;

use burn::tensor::{Device, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::arch::{Arch, Desc, LayerOp, ParamKind, ParamSpec, Value};
use crate::quant::{self, ActQuant, QuantState};
use crate::recipe::Quantization;
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
    /// Elements of the parameter, from its shape (its values are away in burn during a step).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A network: its architecture, its description and its parameters in the description's order.
#[derive(Debug, Clone)]
pub struct Network {
    pub arch: Arch,
    /// The images it reads: `[channels, rows, cols]`.
    pub input: [usize; 3],
    pub classes: usize,
    /// The architecture's layers (from `arch`, `input` and `classes`).
    pub desc: Desc,
    pub params: Vec<Param>,
    /// Where each layer's parameters start in `params`.
    pub first_param: Vec<usize>,
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

pub use crate::arch::BN_EPS;

/// The weight of each batch in BatchNorm's running statistics (PyTorch's).
pub const BN_MOMENTUM: f32 = 0.1;

/// A BatchNorm's batch statistics from a training step: the index of its running mean (the
/// running variance follows it), and the batch's per-channel mean and variance.
pub type BatchStats = (usize, Vec<f32>, Vec<f32>);

/// A layer's output in the forward pass: images `[batch, C, H, W]` or rows `[batch, features]`.
#[derive(Clone)]
enum Activations {
    Image(Tensor<4>),
    Flat(Tensor<2>),
}

impl Activations {
    fn image(self) -> Tensor<4> {
        match self {
            Activations::Image(x) => x,
            Activations::Flat(_) => unreachable!("the plan checked that this layer reads images"),
        }
    }

    fn flat(self) -> Tensor<2> {
        match self {
            Activations::Flat(x) => x,
            Activations::Image(_) => unreachable!("the plan checked that this layer reads rows"),
        }
    }

    fn map(self, f4: impl FnOnce(Tensor<4>) -> Tensor<4>, f2: impl FnOnce(Tensor<2>) -> Tensor<2>) -> Activations {
        match self {
            Activations::Image(x) => Activations::Image(f4(x)),
            Activations::Flat(x) => Activations::Flat(f2(x)),
        }
    }
}

impl Network {
    /// A freshly initialised network for `input` images and `classes` classes: weights
    /// He-uniform (drawn in parameter order from `seed`), biases and shifts zero, BatchNorm
    /// scales and running variances one; an ONNX model's parameters are the file's unless it
    /// asks for `init = "random"`. An error where the architecture does not fit.
    pub fn new(arch: &Arch, input: [usize; 3], classes: usize, seed: u64) -> Result<Network, String> {
        let mut rng = StdRng::seed_from_u64(seed);
        let (desc, pretrained) = arch.describe_pretrained(input, classes)?;
        let mut net = Network::build(arch, desc, input, classes, |spec, n| {
            let fan_in: usize = spec.shape[1..].iter().product();
            let bound = (6.0 / fan_in as f32).sqrt();
            (0..n).map(|_| rng.random_range(-bound..bound)).collect()
        })?;
        if let Some(values) = pretrained {
            let last = net.first_param.last().copied().unwrap_or(0);
            for (i, (p, v)) in net.params.iter_mut().zip(values).enumerate() {
                match v.len() == p.values.len() {
                    true => p.values = v,
                    // The classifier of a model transferred to other classes starts afresh.
                    false if i >= last => {}
                    false => {
                        return Err(format!("{}: the file holds {} values for {} of shape {:?}", arch.label(), v.len(), p.name, p.shape));
                    }
                }
            }
        }
        Ok(net)
    }

    /// The network with every weight zero: its structure (names, shapes, layers), for values
    /// read from elsewhere (a checkpoint) or none.
    pub fn zeroed(arch: &Arch, input: [usize; 3], classes: usize) -> Result<Network, String> {
        Network::build(arch, arch.describe(input, classes)?, input, classes, |_, n| vec![0.0; n])
    }

    /// The network `desc` describes (`arch`'s), with weights from `weight(spec, elements)`, biases
    /// and shifts zero, BatchNorm scales and running variances one.
    fn build(
        arch: &Arch,
        desc: Desc,
        input: [usize; 3],
        classes: usize,
        mut weight: impl FnMut(&ParamSpec, usize) -> Vec<f32>,
    ) -> Result<Network, String> {
        let plan = desc.plan(classes)?;
        let params = plan
            .params
            .into_iter()
            .map(|spec| {
                let n: usize = spec.shape.iter().product();
                let values = match spec.kind {
                    ParamKind::Weight => weight(&spec, n),
                    ParamKind::Shift | ParamKind::RunningMean => vec![0.0; n],
                    ParamKind::Scale | ParamKind::RunningVar => vec![1.0; n],
                };
                let trainable = !matches!(spec.kind, ParamKind::RunningMean | ParamKind::RunningVar);
                Param { name: spec.name, shape: spec.shape, values, prunable: spec.kind == ParamKind::Weight, trainable }
            })
            .collect();
        let first_param = plan.first_param;
        Ok(Network { arch: arch.clone(), input, classes, params, desc, first_param, quant: None, bn_frozen: false })
    }

    /// Elements of one input sample.
    pub fn input_len(&self) -> usize {
        self.desc.input_len()
    }

    /// The values the forward pass sees for parameter `i` where they are not its own: the
    /// fake-quantized weight under quantization-aware training (straight-through estimator: the
    /// gradient lands on the fp32 weight).
    fn fake_quantized(&self, i: usize) -> Option<Vec<f32>> {
        let q = self.quant.as_ref().filter(|q| q.active && q.layer(i).is_some())?;
        let p = &self.params[i];
        Some(quant::fake_quant_weight(&p.values, p.shape[0], q.per_channel))
    }

    /// Parameters as burn tensors on `device` for a training step, leaves that track gradients:
    /// each parameter's values move into its tensor (fake-quantized weights are copies), and
    /// `restore` moves them back after the backward pass, without copying where burn holds the
    /// values alone by then.
    pub fn lend(&mut self, device: &Device) -> Vec<Tensor<1>> {
        (0..self.params.len())
            .map(|i| {
                let values = self.fake_quantized(i).unwrap_or_else(|| std::mem::take(&mut self.params[i].values));
                Tensor::<1>::from_data(TensorData::new(values, [self.params[i].numel()]), device).require_grad()
            })
            .collect()
    }

    /// Takes back the values `lend` moved into `tensors`.
    pub fn restore(&mut self, tensors: Vec<Tensor<1>>) {
        for (p, t) in self.params.iter_mut().zip(tensors) {
            if p.values.is_empty() && p.numel() > 0 {
                p.values = t.into_data().try_into_vec::<f32>().expect("f32 parameter");
            }
        }
    }

    /// Parameters as burn tensors on `device`, copies, for inference.
    pub fn tensors(&self, device: &Device) -> Vec<Tensor<1>> {
        (0..self.params.len())
            .map(|i| {
                let values = self.fake_quantized(i).unwrap_or_else(|| self.params[i].values.clone());
                Tensor::<1>::from_data(TensorData::new(values, [self.params[i].numel()]), device)
            })
            .collect()
    }

    /// Logits for a batch, in inference mode (BatchNorm uses its running statistics).
    ///
    /// # Shapes
    /// `x`: `[batch, input_len]` normalised pixels; returns `[batch, classes]`.
    pub fn forward(&self, params: &[Tensor<1>], x: Tensor<2>) -> Tensor<2> {
        self.forward_mode(params, x, false).0
    }

    /// Logits for a batch; with `train`, BatchNorm normalises with the batch's statistics and
    /// returns them for the running averages. Each layer of the description in order; a value
    /// is dropped after its last reader.
    pub fn forward_mode(&self, params: &[Tensor<1>], x: Tensor<2>, train: bool) -> (Tensor<2>, ForwardStats) {
        let [batch, _] = x.dims();
        let mut stats = Vec::new();
        let ranges = RefCell::new(Vec::new());
        let layers = &self.desc.layers;
        let input = match self.desc.input[..] {
            [c, h, w] => Activations::Image(x.reshape([batch, c, h, w])),
            _ => Activations::Flat(x),
        };
        let slot = |v: Value| match v {
            Value::Input => 0,
            Value::Layer(i) => i + 1,
        };
        let mut readers = vec![0usize; layers.len() + 1];
        layers.iter().flat_map(|l| &l.inputs).for_each(|&v| readers[slot(v)] += 1);
        let mut values: Vec<Option<Activations>> = vec![None; layers.len() + 1];
        values[0] = Some(input);
        for (i, layer) in layers.iter().enumerate() {
            let mut read = |v: Value| {
                let s = slot(v);
                readers[s] -= 1;
                let value = if readers[s] == 0 { values[s].take() } else { values[s].clone() };
                value.expect("layers read earlier values (the plan checked)")
            };
            let x = read(layer.inputs[0]);
            let first = self.first_param[i];
            let p = |k: usize| -> Tensor<1> { params[first + k].clone() };
            let out = match layer.op {
                LayerOp::Linear { out } => {
                    let x = self.quant_input(x.flat(), first, train, &ranges);
                    let w: Tensor<2> = p(0).reshape([out, self.params[first].shape[1]]);
                    Activations::Flat(crate::ops::linear::linear(x, w, p(1)))
                }
                LayerOp::Conv { stride, pad, groups, bias, .. } => {
                    let x = self.quant_input(x.image(), first, train, &ranges);
                    let s = &self.params[first].shape;
                    let w: Tensor<4> = p(0).reshape([s[0], s[1], s[2], s[3]]);
                    Activations::Image(crate::ops::conv::conv2d(x, w, bias.then(|| p(1)), stride, pad, groups))
                }
                LayerOp::BatchNorm => Activations::Image(self.batchnorm(x.image(), params, first, train, &mut stats)),
                LayerOp::Relu => x.map(crate::ops::relu::relu, crate::ops::relu::relu),
                LayerOp::Relu6 => x.map(|t| t.clamp(0.0, 6.0), |t| t.clamp(0.0, 6.0)),
                LayerOp::MaxPool { kernel, stride } => Activations::Image(crate::ops::max_pool::max_pool2d(x.image(), kernel, stride)),
                LayerOp::GlobalAvgPool => Activations::Image(x.image().mean_dim(2).mean_dim(3)),
                LayerOp::Flatten => Activations::Flat(match x {
                    Activations::Image(t) => t.reshape([batch as i32, -1]),
                    flat => flat.flat(),
                }),
                LayerOp::Add => {
                    let y = read(layer.inputs[1]);
                    x.map(|a| a + y.clone().image(), |a| a + y.clone().flat())
                }
            };
            values[i + 1] = Some(out);
        }
        let logits = values.pop().flatten().expect("a network has layers (the plan checked)").flat();
        (logits, ForwardStats { bn: stats, ranges: ranges.into_inner() })
    }

    /// BatchNorm of `x` with parameters from `first`: the batch's statistics in training (kept
    /// in `stats` for the running averages) unless frozen, else the running ones.
    fn batchnorm(&self, x: Tensor<4>, params: &[Tensor<1>], first: usize, train: bool, stats: &mut Vec<BatchStats>) -> Tensor<4> {
        if train && !self.bn_frozen {
            let (y, mean, var) = crate::ops::batchnorm::batchnorm_train(x, params[first].clone(), params[first + 1].clone(), BN_EPS);
            stats.push((first + 2, mean, var));
            return y;
        }
        let c = self.params[first].numel();
        let channel = |k: usize| params[first + k].clone().reshape([1, c, 1, 1]);
        (x - channel(2)) / (channel(3) + BN_EPS).sqrt() * channel(0) + channel(1)
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

    /// Switches fake quantization, its observers and frozen BatchNorm statistics on or off as a
    /// recipe's `quantization` modifier asks at fractional `epoch`.
    pub fn quantization_at(&mut self, q: &Quantization, epoch: f64) {
        if let Some(state) = self.quant.as_mut() {
            state.active = q.active(epoch);
            state.observe = q.observing(epoch);
        }
        self.bn_frozen = q.bn_frozen(epoch);
    }
}
