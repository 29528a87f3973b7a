//! Div: `p / q`.

use super::Operation;

pub struct Div;

impl Operation for Div {
    #[inline]
    fn value(p: f32, q: f32) -> f32 {
        p / q
    }
}
