//! Pow: `p^q`, the library's `powf`.

use super::Operation;

pub struct Pow;

impl Operation for Pow {
    #[inline]
    fn value(p: f32, q: f32) -> f32 {
        p.powf(q)
    }
}
