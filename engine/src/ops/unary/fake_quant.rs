//! Fake quantization: an activation's QuantizeLinear then DequantizeLinear (uint8 codes),
//! `(clamp(round_half_even(x / scale) + zero, 0, 255) - zero) * scale`. The graph keeps such a
//! pair as `Op::QuantDequant`; compiled, it is this function: fused into the fp32 layer that
//! computes its input (`compile::take_fake_quant`), applied to the outputs as they are stored,
//! or a layer of its own.

use super::ElementWise;
use crate::kernels::Isa;
use crate::kernels::elementwise::{quantize_dequantize, quantize_dequantize_in_place};
use crate::onnx::export::Builder;

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FakeQuant {
    pub scale: f32,
    pub zero: u8,
}

impl Default for FakeQuant {
    fn default() -> FakeQuant {
        FakeQuant { scale: 1.0, zero: 0 }
    }
}

impl ElementWise for FakeQuant {
    const EXAMPLES: &'static [FakeQuant] = &[FakeQuant { scale: 0.05, zero: 0 }, FakeQuant { scale: 0.37, zero: 131 }];

    #[inline]
    fn value(self, x: f32) -> f32 {
        crate::kernels::q8::quantize_dequantize(x, self.scale, self.zero)
    }
    fn apply(self, isa: Isa, x: &[f32], y: &mut [f32]) {
        quantize_dequantize(isa, x, y, self.scale, self.zero)
    }
    fn apply_in_place(self, isa: Isa, y: &mut [f32]) {
        quantize_dequantize_in_place(isa, y, self.scale, self.zero)
    }
    fn write(self, b: &mut Builder, name: &str, x: String, out: &str) {
        b.quantize_dequantize(name, x, out, self.scale, self.zero);
    }
}
