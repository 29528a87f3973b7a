//! Tanh, the library's `tanh`.

use super::ElementWise;

#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Tanh;

impl ElementWise for Tanh {
    const ONNX: &'static [&'static str] = &["Tanh"];
    const EXAMPLES: &'static [Tanh] = &[Tanh];

    #[inline]
    fn value(self, x: f32) -> f32 {
        x.tanh()
    }
}
