//! The linear layer training uses, `x W^T + b`: burn's `matmul` on `flex` runs on one thread
//! and copies the weight's gradient out of a transposed view, so linear layers run on our
//! kernels (`linear_kernels`: the same GEMMs, the batch split over the team's threads, equal to
//! burn's results bit for bit) as a burn backend extension with its own backward pass.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, backend_extension};
use burn::tensor::Tensor;

use super::linear_kernels::{self as kernels, Dims};
use super::{contiguous, slice, tensor};

/// A linear layer on our kernels.
#[backend_extension(Flex, Autodiff)]
pub trait GemmLinear: Backend {
    /// `x weight^T + bias` for `x` `[batch, inputs]`, `weight` `[outputs, inputs]`, `bias` `[outputs]`.
    fn gemm_linear(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self>;
}

fn dims(x: &[usize], weight: &[usize]) -> Dims {
    assert!(x.len() == 2 && weight.len() == 2 && x[1] == weight[1], "linear shapes checked by the network's plan");
    Dims { batch: x[0], inputs: x[1], outputs: weight[0] }
}

impl GemmLinear for Flex {
    fn gemm_linear(x: FlexTensor, weight: FlexTensor, bias: FlexTensor) -> FlexTensor {
        let ((x, xs), (w, ws), (b, _)) = (contiguous(x), contiguous(weight), contiguous(bias));
        let d = dims(&xs, &ws);
        tensor(kernels::forward(&d, slice(&x), slice(&w), slice(&b)), &[d.batch, d.outputs])
    }
}

/// The backward step of `gemm_linear`: the input's, the weight's and the bias's gradients from
/// the output's.
#[derive(Debug)]
struct GemmLinearBackward;

impl Backward<Flex, 3> for GemmLinearBackward {
    type State = (NodeId, NodeId);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let [x_node, weight_node, bias_node] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (x_state, weight_state) = ops.state;
        let x: FlexTensor = checkpointer.retrieve_node_output(x_state);
        let weight: FlexTensor = checkpointer.retrieve_node_output(weight_state);
        let ((x, xs), (w, ws), (dy, _)) = (contiguous(x), contiguous(weight), contiguous(dy));
        let d = dims(&xs, &ws);
        if let Some(node) = x_node {
            grads.register::<Flex>(node.id, tensor(kernels::input_grad(&d, slice(&w), slice(&dy)), &xs));
        }
        if let Some(node) = weight_node {
            grads.register::<Flex>(node.id, tensor(kernels::weight_grad(&d, slice(&x), slice(&dy)), &ws));
        }
        if let Some(node) = bias_node {
            grads.register::<Flex>(node.id, tensor(kernels::bias_grad(&d, slice(&dy)), &[d.outputs]));
        }
    }
}

impl<C: CheckpointStrategy> GemmLinear for Autodiff<Flex, C> {
    fn gemm_linear(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        match GemmLinearBackward.prepare::<C>([x.node(), weight.node(), bias.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&x), prep.checkpoint(&weight));
                prep.finish(state, Flex::gemm_linear(x.into_primitive(), weight.into_primitive(), bias.into_primitive()))
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::gemm_linear(x.into_primitive(), weight.into_primitive(), bias.into_primitive())),
        }
    }
}

/// `x weight^T + bias` for `x` `[batch, inputs]`, `weight` `[outputs, inputs]`, `bias` `[outputs]`.
pub fn linear(x: Tensor<2>, weight: Tensor<2>, bias: Tensor<1>) -> Tensor<2> {
    Tensor::<2>::from_dispatch(<Dispatch as GemmLinear>::gemm_linear(x.into_dispatch(), weight.into_dispatch(), bias.into_dispatch()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    /// Outputs and gradients (input, weight, bias) equal burn's `x.matmul(w.transpose()) + b`
    /// bit for bit, on the autodiff device and without it, where the work is split over the
    /// team's threads and where it is not.
    #[test]
    fn linear_layer_and_its_gradients_equal_burns_bit_for_bit() {
        for (batch, inputs, outputs) in [(128, 784, 300), (96, 300, 100), (5, 100, 10), (1, 7, 3), (3, 1, 1)] {
            let what = format!("{batch}x{inputs} -> {outputs}");
            let device = Device::flex().autodiff();
            let random = |n: usize| Tensor::<1>::random([n], Distribution::Uniform(-1.0, 1.0), &device);
            let x = random(batch * inputs).reshape([batch, inputs]).require_grad();
            let w = random(outputs * inputs).require_grad();
            let b = random(outputs).require_grad();
            let probe = random(batch * outputs).reshape([batch, outputs]);
            let ours = linear(x.clone(), w.clone().reshape([outputs, inputs]), b.clone());
            let theirs = x.clone().matmul(w.clone().reshape([outputs, inputs]).transpose()) + b.clone().reshape([1, outputs]);
            assert_eq!(host(ours.clone()), host(theirs.clone()), "{what}: forward");
            let (g1, g2) = ((ours * probe.clone()).sum().backward(), (theirs * probe).sum().backward());
            assert_eq!(host(x.grad(&g1).unwrap()), host(x.grad(&g2).unwrap()), "{what}: input gradient");
            assert_eq!(host(w.grad(&g1).unwrap()), host(w.grad(&g2).unwrap()), "{what}: weight gradient");
            assert_eq!(host(b.grad(&g1).unwrap()), host(b.grad(&g2).unwrap()), "{what}: bias gradient");
            let plain = Device::flex();
            let (x, w, b) = (
                Tensor::<2>::from_data(x.into_data(), &plain),
                Tensor::<2>::from_data(w.reshape([outputs, inputs]).into_data(), &plain),
                Tensor::<1>::from_data(b.into_data(), &plain),
            );
            let theirs = x.clone().matmul(w.clone().transpose()) + b.clone().reshape([1, outputs]);
            assert_eq!(host(linear(x, w, b)), host(theirs), "{what}: forward without autodiff");
        }
    }
}
