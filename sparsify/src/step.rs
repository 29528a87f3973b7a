//! One training step and evaluation on burn: build leaf tensors from the parameters, forward,
//! cross-entropy, backward, and return the gradients as plain arrays.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Tensor, TensorData};

use crate::model::Network;

/// The device training runs on: burn's `flex` CPU backend with autodiff.
pub fn train_device() -> Device {
    Device::flex().autodiff()
}

/// The device evaluation runs on (no autodiff).
pub fn eval_device() -> Device {
    Device::flex()
}

/// What one training step computes.
pub struct StepOutput {
    pub loss: f32,
    pub correct: usize,
    /// One gradient per parameter (zeros for parameters the loss does not depend on).
    pub grads: Vec<Vec<f32>>,
    /// BatchNorm batch statistics and observer ranges, for the running averages.
    pub stats: crate::model::ForwardStats,
    /// Seconds of the forward pass and the loss.
    pub forward_seconds: f64,
    /// Seconds spent copying the parameters into burn tensors (fake-quantizing weights under
    /// quantization-aware training) and the gradients out; the rest of the call is the backward
    /// pass.
    pub transfer_seconds: f64,
}

/// A teacher's softened targets for a batch (`[batch, classes]` probabilities at `temperature`)
/// and the weight of their loss.
pub struct Soft {
    pub targets: Vec<f32>,
    pub temperature: f32,
    pub hardness: f32,
}

/// Loss, correct predictions, gradients and batch statistics for a batch: cross-entropy with the
/// labels, and with `soft` targets `(1 - hardness) * that + hardness * T^2 * cross-entropy of
/// the student's outputs at temperature T with the targets` (the KL divergence up to the
/// targets' entropy, which has no gradient).
///
/// # Shapes
/// `inputs`: `[labels.len(), channels * rows * cols]` normalised pixels.
pub fn gradients(net: &mut Network, device: &Device, inputs: Vec<f32>, labels: &[u8], soft: Option<Soft>) -> StepOutput {
    let start = std::time::Instant::now();
    let b = labels.len();
    let params = net.lend(device);
    let mut transfer_seconds = start.elapsed().as_secs_f64();
    let x = Tensor::<2>::from_data(TensorData::new(inputs, [b, net.input_len()]), device);
    let (logits, stats) = net.forward_mode(&params, x, true);
    let correct = engine::top1::correct(&logits.to_data().try_to_vec::<f32>().expect("f32 logits"), net.classes, labels);
    let mut onehot = vec![0.0f32; b * net.classes];
    for (i, &l) in labels.iter().enumerate() {
        onehot[i * net.classes + l as usize] = 1.0;
    }
    let onehot = Tensor::<2>::from_data(TensorData::new(onehot, [b, net.classes]), device);
    let hard = (log_softmax(logits.clone(), 1) * onehot).sum().neg().div_scalar(b as f32);
    let loss = match soft {
        None => hard,
        Some(s) => {
            let targets = Tensor::<2>::from_data(TensorData::new(s.targets, [b, net.classes]), device);
            let t = s.temperature;
            let distill = (log_softmax(logits.div_scalar(t), 1) * targets).sum().neg().div_scalar(b as f32).mul_scalar(t * t);
            hard.mul_scalar(1.0 - s.hardness) + distill.mul_scalar(s.hardness)
        }
    };
    let loss_value = loss.to_data().try_to_vec::<f32>().expect("f32 loss")[0];
    let forward_seconds = start.elapsed().as_secs_f64() - transfer_seconds;
    let mut container = loss.backward();
    let copying = std::time::Instant::now();
    // Taken out of the container, each gradient is its tensor's only owner and leaves burn
    // without a copy.
    let grads = params
        .iter()
        .map(|p| {
            p.grad_remove(&mut container)
                .map(|g| g.into_data().try_into_vec::<f32>().expect("f32 grad"))
                .unwrap_or_else(|| vec![0.0; p.dims()[0]])
        })
        .collect();
    drop(container);
    net.restore(params);
    transfer_seconds += copying.elapsed().as_secs_f64();
    StepOutput { loss: loss_value, correct, grads, stats, forward_seconds, transfer_seconds }
}

/// Logits for a batch, without autodiff: `[labels, classes]` row-major.
pub fn logits(net: &Network, device: &Device, inputs: Vec<f32>, batch: usize) -> Vec<f32> {
    let params = net.tensors(device);
    let x = Tensor::<2>::from_data(TensorData::new(inputs, [batch, net.input_len()]), device);
    net.forward(&params, x).into_data().try_into_vec::<f32>().expect("f32 logits")
}

/// Top-1 accuracy of `net` on a split (batches of 500).
pub fn accuracy(net: &Network, split: &datasets::Split, norm: &datasets::Normalization) -> f64 {
    if split.is_empty() {
        return 0.0;
    }
    let device = eval_device();
    let order: Vec<usize> = (0..split.len()).collect();
    let mut correct = 0;
    for b in datasets::batch::batches(split, &order, 500, norm, None) {
        let n = b.len();
        correct += engine::top1::correct(&logits(net, &device, b.inputs, n), net.classes, &b.labels);
    }
    correct as f64 / split.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::Arch;

    /// Targets equal to the student's own softened outputs pull nowhere: with hardness 1 every
    /// gradient vanishes; with the labels' loss mixed in, the gradients scale with 1 - hardness.
    #[test]
    fn distilling_towards_itself_adds_no_gradient() {
        let mut net = Network::new(&Arch::Mlp { hidden: vec![16] }, [1, 28, 28], 10, 3).unwrap();
        let (b, t) = (4, 3.0f32);
        let inputs: Vec<f32> = (0..b * 784).map(|i| ((i * 7919) % 1009) as f32 / 504.5 - 1.0).collect();
        let own = logits(&net, &eval_device(), inputs.clone(), b);
        let targets: Vec<f32> = own.chunks(10).flat_map(|r| crate::distill::soften(r, t as f64)).collect();
        let labels = [0u8, 3, 5, 9];
        let device = train_device();
        let soft = |hardness| Some(Soft { targets: targets.clone(), temperature: t, hardness });
        let only_soft = gradients(&mut net, &device, inputs.clone(), &labels, soft(1.0));
        assert!(only_soft.grads.iter().flatten().all(|g| g.abs() < 1e-5), "soft gradients at the student's own targets");
        let hard = gradients(&mut net, &device, inputs.clone(), &labels, None);
        let mixed = gradients(&mut net, &device, inputs, &labels, soft(0.25));
        for (m, h) in mixed.grads.iter().flatten().zip(hard.grads.iter().flatten()) {
            assert!((m - 0.75 * h).abs() < 1e-4 * (1.0 + h.abs()), "{m} against 0.75 x {h}");
        }
    }
}
