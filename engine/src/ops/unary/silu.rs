//! SiLU (Swish): `x * Sigmoid(x)`, what `passes` makes of that pattern of two nodes.

use super::ElementWise;
use crate::kernels::elementwise::sigmoid;
use crate::onnx::export::Builder;

#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Silu;

impl ElementWise for Silu {
    const EXAMPLES: &'static [Silu] = &[Silu];

    #[inline]
    fn value(self, x: f32) -> f32 {
        x * sigmoid(x)
    }
    fn write(self, b: &mut Builder, name: &str, x: String, out: &str) {
        let gate = format!("{name}.sigmoid");
        b.node("Sigmoid", &gate, vec![x.clone()], &gate, vec![]);
        b.node("Mul", name, vec![x, gate.clone()], out, vec![]);
    }
}
