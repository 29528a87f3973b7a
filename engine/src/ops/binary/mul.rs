//! Mul: `p * q`.

use super::Operation;

pub struct Mul;

impl Operation for Mul {
    #[inline]
    fn value(p: f32, q: f32) -> f32 {
        p * q
    }
}
