//! Element-wise kernels on feature-major tiles (`[features, w]`): one-value functions (clips,
//! sigmoid, GELU, ...), two-value operations with NumPy broadcasting over the per-sample shape,
//! and concatenation. Plain loops the compiler vectorizes; each is its own scalar reference.

use crate::graph::{BinaryKind, Unary};

/// `erf(x)` within 1.2e-7 (Numerical Recipes' `erfc` Chebyshev fit), for Erf and exact GELU.
pub fn erf(x: f32) -> f32 {
    let z = (x as f64).abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07 + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let erfc = t * poly.exp();
    (if x >= 0.0 { 1.0 - erfc } else { erfc - 1.0 }) as f32
}

/// `f(x)` for one value.
#[inline]
pub fn unary_value(f: Unary, x: f32) -> f32 {
    match f {
        Unary::Clip { lo, hi } => x.max(lo).min(hi),
        Unary::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        Unary::HardSigmoid { alpha, beta } => (alpha * x + beta).clamp(0.0, 1.0),
        Unary::HardSwish => x * (x / 6.0 + 0.5).clamp(0.0, 1.0),
        Unary::LeakyRelu { alpha } => {
            if x >= 0.0 {
                x
            } else {
                alpha * x
            }
        }
        Unary::Tanh => x.tanh(),
        Unary::Erf => erf(x),
        Unary::Gelu { tanh: false } => 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2)),
        Unary::Gelu { tanh: true } => 0.5 * x * (1.0 + (0.797_884_6 * (x + 0.044_715 * x * x * x)).tanh()),
        Unary::Sqrt => x.sqrt(),
    }
}

/// `y = f(x)` over a tile.
pub fn unary(f: Unary, x: &[f32], y: &mut [f32]) {
    y.iter_mut().zip(x).for_each(|(o, &i)| *o = unary_value(f, i));
}

#[inline]
fn apply(kind: BinaryKind, a: f32, b: f32) -> f32 {
    match kind {
        BinaryKind::Add => a + b,
        BinaryKind::Sub => a - b,
        BinaryKind::Mul => a * b,
        BinaryKind::Div => a / b,
        BinaryKind::Pow => a.powf(b),
    }
}

/// Feature strides of an input of per-sample `shape` broadcast to an output of rank `rank`
/// (aligned right; 0 along broadcast dimensions).
pub fn broadcast_strides(shape: &[usize], rank: usize) -> Vec<usize> {
    let mut strides = vec![0; rank];
    let mut step = 1;
    for (i, &d) in shape.iter().enumerate().rev() {
        let at = rank - shape.len() + i;
        strides[at] = if d == 1 { 0 } else { step };
        step *= d;
    }
    strides
}

/// The second operand of a `binary`: a value tile (`[features, w]`) or a constant (one number
/// per feature, the same for every sample).
pub enum Operand<'a> {
    Tile(&'a [f32]),
    Constant(&'a [f32]),
}

/// `y = a op b` (or `b op a` with `swap`) on tiles of `w` samples, with output per-sample shape
/// `shape` and the operands' broadcast strides (`broadcast_strides`).
pub fn binary(
    kind: BinaryKind,
    shape: &[usize],
    a: &[f32],
    a_strides: &[usize],
    b: Operand,
    b_strides: &[usize],
    swap: bool,
    w: usize,
    y: &mut [f32],
) {
    let features: usize = shape.iter().product();
    assert!(y.len() >= features * w && a_strides.len() == shape.len() && b_strides.len() == shape.len(), "binary sizes");
    let mut index = vec![0usize; shape.len()];
    let (mut ia, mut ib) = (0usize, 0usize);
    for f in 0..features {
        let out = &mut y[f * w..][..w];
        let xa = &a[ia * w..][..w];
        match b {
            Operand::Tile(b) => {
                let xb = &b[ib * w..][..w];
                if swap {
                    out.iter_mut().zip(xa.iter().zip(xb)).for_each(|(o, (&p, &q))| *o = apply(kind, q, p));
                } else {
                    out.iter_mut().zip(xa.iter().zip(xb)).for_each(|(o, (&p, &q))| *o = apply(kind, p, q));
                }
            }
            Operand::Constant(c) => {
                let q = c[ib];
                if swap {
                    out.iter_mut().zip(xa).for_each(|(o, &p)| *o = apply(kind, q, p));
                } else {
                    out.iter_mut().zip(xa).for_each(|(o, &p)| *o = apply(kind, p, q));
                }
            }
        }
        // The next output feature: advance the odometer, carrying into outer dimensions.
        for d in (0..shape.len()).rev() {
            index[d] += 1;
            ia += a_strides[d];
            ib += b_strides[d];
            if index[d] < shape[d] {
                break;
            }
            ia -= a_strides[d] * shape[d];
            ib -= b_strides[d] * shape[d];
            index[d] = 0;
        }
    }
}

/// Joins `inputs` along a per-sample axis: `outer` is the product of the dimensions before it,
/// `blocks[i]` the features input `i` holds per outer index (its axis length times the
/// dimensions after it).
pub fn concat(inputs: &[&[f32]], outer: usize, blocks: &[usize], w: usize, y: &mut [f32]) {
    let total: usize = blocks.iter().sum();
    assert!(inputs.len() == blocks.len() && y.len() >= outer * total * w, "concat sizes");
    let mut at = 0;
    for o in 0..outer {
        for (x, &b) in inputs.iter().zip(blocks) {
            y[at..at + b * w].copy_from_slice(&x[o * b * w..][..b * w]);
            at += b * w;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_known_values() {
        for (x, e) in [(0.0f32, 0.0f32), (0.5, 0.520_499_9), (1.0, 0.842_700_8), (-2.0, -0.995_322_3), (3.5, 0.999_999_3)] {
            assert!((erf(x) - e).abs() < 2e-7, "erf({x}) = {} not {e}", erf(x));
        }
    }

    #[test]
    fn binary_broadcasts_like_numpy() {
        // [2, 3] * [3] per sample, 2 samples: a[f * 2 + s].
        let a: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let c = [1.0, 10.0, 100.0];
        let mut y = vec![0.0; 12];
        binary(
            BinaryKind::Mul,
            &[2, 3],
            &a,
            &broadcast_strides(&[2, 3], 2),
            Operand::Constant(&c),
            &broadcast_strides(&[3], 2),
            false,
            2,
            &mut y,
        );
        let want: Vec<f32> = (0..12).map(|i| (i as f32) * c[(i / 2) % 3]).collect();
        assert_eq!(y, want);
        // [2, 1] - [1, 3] = [2, 3], two tiles; swapped: b - a.
        let (p, q) = ([1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0, 50.0, 60.0]);
        let mut y = vec![0.0; 12];
        binary(
            BinaryKind::Sub,
            &[2, 3],
            &p,
            &broadcast_strides(&[2, 1], 2),
            Operand::Tile(&q),
            &broadcast_strides(&[1, 3], 2),
            true,
            2,
            &mut y,
        );
        assert_eq!(y, vec![9.0, 18.0, 29.0, 38.0, 49.0, 58.0, 7.0, 16.0, 27.0, 36.0, 47.0, 56.0]);
    }
}
