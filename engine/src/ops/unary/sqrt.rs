//! Sqrt, the library's `sqrt`.

use super::ElementWise;
use crate::onnx::export::Builder;

#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Sqrt;

impl ElementWise for Sqrt {
    const ONNX: &'static [&'static str] = &["Sqrt"];
    const EXAMPLES: &'static [Sqrt] = &[Sqrt];

    #[inline]
    fn value(self, x: f32) -> f32 {
        x.sqrt()
    }
    fn write(self, b: &mut Builder, name: &str, x: String, out: &str) {
        b.node("Sqrt", name, vec![x], out, vec![]);
    }
}
