//! HardSigmoid: `max(0, min(1, alpha x + beta))`.

use super::ElementWise;
use crate::error::Result;
use crate::kernels::elementwise::clamp;
use crate::onnx::export::{Builder, float};
use crate::onnx::import::OnnxNode;

#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct HardSigmoid {
    pub alpha: f32,
    pub beta: f32,
}

impl ElementWise for HardSigmoid {
    const ONNX: &'static [&'static str] = &["HardSigmoid"];
    const EXAMPLES: &'static [HardSigmoid] = &[HardSigmoid { alpha: 0.2, beta: 0.5 }];

    fn read(node: &OnnxNode) -> Result<HardSigmoid> {
        Ok(HardSigmoid { alpha: node.float("alpha", 0.2), beta: node.float("beta", 0.5) })
    }
    #[inline]
    fn value(self, x: f32) -> f32 {
        clamp(self.alpha * x + self.beta, 0.0, 1.0)
    }
    fn write(self, b: &mut Builder, name: &str, x: String, out: &str) {
        b.node("HardSigmoid", name, vec![x], out, vec![float("alpha", self.alpha), float("beta", self.beta)]);
    }
}
