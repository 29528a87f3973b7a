//! ReLU as one training operator: burn's on `flex` runs each pass on one thread; ours splits the
//! values over the team's threads, with the same arithmetic (NaN passes through, as in burn and
//! PyTorch), forward and backward.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, backend_extension};
use burn::tensor::Tensor;

use super::{contiguous, slice, tensor};

/// `max(x, 0)` of a tensor of any shape.
#[backend_extension(Flex, Autodiff)]
pub trait ReluOp: Backend {
    fn relu_op(x: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// Whether a value passes the ReLU (its gradient too): positive or NaN.
fn passes(x: f32) -> bool {
    x.is_nan() || x > 0.0
}

/// `out[i] = f(a[i], b[i])` over the team, in runs of whole tasks.
fn zip_map(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    let mut out = super::zeros(a.len());
    let run = super::run_length(a.len());
    super::for_each(out.chunks_mut(run).zip(a.chunks(run).zip(b.chunks(run))), |(out, (a, b))| {
        out.iter_mut().zip(a.iter().zip(b)).for_each(|(o, (&a, &b))| *o = f(a, b));
    });
    out
}

impl ReluOp for Flex {
    fn relu_op(x: FlexTensor) -> FlexTensor {
        let (x, shape) = contiguous(x);
        let x = slice(&x);
        tensor(zip_map(x, x, |x, _| if passes(x) { x } else { 0.0 }), &shape)
    }
}

/// The backward step: the output's gradient where the input passed, zero elsewhere.
#[derive(Debug)]
struct ReluBackward;

impl Backward<Flex, 1> for ReluBackward {
    type State = NodeId;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let [x_node] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let x: FlexTensor = checkpointer.retrieve_node_output(ops.state);
        if let Some(node) = x_node {
            let ((x, shape), (dy, _)) = (contiguous(x), contiguous(dy));
            grads.register::<Flex>(node.id, tensor(zip_map(slice(&x), slice(&dy), |x, g| if passes(x) { g } else { 0.0 }), &shape));
        }
    }
}

impl<C: CheckpointStrategy> ReluOp for Autodiff<Flex, C> {
    fn relu_op(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match ReluBackward.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let state = prep.checkpoint(&x);
                prep.finish(state, Flex::relu_op(x.into_primitive()))
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::relu_op(x.into_primitive())),
        }
    }
}

/// `max(x, 0)`, NaN kept.
pub fn relu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as ReluOp>::relu_op(x.into_dispatch()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::activation::relu as burn_relu;
    use burn::tensor::{Device, Distribution};

    fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    /// Output and input gradient equal burn's ReLU bit for bit, zeros, negative zeros and NaN
    /// included, on tensors split over the team and not.
    #[test]
    fn relu_and_its_gradient_equal_burns() {
        let device = Device::flex().autodiff();
        for n in [5, 1000, 3 * crate::ops::MIN_RUN + 7] {
            let mut values = Tensor::<1>::random([n], Distribution::Uniform(-1.0, 1.0), &device).into_data().try_to_vec::<f32>().unwrap();
            values[..4].copy_from_slice(&[0.0, -0.0, f32::NAN, -f32::NAN]);
            let x = Tensor::<1>::from_floats(values.as_slice(), &device).reshape([1, n]).require_grad();
            let (ours, theirs) = (relu(x.clone()), burn_relu(x.clone()));
            let bits = |t: Tensor<2>| host(t).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(ours.clone()), bits(theirs.clone()), "{n} outputs");
            let probe = Tensor::<2>::random([1, n], Distribution::Uniform(-1.0, 1.0), &device);
            let (g1, g2) = ((ours * probe.clone()).sum().backward(), (theirs * probe).sum().backward());
            assert_eq!(bits(x.grad(&g1).unwrap()), bits(x.grad(&g2).unwrap()), "{n} gradients");
        }
    }
}
