//! Sigmoid: `1 / (1 + e^-x)`, with the engine's vectorizing `exp`.

use super::ElementWise;
use crate::kernels::elementwise::sigmoid;
use crate::onnx::export::Builder;

#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Sigmoid;

impl ElementWise for Sigmoid {
    const ONNX: &'static [&'static str] = &["Sigmoid"];
    const EXAMPLES: &'static [Sigmoid] = &[Sigmoid];

    #[inline]
    fn value(self, x: f32) -> f32 {
        sigmoid(x)
    }
    fn write(self, b: &mut Builder, name: &str, x: String, out: &str) {
        b.node("Sigmoid", name, vec![x], out, vec![]);
    }
}
