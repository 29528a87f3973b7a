//! Or: 1 where either is non-zero, else 0.

use super::Operation;
use crate::kernels::elementwise::truth;

pub struct Or;

impl Operation for Or {
    const BOOLEAN: bool = true;
    const LOGICAL_INPUTS: bool = true;

    #[inline]
    fn value(p: f32, q: f32) -> f32 {
        truth(p != 0.0 || q != 0.0)
    }
}
