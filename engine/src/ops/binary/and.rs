//! And: 1 where both are non-zero, else 0.

use super::Operation;
use crate::kernels::elementwise::truth;

pub struct And;

impl Operation for And {
    const BOOLEAN: bool = true;
    const LOGICAL_INPUTS: bool = true;

    #[inline]
    fn value(p: f32, q: f32) -> f32 {
        truth(p != 0.0 && q != 0.0)
    }
}
