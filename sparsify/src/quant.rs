//! Quantization-aware training: fake quantization of weights and activations with a
//! straight-through estimator, as the `quantization` recipe modifier asks.
//!
//! Weights are int8 symmetric (scale `max|w| / 127`, zero point 0), per output channel or per
//! tensor; zeros stay zero, so pruning masks remain exact. Activations entering each quantized
//! layer are 8-bit asymmetric per tensor (uint8 with a zero point, the form ONNX Runtime and VNNI
//! kernels use), with a moving-average min/max observer. Rounding is half to even, as in ONNX's
//! `QuantizeLinear`.
//!
//! The straight-through estimator for weights needs no graph op: the forward pass uses the
//! fake-quantized values as its leaf tensors and the gradient is applied to the fp32 weights.
//! For activations, `x + (fq(x) - x).detach()` passes the gradient through unchanged.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::ops::fake_quant::round_half_even;

/// Largest magnitude of a symmetric int8 weight (-128 is not used, as in most int8 runtimes).
pub const WEIGHT_QMAX: f32 = 127.0;

/// Quantization state of a network: which layers, their observers, and what is switched on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantState {
    /// One scale per output channel (else one per tensor).
    pub per_channel: bool,
    /// Weight of the newest batch in the moving min/max (PyTorch's default is 0.01).
    pub averaging: f32,
    pub layers: Vec<QuantLayer>,
    /// Fake quantization is applied in the forward pass.
    pub active: bool,
    /// Observers follow the data (else their ranges are frozen).
    pub observe: bool,
}

/// One quantized layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantLayer {
    /// Index of the layer's weight parameter.
    pub weight: usize,
    /// Observed `[min, max]` of the layer's input, once it has seen data.
    pub range: Option<[f32; 2]>,
}

/// Scale and zero point of an 8-bit asymmetric activation quantizer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActQuant {
    pub scale: f32,
    pub zero_point: u8,
}

impl ActQuant {
    /// The quantizer covering `[min, max]` (widened to include 0, so that 0 is exact).
    pub fn from_range([min, max]: [f32; 2]) -> ActQuant {
        let (lo, hi) = (min.min(0.0), max.max(0.0));
        let scale = ((hi - lo) / 255.0).max(1e-8);
        let zero_point = (-lo / scale).round_ties_even().clamp(0.0, 255.0) as u8;
        ActQuant { scale, zero_point }
    }
    pub fn quantize(&self, x: f32) -> u8 {
        ((x / self.scale).round_ties_even() + self.zero_point as f32).clamp(0.0, 255.0) as u8
    }
}

impl QuantState {
    /// The layer quantizing weight parameter `i`, if any.
    pub fn layer(&self, i: usize) -> Option<usize> {
        self.layers.iter().position(|l| l.weight == i)
    }
}

/// Rows of a weight per task when its quantization is split over the operators' team.
fn rows_per_task(rows: usize, cols: usize) -> usize {
    rows.div_ceil(crate::ops::threads()).max(crate::ops::MIN_RUN / cols.max(1)).max(1)
}

/// Per-row scales of a weight `[rows, cols]` (one repeated scale when `per_channel` is off):
/// the largest magnitude over 127 (at least 1e-12), of the row or of the whole weight.
pub fn weight_scales(values: &[f32], rows: usize, per_channel: bool) -> Vec<f32> {
    let cols = (values.len() / rows.max(1)).max(1);
    let largest = |v: &[f32]| v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let per_row: Vec<f32> =
        crate::ops::map(values.chunks(rows_per_task(rows, cols) * cols), |block| block.chunks(cols).map(largest).collect::<Vec<f32>>())
            .into_iter()
            .flatten()
            .collect();
    let scale = |m: f32| (m / WEIGHT_QMAX).max(1e-12);
    if per_channel { per_row.into_iter().map(scale).collect() } else { vec![scale(largest(&per_row)); rows] }
}

/// The int8 value of `v` under `scale`: |v / scale| <= 127 (the scale is the largest magnitude
/// over 127), inside the range where `round_half_even` is exact.
fn quantize(v: f32, scale: f32) -> i8 {
    round_half_even(v / scale).clamp(-WEIGHT_QMAX, WEIGHT_QMAX) as i8
}

/// The int8 values of a weight under `scales` (one per row).
pub fn quantize_weight(values: &[f32], scales: &[f32]) -> Vec<i8> {
    let cols = (values.len() / scales.len().max(1)).max(1);
    values.chunks(cols).zip(scales).flat_map(|(row, &scale)| row.iter().map(move |&v| quantize(v, scale))).collect()
}

