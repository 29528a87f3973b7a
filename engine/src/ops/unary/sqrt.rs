//! Sqrt, the library's `sqrt`.

use super::ElementWise;

#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Sqrt;

impl ElementWise for Sqrt {
    const ONNX: &'static [&'static str] = &["Sqrt"];
    const EXAMPLES: &'static [Sqrt] = &[Sqrt];

    #[inline]
    fn value(self, x: f32) -> f32 {
        x.sqrt()
    }
}
