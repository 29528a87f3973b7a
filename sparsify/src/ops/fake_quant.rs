//! Fake quantization of an activation (quantization-aware training) as one training operator:
//! burn's composition, `x + (fq(x) - x).detach()` with `fq` the quantize-dequantize of eight
//! element-wise passes, ran each pass on one thread and recorded it for the backward pass. Ours
//! computes the same arithmetic value by value in one pass over the team, and passes the
//! output's gradient through unchanged (the straight-through estimator).

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, backend_extension};
use burn::tensor::Tensor;

use super::{contiguous, slice, tensor};

/// Fake quantization to uint8 with `scale` and `zero_point`.
#[backend_extension(Flex, Autodiff)]
pub trait FakeQuantOp: Backend {
    fn fake_quant_op(x: FloatTensor<Self>, scale: f32, zero_point: f32) -> FloatTensor<Self>;
}

/// `t` rounded to the nearest integer, ties to even, for `|t| < 2^22` (adding and taking away
/// 1.5 * 2^23 leaves no fraction bits; the processor rounds to even): what `round_ties_even`
/// gives. Without SSE4.1's `roundss` in the baseline target, `round_ties_even` (and this trick,
/// which the compiler recognises as it, hence the `black_box`) calls a software `rintf` that
/// took most of a quantization-aware step. A zero may come back with the other sign. Larger
/// values come back rounded by `round_ties_even`.
pub fn round_half_even(t: f32) -> f32 {
    let shift = std::hint::black_box(12_582_912.0f32);
    if t.abs() < 4_194_304.0 { (t + shift) - shift } else { t.round_ties_even() }
}

/// `x + (fq(x) - x)` with `fq(x) = (clamp(round(x / scale) + zero_point, 0, 255) - zero_point) *
/// scale`, each operation rounded to f32 in the order burn's composition rounds it (the sign of a
/// zero `round_half_even` returns is lost in the addition of the zero point).
pub fn fake_quant_value(x: f32, scale: f32, zero_point: f32) -> f32 {
    let q = (round_half_even(x / scale) + zero_point).clamp(0.0, 255.0);
    x + ((q - zero_point) * scale - x)
}

impl FakeQuantOp for Flex {
    fn fake_quant_op(x: FlexTensor, scale: f32, zero_point: f32) -> FlexTensor {
        let (x, shape) = contiguous(x);
        let x = slice(&x);
        let mut y = super::zeros(x.len());
        let run = super::run_length(x.len());
        super::for_each(y.chunks_mut(run).zip(x.chunks(run)), |(y, x)| {
            y.iter_mut().zip(x).for_each(|(y, &x)| *y = fake_quant_value(x, scale, zero_point));
        });
        tensor(y, &shape)
    }
}

/// The backward step: the output's gradient, unchanged.
#[derive(Debug)]
struct StraightThrough;

impl Backward<Flex, 1> for StraightThrough {
    type State = ();

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_node] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        if let Some(node) = x_node {
            grads.register::<Flex>(node.id, dy);
        }
    }
}

impl<C: CheckpointStrategy> FakeQuantOp for Autodiff<Flex, C> {
    fn fake_quant_op(x: FloatTensor<Self>, scale: f32, zero_point: f32) -> FloatTensor<Self> {
        match StraightThrough.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((), Flex::fake_quant_op(x.into_primitive(), scale, zero_point)),
            OpsKind::UnTracked(prep) => prep.finish(Flex::fake_quant_op(x.into_primitive(), scale, zero_point)),
        }
    }
}

/// `x` quantized to uint8 with `scale` and `zero_point` and back, the gradient passed through.
pub fn fake_quant<const D: usize>(x: Tensor<D>, scale: f32, zero_point: f32) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FakeQuantOp>::fake_quant_op(x.into_dispatch(), scale, zero_point))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    fn bits<const D: usize>(t: Tensor<D>) -> Vec<u32> {
        t.into_data().try_to_vec::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()
    }

    /// burn's composition, as training ran it before this operator.
    fn composed<const D: usize>(x: Tensor<D>, scale: f32, z: f32) -> Tensor<D> {
        let fq = ((x.clone() / scale).round() + z).clamp(0.0, 255.0).sub_scalar(z).mul_scalar(scale);
        x.clone() + (fq - x).detach()
    }

    #[test]
    fn rounding_half_to_even_equals_the_standard_one() {
        for t in [0.5f32, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999997, 126.5, -127.5, 3.7, -3.7, 4_194_303.5, 4_194_304.5, 1e9, -1e9] {
            assert_eq!(round_half_even(t), t.round_ties_even(), "{t}");
        }
        assert!(round_half_even(f32::NAN).is_nan());
        assert_eq!(round_half_even(f32::INFINITY), f32::INFINITY);
    }

    /// Outputs equal burn's composition bit for bit (values inside, at and beyond the range,
    /// ties, zeros, NaN), and the gradient is the output's, on tensors split over the team and not.
    #[test]
    fn fake_quantization_equals_burns_composition() {
        let device = Device::flex().autodiff();
        for (n, scale, z) in [(9, 0.0117647, 85.0), (1000, 0.02, 0.0), (3 * crate::ops::MIN_RUN + 5, 0.003921569, 255.0)] {
            let mut values = Tensor::<1>::random([n], Distribution::Uniform(-3.0, 3.0), &device).into_data().try_to_vec::<f32>().unwrap();
            values[..9].copy_from_slice(&[0.0, -0.0, f32::NAN, 0.5 * scale, -0.5 * scale, 1.5 * scale, 1e9, -1e9, 300.0 * scale]);
            let x = Tensor::<1>::from_floats(values.as_slice(), &device).require_grad();
            let (ours, theirs) = (fake_quant(x.clone(), scale, z), composed(x.clone(), scale, z));
            assert_eq!(bits(ours.clone()), bits(theirs.clone()), "{n} values, scale {scale}, zero point {z}");
            let probe = Tensor::<1>::random([n], Distribution::Uniform(-1.0, 1.0), &device);
            let (g1, g2) = ((ours * probe.clone()).sum().backward(), (theirs * probe).sum().backward());
            assert_eq!(bits(x.grad(&g1).unwrap()), bits(x.grad(&g2).unwrap()), "{n} gradients");
        }
    }
}