/// The weight as the quantized model sees it: `q * scale`.
pub fn fake_quant_weight(values: &[f32], rows: usize, per_channel: bool) -> Vec<f32> {
    dequantized(values, &weight_scales(values, rows, per_channel))
}

/// The weight as the quantized model sees it (`q * scale`), and its per-row scales.
pub fn quantized_weight(values: &[f32], rows: usize, per_channel: bool) -> (Vec<f32>, Vec<f32>) {
    let scales = weight_scales(values, rows, per_channel);
    (dequantized(values, &scales), scales)
}

/// `q * scale` of every value under its row's scale, rows split over the operators' team.
fn dequantized(values: &[f32], scales: &[f32]) -> Vec<f32> {
    let cols = (values.len() / scales.len().max(1)).max(1);
    let per = rows_per_task(scales.len(), cols);
    let mut data = crate::ops::zeros(values.len());
    crate::ops::for_each(data.chunks_mut(per * cols).zip(values.chunks(per * cols)).zip(scales.chunks(per)), |((out, block), scales)| {
        for ((out, row), &scale) in out.chunks_mut(cols).zip(block.chunks(cols)).zip(scales) {
            out.iter_mut().zip(row).for_each(|(o, &v)| *o = quantize(v, scale) as f32 * scale);
        }
    });
    data
}

/// Fake-quantizes a tensor with a straight-through gradient.
pub fn fake_quant_tensor<const D: usize>(x: Tensor<D>, q: ActQuant) -> Tensor<D> {
    crate::ops::fake_quant::fake_quant(x, q.scale, q.zero_point as f32)
}

/// Smallest and largest value of a tensor.
pub fn min_max<const D: usize>(x: &Tensor<D>) -> [f32; 2] {
    let host = |t: Tensor<1>| t.to_data().try_to_vec::<f32>().expect("f32 tensor")[0];
    [host(x.clone().min()), host(x.clone().max())]
}

/// The observer range after seeing a batch with range `batch`.
pub fn observe(old: Option<[f32; 2]>, batch: [f32; 2], averaging: f32) -> [f32; 2] {
    match old {
        None => batch,
        Some([lo, hi]) => [lo + averaging * (batch[0] - lo), hi + averaging * (batch[1] - hi)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_quantization_keeps_zeros_and_bounds() {
        let w = vec![0.0, 0.5, -1.0, 0.25, 0.0, 2.0, -0.1, 0.0];
        let scales = weight_scales(&w, 2, true);
        assert_eq!(scales, vec![1.0 / 127.0, 2.0 / 127.0]);
        let q = quantize_weight(&w, &scales);
        assert_eq!(q, vec![0, 64, -127, 32, 0, 127, -6, 0]);
        let fq = fake_quant_weight(&w, 2, true);
        assert!(fq.iter().zip(&w).all(|(a, b)| (a - b).abs() <= 1.0 / 127.0));
        assert_eq!(fq[0], 0.0);
        let per_tensor = weight_scales(&w, 2, false);
        assert_eq!(per_tensor, vec![2.0 / 127.0; 2]);
    }

    #[test]
    fn activation_range_includes_zero() {
        let q = ActQuant::from_range([0.5, 2.55]);
        assert_eq!(q.zero_point, 0);
        assert!((q.scale - 0.01).abs() < 1e-7);
        assert_eq!(q.quantize(0.0), 0);
        assert_eq!(q.quantize(3.0), 255);
        let q = ActQuant::from_range([-1.0, 1.0]);
        assert_eq!(q.quantize(0.0), q.zero_point);
        assert_eq!(observe(Some([0.0, 1.0]), [-1.0, 3.0], 0.5), [-0.5, 2.0]);
    }

    #[test]
    fn fake_quant_tensor_matches_the_scalar_quantizer() {
        use burn::tensor::TensorData;
        let device = crate::step::eval_device();
        let xs = vec![-1.3f32, -0.01, 0.0, 0.26, 0.7, 5.0];
        let q = ActQuant::from_range([-1.0, 2.0]);
        let t = Tensor::<1>::from_data(TensorData::new(xs.clone(), [xs.len()]), &device);
        let got = fake_quant_tensor(t, q).to_data().try_to_vec::<f32>().unwrap();
        for (x, g) in xs.iter().zip(got) {
            let want = (q.quantize(*x) as f32 - q.zero_point as f32) * q.scale;
            assert!((g - want).abs() < 1e-6, "{x}: {g} vs {want}");
        }
    }
}
