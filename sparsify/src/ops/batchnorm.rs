//! BatchNorm on the batch's own statistics (training mode) as one operator: burn's composition of
//! means, differences, powers and divisions makes about a dozen passes over the activation
//! forward and more backward. Ours computes the statistics, normalises, and in the backward pass
//! gives the input's, scale's and shift's gradients in three passes (`batchnorm_kernels`); the
//! statistics come back to the caller for the running averages.

use std::sync::{Arc, Mutex};

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, backend_extension};
use burn::tensor::Tensor;

use super::batchnorm_kernels::{self as kernels, Dims};
use super::{contiguous, slice, tensor};

/// Per-channel mean and biased variance.
pub type Statistics = (Vec<f32>, Vec<f32>);

/// Where the operator leaves the statistics it normalised with.
#[derive(Debug, Clone, Default)]
pub struct StatisticsSink(Arc<Mutex<Option<Statistics>>>);

impl StatisticsSink {
    fn put(&self, mean: Vec<f32>, var: Vec<f32>) {
        *self.0.lock().expect("statistics lock") = Some((mean, var));
    }

    /// The statistics of the last call, once.
    pub fn take(&self) -> Option<Statistics> {
        self.0.lock().expect("statistics lock").take()
    }
}

/// BatchNorm of `[batch, channels, h, w]` with the batch's statistics.
#[backend_extension(Flex, Autodiff)]
pub trait BatchNormOp: Backend {
    /// `(x - mean) / sqrt(var + eps) * gamma + beta` per channel, the statistics over the batch
    /// and pixels; they are left in `sink`.
    fn batchnorm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f32,
        sink: StatisticsSink,
    ) -> FloatTensor<Self>;
}

fn dims(shape: &[usize]) -> Dims {
    Dims { batch: shape[0], channels: shape[1], pixels: shape[2..].iter().product() }
}

/// The normalisation of `x` and the statistics it used.
fn normalise(x: FlexTensor, gamma: FlexTensor, beta: FlexTensor, eps: f32) -> (FlexTensor, Statistics) {
    let ((x, shape), (gamma, _), (beta, _)) = (contiguous(x), contiguous(gamma), contiguous(beta));
    let d = dims(&shape);
    let (mean, var) = kernels::statistics(&d, slice(&x));
    let y = kernels::forward(&d, slice(&x), slice(&gamma), slice(&beta), &mean, &var, eps);
    (tensor(y, &shape), (mean, var))
}

impl BatchNormOp for Flex {
    fn batchnorm_train(x: FlexTensor, gamma: FlexTensor, beta: FlexTensor, eps: f32, sink: StatisticsSink) -> FlexTensor {
        let (y, (mean, var)) = normalise(x, gamma, beta, eps);
        sink.put(mean, var);
        y
    }
}

/// The backward step: the input's, scale's and shift's gradients from the output's.
#[derive(Debug)]
struct BatchNormBackward;

impl Backward<Flex, 3> for BatchNormBackward {
    type State = (NodeId, NodeId, Vec<f32>, Vec<f32>, f32);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let [x_node, gamma_node, beta_node] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (x_state, gamma_state, mean, var, eps) = ops.state;
        let x: FlexTensor = checkpointer.retrieve_node_output(x_state);
        let gamma: FlexTensor = checkpointer.retrieve_node_output(gamma_state);
        let ((x, shape), (gamma, channels), (dy, _)) = (contiguous(x), contiguous(gamma), contiguous(dy));
        let [dx, dgamma, dbeta] = kernels::backward(&dims(&shape), slice(&x), slice(&dy), slice(&gamma), &mean, &var, eps);
        for (node, grad, shape) in [(x_node, dx, &shape), (gamma_node, dgamma, &channels), (beta_node, dbeta, &channels)] {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, tensor(grad, shape));
            }
        }
    }
}

impl<C: CheckpointStrategy> BatchNormOp for Autodiff<Flex, C> {
    fn batchnorm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f32,
        sink: StatisticsSink,
    ) -> FloatTensor<Self> {
        match BatchNormBackward.prepare::<C>([x.node(), gamma.node(), beta.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let (x_state, gamma_state) = (prep.checkpoint(&x), prep.checkpoint(&gamma));
                let (y, (mean, var)) = normalise(x.into_primitive(), gamma.into_primitive(), beta.into_primitive(), eps);
                sink.put(mean.clone(), var.clone());
                prep.finish((x_state, gamma_state, mean, var, eps), y)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(Flex::batchnorm_train(x.into_primitive(), gamma.into_primitive(), beta.into_primitive(), eps, sink))
            }
        }
    }
}

/// BatchNorm of `x` `[batch, channels, h, w]` on the batch's statistics, with scale `gamma` and
/// shift `beta` `[channels]`; also returns the per-channel mean and biased variance it used.
pub fn batchnorm_train(x: Tensor<4>, gamma: Tensor<1>, beta: Tensor<1>, eps: f32) -> (Tensor<4>, Vec<f32>, Vec<f32>) {
    let sink = StatisticsSink::default();
    let y = <Dispatch as BatchNormOp>::batchnorm_train(x.into_dispatch(), gamma.into_dispatch(), beta.into_dispatch(), eps, sink.clone());
    let (mean, var) = sink.take().expect("the forward pass left its statistics");
    (Tensor::from_dispatch(y), mean, var)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    fn close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}");
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 2e-4 * (1.0 + y.abs()), "{what}: {x} against {y}");
        }
    }

    /// Output, statistics and gradients equal those of burn's composition of the same function.
    #[test]
    fn batchnorm_and_its_gradients_equal_burns_composition() {
        let device = Device::flex().autodiff();
        let eps = 1e-5;
        for shape in [[4, 3, 5, 5], [1, 2, 1, 1], [7, 5, 2, 3]] {
            let c = shape[1];
            let random = |dims| Tensor::<4>::random(dims, Distribution::Uniform(-2.0, 3.0), &device);
            let x = random(shape).require_grad();
            let gamma = Tensor::<1>::random([c], Distribution::Uniform(0.5, 1.5), &device).require_grad();
            let beta = Tensor::<1>::random([c], Distribution::Uniform(-1.0, 1.0), &device).require_grad();
            let (ours, mean, var) = batchnorm_train(x.clone(), gamma.clone(), beta.clone(), eps);
            let m: Tensor<4> = x.clone().mean_dim(0).mean_dim(2).mean_dim(3);
            let v: Tensor<4> = (x.clone() - m.clone()).powi_scalar(2).mean_dim(0).mean_dim(2).mean_dim(3);
            close(&mean, &host(m.clone()), "mean");
            close(&var, &host(v.clone()), "variance");
            let theirs = (x.clone() - m) / (v + eps).sqrt() * gamma.clone().reshape([1, c, 1, 1]) + beta.clone().reshape([1, c, 1, 1]);
            close(&host(ours.clone()), &host(theirs.clone()), "output");
            let probe = random(shape);
            let (g1, g2) = ((ours * probe.clone()).sum().backward(), (theirs * probe).sum().backward());
            close(&host(x.grad(&g1).unwrap()), &host(x.grad(&g2).unwrap()), "input gradient");
            close(&host(gamma.grad(&g1).unwrap()), &host(gamma.grad(&g2).unwrap()), "scale gradient");
            close(&host(beta.grad(&g1).unwrap()), &host(beta.grad(&g2).unwrap()), "shift gradient");
        }
    }
}
