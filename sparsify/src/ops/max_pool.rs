//! Max pooling without padding as one training operator: burn's `max_pool2d` on flex took 29% of
//! a LeNet-5 epoch. Ours (`max_pool_kernels`) keeps each maximum's index for the backward pass.

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, backend_extension};
use burn::tensor::Tensor;

use super::max_pool_kernels::{self as kernels, Pool};
use super::{contiguous, slice, tensor};

/// Max pooling of `[batch, channels, h, w]` over square windows inside the image.
#[backend_extension(Flex, Autodiff)]
pub trait MaxPoolOp: Backend {
    fn max_pool(x: FloatTensor<Self>, kernel: usize, stride: usize) -> FloatTensor<Self>;
}

/// The pooling of `x`, its output's shape and the maxima's indices.
fn pool(x: FlexTensor, kernel: usize, stride: usize) -> (Vec<f32>, Vec<usize>, Vec<u32>, Vec<usize>) {
    let (x, shape) = contiguous(x);
    let p = Pool { planes: shape[0] * shape[1], height: shape[2], width: shape[3], kernel, stride };
    let (y, at) = kernels::forward(&p, slice(&x));
    (y, vec![shape[0], shape[1], p.out_h(), p.out_w()], at, shape)
}

impl MaxPoolOp for Flex {
    fn max_pool(x: FlexTensor, kernel: usize, stride: usize) -> FlexTensor {
        let (y, out_shape, ..) = pool(x, kernel, stride);
        tensor(y, &out_shape)
    }
}

/// The backward step: each output's gradient to its maximum.
#[derive(Debug)]
struct MaxPoolBackward;

impl Backward<Flex, 1> for MaxPoolBackward {
    /// The maxima's indices, the input's shape, kernel and stride.
    type State = (Vec<u32>, Vec<usize>, usize, usize);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_node] = ops.parents;
        let (dy, _) = contiguous(grads.consume::<Flex>(&ops.node));
        let (at, shape, kernel, stride) = ops.state;
        if let Some(node) = x_node {
            let p = Pool { planes: shape[0] * shape[1], height: shape[2], width: shape[3], kernel, stride };
            grads.register::<Flex>(node.id, tensor(kernels::backward(&p, &at, slice(&dy)), &shape));
        }
    }
}

impl<C: CheckpointStrategy> MaxPoolOp for Autodiff<Flex, C> {
    fn max_pool(x: FloatTensor<Self>, kernel: usize, stride: usize) -> FloatTensor<Self> {
        match MaxPoolBackward.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (y, out_shape, at, shape) = pool(x.into_primitive(), kernel, stride);
                prep.finish((at, shape, kernel, stride), tensor(y, &out_shape))
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::max_pool(x.into_primitive(), kernel, stride)),
        }
    }
}

/// Max pooling of `x` `[batch, channels, h, w]` over `kernel x kernel` windows at `stride`, no
/// padding (each window inside the image).
pub fn max_pool2d(x: Tensor<4>, kernel: usize, stride: usize) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as MaxPoolOp>::max_pool(x.into_dispatch(), kernel, stride))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::module::max_pool2d as burn_max_pool2d;
    use burn::tensor::ops::MaxPoolOptions;
    use burn::tensor::{Device, Distribution};

    fn host(t: Tensor<4>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    /// Output and input gradient equal burn's own pooling's on values without ties.
    #[test]
    fn max_pool_and_its_gradient_equal_burns() {
        let device = Device::flex().autodiff();
        for (shape, kernel, stride) in [([3, 2, 8, 8], 2, 2), ([2, 3, 7, 9], 3, 2), ([1, 1, 5, 5], 2, 1)] {
            let x = Tensor::<4>::random(shape, Distribution::Uniform(-1.0, 1.0), &device).require_grad();
            let ours = max_pool2d(x.clone(), kernel, stride);
            let theirs = burn_max_pool2d(x.clone(), MaxPoolOptions::new([kernel, kernel]).with_stride([stride, stride]));
            assert_eq!(host(ours.clone()), host(theirs.clone()), "{shape:?} output");
            let probe = Tensor::<4>::random(ours.dims(), Distribution::Uniform(-1.0, 1.0), &device);
            let (g1, g2) = ((ours * probe.clone()).sum().backward(), (theirs * probe).sum().backward());
            assert_eq!(host(x.grad(&g1).unwrap()), host(x.grad(&g2).unwrap()), "{shape:?} gradient");
        }
    }
}
