//! Clip: `min(max(x, lo), hi)` (ReLU6 is `Clip { lo: 0, hi: 6 }`).

use super::ElementWise;
use crate::error::Result;
use crate::kernels::elementwise::clamp;
use crate::onnx::export::Builder;
use crate::onnx::import::OnnxNode;

#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Clip {
    /// Unbounded (infinite) where a native file leaves it out: JSON has no infinities.
    #[serde(default = "unbounded_below", skip_serializing_if = "is_unbounded_below")]
    pub lo: f32,
    #[serde(default = "unbounded_above", skip_serializing_if = "is_unbounded_above")]
    pub hi: f32,
}

fn unbounded_below() -> f32 {
    f32::NEG_INFINITY
}
fn unbounded_above() -> f32 {
    f32::INFINITY
}
fn is_unbounded_below(v: &f32) -> bool {
    *v == f32::NEG_INFINITY
}
fn is_unbounded_above(v: &f32) -> bool {
    *v == f32::INFINITY
}

impl ElementWise for Clip {
    const ONNX: &'static [&'static str] = &["Clip"];
    const EXAMPLES: &'static [Clip] = &[Clip { lo: 0.0, hi: 6.0 }, Clip { lo: -1.5, hi: f32::INFINITY }];

    /// Bounds from the inputs (opset 11 on) or the attributes (before), unbounded where absent.
    fn read(node: &OnnxNode) -> Result<Clip> {
        let bound = |i: usize, attr: &str, default: f32| -> Result<f32> {
            match node.has_input(i) {
                true => Ok(node.constant_values(i)?.first().copied().unwrap_or(default)),
                false => Ok(node.float(attr, default)),
            }
        };
        Ok(Clip { lo: bound(1, "min", f32::NEG_INFINITY)?, hi: bound(2, "max", f32::INFINITY)? })
    }
    #[inline]
    fn value(self, x: f32) -> f32 {
        clamp(x, self.lo, self.hi)
    }
    fn write(self, b: &mut Builder, name: &str, x: String, out: &str) {
        let lo = b.init(format!("{name}.min"), &[], &[self.lo]);
        let hi = b.init(format!("{name}.max"), &[], &[self.hi]);
        b.node("Clip", name, vec![x, lo, hi], out, vec![]);
    }
}
