//! A Cast to bool: 1 where `x` is non-zero, else 0 (the engine holds booleans as 0 and 1). The
//! importer's Cast makes it.

use super::ElementWise;
use crate::kernels::elementwise::truth;
use crate::onnx::export::Builder;
use crate::onnx::proto::data_type;

#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Bool;

impl ElementWise for Bool {
    const BOOLEAN: bool = true;
    const EXAMPLES: &'static [Bool] = &[Bool];

    #[inline]
    fn value(self, x: f32) -> f32 {
        truth(x != 0.0)
    }
    fn write(self, b: &mut Builder, name: &str, x: String, out: &str) {
        let t = b.cast(x, &format!("{name}.bool"), data_type::BOOL);
        b.cast(t, out, data_type::FLOAT);
    }
}
