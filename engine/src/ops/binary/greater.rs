//! Greater: 1 where `p > q`, else 0.

use super::Operation;
use crate::kernels::elementwise::truth;

pub struct Greater;

impl Operation for Greater {
    const BOOLEAN: bool = true;

    #[inline]
    fn value(p: f32, q: f32) -> f32 {
        truth(p > q)
    }
}
