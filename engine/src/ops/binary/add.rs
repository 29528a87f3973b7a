//! Add: `p + q` (a residual's sum of two values of one shape is `Op::Add`, fused into the layer before it).

use super::Operation;

pub struct Add;

impl Operation for Add {
    #[inline]
    fn value(p: f32, q: f32) -> f32 {
        p + q
    }
}
