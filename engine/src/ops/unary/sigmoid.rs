//! Sigmoid: `1 / (1 + e^-x)`, with the engine's vectorizing `exp`.

use super::ElementWise;
use crate::kernels::elementwise::sigmoid;

#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Sigmoid;

impl ElementWise for Sigmoid {
    const ONNX: &'static [&'static str] = &["Sigmoid"];
    const EXAMPLES: &'static [Sigmoid] = &[Sigmoid];

    #[inline]
    fn value(self, x: f32) -> f32 {
        sigmoid(x)
    }
}
