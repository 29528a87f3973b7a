//! IsNaN: 1 where `x` is NaN, else 0 (the engine's values are finite, so always 0).

use super::ElementWise;
use crate::kernels::elementwise::truth;
use crate::onnx::export::Builder;
use crate::onnx::proto::data_type;

#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct IsNaN;

impl ElementWise for IsNaN {
    const ONNX: &'static [&'static str] = &["IsNaN"];
    const BOOLEAN: bool = true;
    const EXAMPLES: &'static [IsNaN] = &[IsNaN];

    #[inline]
    fn value(self, x: f32) -> f32 {
        truth(x.is_nan())
    }
    fn write(self, b: &mut Builder, name: &str, x: String, out: &str) {
        let t = format!("{name}.bool");
        b.node("IsNaN", name, vec![x], &t, vec![]);
        b.cast(t, out, data_type::FLOAT);
    }
}
