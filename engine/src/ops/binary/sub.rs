//! Sub: `p - q`.

use super::Operation;

pub struct Sub;

impl Operation for Sub {
    #[inline]
    fn value(p: f32, q: f32) -> f32 {
        p - q
    }
}
