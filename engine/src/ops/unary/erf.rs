//! Erf, the engine's vectorizing fit (`kernels::elementwise::erf`).

use super::ElementWise;
use crate::kernels::elementwise::erf;

#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Erf;

impl ElementWise for Erf {
    const ONNX: &'static [&'static str] = &["Erf"];
    const EXAMPLES: &'static [Erf] = &[Erf];

    #[inline]
    fn value(self, x: f32) -> f32 {
        erf(x)
    }
}
