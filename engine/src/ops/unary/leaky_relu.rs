//! LeakyRelu: `x` where positive, else `alpha x`.

use super::ElementWise;
use crate::error::Result;
use crate::onnx::export::{Builder, float};
use crate::onnx::import::OnnxNode;

#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct LeakyRelu {
    pub alpha: f32,
}

impl ElementWise for LeakyRelu {
    const ONNX: &'static [&'static str] = &["LeakyRelu"];
    const EXAMPLES: &'static [LeakyRelu] = &[LeakyRelu { alpha: 0.1 }];

    fn read(node: &OnnxNode) -> Result<LeakyRelu> {
        Ok(LeakyRelu { alpha: node.float("alpha", 0.01) })
    }
    #[inline]
    fn value(self, x: f32) -> f32 {
        if x >= 0.0 { x } else { self.alpha * x }
    }
    fn write(self, b: &mut Builder, name: &str, x: String, out: &str) {
        b.node("LeakyRelu", name, vec![x], out, vec![float("alpha", self.alpha)]);
    }
}
