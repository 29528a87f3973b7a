//! ZeroNaN: 0 where `x` is NaN, else `x`: the `Where(IsNaN(x), 0, x)` PyTorch's legacy exporter
//! writes after attention's softmax (a row of scores all masked to -inf), one pass instead of two
//! (`row_passes::fuse_zero_nan`).

use super::ElementWise;
use crate::onnx::export::Builder;

#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct ZeroNaN;

impl ElementWise for ZeroNaN {
    const OPSET: i64 = 13;
    const EXAMPLES: &'static [ZeroNaN] = &[ZeroNaN];

    #[inline]
    fn value(self, x: f32) -> f32 {
        if x.is_nan() { 0.0 } else { x }
    }
    fn write(self, b: &mut Builder, name: &str, x: String, out: &str) {
        let nan = format!("{name}.is_nan");
        b.node("IsNaN", &nan, vec![x.clone()], &nan, vec![]);
        let zero = b.init(format!("{name}.zero"), &[], &[0.0]);
        b.node("Where", name, vec![nan, zero, x], out, vec![]);
    }
}
