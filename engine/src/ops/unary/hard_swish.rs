//! HardSwish: `x * HardSigmoid(x)` with alpha 1/6 and beta 1/2 (ONNX opset 14).

use super::ElementWise;
use crate::kernels::elementwise::clamp;

#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct HardSwish;

impl ElementWise for HardSwish {
    const ONNX: &'static [&'static str] = &["HardSwish"];
    const OPSET: i64 = 14;
    const EXAMPLES: &'static [HardSwish] = &[HardSwish];

    #[inline]
    fn value(self, x: f32) -> f32 {
        x * clamp(x / 6.0 + 0.5, 0.0, 1.0)
    }
}
