//! Not: 1 where `x` is zero, else 0.

use super::ElementWise;
use crate::kernels::elementwise::truth;
use crate::onnx::export::Builder;
use crate::onnx::proto::data_type;

#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Not;

impl ElementWise for Not {
    const ONNX: &'static [&'static str] = &["Not"];
    const BOOLEAN: bool = true;
    const EXAMPLES: &'static [Not] = &[Not];

    #[inline]
    fn value(self, x: f32) -> f32 {
        truth(x == 0.0)
    }
    fn write(self, b: &mut Builder, name: &str, x: String, out: &str) {
        let t = b.cast(x, &format!("{name}.bool"), data_type::BOOL);
        let not = format!("{name}.not");
        b.node("Not", name, vec![t], &not, vec![]);
        b.cast(not, out, data_type::FLOAT);
    }
}
