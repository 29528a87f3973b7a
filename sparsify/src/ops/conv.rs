//! The convolution training uses: burn's `conv2d` on the `flex` backend spends most of its time
//! outside its GEMM (a serial layout change and im2col on every call), so convolutions with one
//! group run on our kernels (`conv_kernels`: im2col, GEMM, col2im, samples in parallel) as a burn
//! backend extension with its own backward pass. Grouped convolutions stay on burn's.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, backend_extension};
use burn::tensor::Tensor;
use burn::tensor::module::conv2d as burn_conv2d;
use burn::tensor::ops::ConvOptions;

use super::{contiguous, slice, tensor};

use super::conv_kernels::{self as kernels, Geometry};

/// A convolution with one group on our kernels.
#[backend_extension(Flex, Autodiff)]
pub trait GemmConv: Backend {
    /// `conv(x, weight)` at `stride` with `pad` zeros on each side, no bias.
    fn gemm_conv2d(x: FloatTensor<Self>, weight: FloatTensor<Self>, stride: usize, pad: usize) -> FloatTensor<Self>;
}

fn geometry(x: &[usize], weight: &[usize], stride: usize, pad: usize) -> Geometry {
    let four = |s: &[usize]| [s[0], s[1], s[2], s[3]];
    Geometry::new(four(x), four(weight), stride, pad).expect("convolution shapes checked by the network's plan")
}

impl GemmConv for Flex {
    fn gemm_conv2d(x: FlexTensor, weight: FlexTensor, stride: usize, pad: usize) -> FlexTensor {
        let ((x, xs), (w, ws)) = (contiguous(x), contiguous(weight));
        let g = geometry(&xs, &ws, stride, pad);
        tensor(kernels::forward(&g, slice(&x), slice(&w)), &[g.batch, g.out_channels, g.out_h, g.out_w])
    }
}

/// The backward step of `gemm_conv2d`: the input's and the weight's gradients from the output's.
#[derive(Debug)]
struct GemmConvBackward;

impl Backward<Flex, 2> for GemmConvBackward {
    type State = (NodeId, NodeId, usize, usize);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let [x_node, weight_node] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (x_state, weight_state, stride, pad) = ops.state;
        let x: FlexTensor = checkpointer.retrieve_node_output(x_state);
        let weight: FlexTensor = checkpointer.retrieve_node_output(weight_state);
        let ((x, xs), (w, ws), (dy, _)) = (contiguous(x), contiguous(weight), contiguous(dy));
        let g = geometry(&xs, &ws, stride, pad);
        if let Some(node) = x_node {
            grads.register::<Flex>(node.id, tensor(kernels::input_grad(&g, slice(&w), slice(&dy)), &xs));
        }
        if let Some(node) = weight_node {
            grads.register::<Flex>(node.id, tensor(kernels::weight_grad(&g, slice(&x), slice(&dy)), &ws));
        }
    }
}

impl<C: CheckpointStrategy> GemmConv for Autodiff<Flex, C> {
    fn gemm_conv2d(x: FloatTensor<Self>, weight: FloatTensor<Self>, stride: usize, pad: usize) -> FloatTensor<Self> {
        match GemmConvBackward.prepare::<C>([x.node(), weight.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&x), prep.checkpoint(&weight), stride, pad);
                prep.finish(state, Flex::gemm_conv2d(x.into_primitive(), weight.into_primitive(), stride, pad))
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::gemm_conv2d(x.into_primitive(), weight.into_primitive(), stride, pad)),
        }
    }
}

/// A 2-D convolution of `x` `[batch, channels, h, w]` by `weight` `[out, channels / groups, k, k]`
/// at `stride` with `pad` zeros each side, plus `bias`; on our kernels where `groups` is 1.
pub fn conv2d(x: Tensor<4>, weight: Tensor<4>, bias: Option<Tensor<1>>, stride: usize, pad: usize, groups: usize) -> Tensor<4> {
    if groups != 1 {
        return burn_conv2d(x, weight, bias, ConvOptions::new([stride, stride], [pad, pad], [1, 1], groups));
    }
    let out = weight.dims()[0];
    let y = Tensor::<4>::from_dispatch(<Dispatch as GemmConv>::gemm_conv2d(x.into_dispatch(), weight.into_dispatch(), stride, pad));
    match bias {
        Some(b) => y + b.reshape([1, out, 1, 1]),
        None => y,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    fn host(t: Tensor<4>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    fn close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}");
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{what}: {x} against {y}");
        }
    }

    /// Outputs and gradients (input, weight, bias) equal burn's own convolution's, on the
    /// autodiff device and without it.
    #[test]
    fn gemm_convolution_and_its_gradients_equal_burns() {
        for (cin, cout, side, k, stride, pad) in
            [(3, 4, 9, 3, 1, 1), (4, 6, 8, 3, 2, 1), (5, 3, 6, 1, 1, 0), (2, 3, 7, 1, 2, 0), (1, 2, 8, 5, 1, 2)]
        {
            let device = Device::flex().autodiff();
            let x = Tensor::<4>::random([3, cin, side, side], Distribution::Uniform(-1.0, 1.0), &device);
            let w = Tensor::<4>::random([cout, cin, k, k], Distribution::Uniform(-1.0, 1.0), &device);
            let b = Tensor::<1>::random([cout], Distribution::Uniform(-1.0, 1.0), &device);
            let weights = |dims: [usize; 4]| Tensor::<4>::random(dims, Distribution::Uniform(-1.0, 1.0), &device);
            let (x, w, b) = (x.require_grad(), w.require_grad(), b.require_grad());
            let ours = conv2d(x.clone(), w.clone(), Some(b.clone()), stride, pad, 1);
            let theirs = burn_conv2d(x.clone(), w.clone(), Some(b.clone()), ConvOptions::new([stride, stride], [pad, pad], [1, 1], 1));
            let what = format!("{cin}->{cout} {side}x{side} k{k} s{stride} p{pad}");
            close(&host(ours.clone()), &host(theirs.clone()), &format!("{what} forward"));
            let probe = weights(ours.dims());
            let (g1, g2) = ((ours * probe.clone()).sum().backward(), (theirs * probe).sum().backward());
            close(&host(x.grad(&g1).unwrap()), &host(x.grad(&g2).unwrap()), &format!("{what} input gradient"));
            close(&host(w.grad(&g1).unwrap()), &host(w.grad(&g2).unwrap()), &format!("{what} weight gradient"));
            let bias = |g| b.grad(g).unwrap().into_data().try_to_vec::<f32>().unwrap();
            close(&bias(&g1), &bias(&g2), &format!("{what} bias gradient"));
            let plain = Device::flex();
            let (x, w) = (Tensor::<4>::from_data(x.into_data(), &plain), Tensor::<4>::from_data(w.into_data(), &plain));
            let (ours, theirs) = (
                conv2d(x.clone(), w.clone(), None, stride, pad, 1),
                burn_conv2d(x, w, None, ConvOptions::new([stride, stride], [pad, pad], [1, 1], 1)),
            );
            close(&host(ours), &host(theirs), &format!("{what} forward without autodiff"));
        }
    }
}
