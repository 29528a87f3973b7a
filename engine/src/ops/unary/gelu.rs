//! Gelu: `0.5 x (1 + erf(x / sqrt 2))`, or its tanh approximation (ONNX opset 20; below it,
//! `row_passes` fuses the Erf pattern PyTorch writes).

use super::ElementWise;
use crate::error::Result;
use crate::kernels::Isa;
use crate::kernels::elementwise::{each_value, each_value_in_place, erf};
use crate::onnx::export::{Builder, string};
use crate::onnx::import::OnnxNode;

#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Gelu {
    pub tanh: bool,
}

fn exact(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

fn tanh_approximation(x: f32) -> f32 {
    0.5 * x * (1.0 + (0.797_884_6 * (x + 0.044_715 * x * x * x)).tanh())
}

impl ElementWise for Gelu {
    const ONNX: &'static [&'static str] = &["Gelu"];
    const OPSET: i64 = 20;
    const EXAMPLES: &'static [Gelu] = &[Gelu { tanh: false }, Gelu { tanh: true }];

    fn read(node: &OnnxNode) -> Result<Gelu> {
        Ok(Gelu { tanh: node.string("approximate") == "tanh" })
    }
    #[inline]
    fn value(self, x: f32) -> f32 {
        if self.tanh { tanh_approximation(x) } else { exact(x) }
    }
    /// A loop for each form, the choice made once.
    fn apply(self, isa: Isa, x: &[f32], y: &mut [f32]) {
        if self.tanh { each_value(isa, x, y, tanh_approximation) } else { each_value(isa, x, y, exact) }
    }
    fn apply_in_place(self, isa: Isa, y: &mut [f32]) {
        if self.tanh { each_value_in_place(isa, y, tanh_approximation) } else { each_value_in_place(isa, y, exact) }
    }
    fn write(self, b: &mut Builder, name: &str, x: String, out: &str) {
        let approximate = string("approximate", if self.tanh { "tanh" } else { "none" });
        b.node("Gelu", name, vec![x], out, vec![approximate]);
    }
}
