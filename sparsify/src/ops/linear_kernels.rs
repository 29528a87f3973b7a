//! The training linear layer's kernels, on plain row-major `f32` slices: `y = x W^T + b` and
//! its gradients, each a one-thread GEMM per task with the output's columns split over the
//! team's threads. Every element is summed over the same `k`, in the same order,
//! as burn's `matmul` sums it on `flex` (one GEMM over the whole matrix, whose blocking of `k`
//! depends on `k` alone), so the results equal burn's bit for bit; burn ran these products on
//! one thread and copied the weight's gradient out of a transposed view. Each has a scalar
//! twin in the tests.

use super::gemm::{Operand, matmul};

/// A linear layer's sizes: input `[batch, inputs]`, weight `[outputs, inputs]`, bias
/// `[outputs]`, output `[batch, outputs]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    pub batch: usize,
    pub inputs: usize,
    pub outputs: usize,
}

/// Multiply-adds below which a product is not worth another thread (about ten microseconds).
const MACS_PER_TASK: usize = 1 << 20;

/// `dst (m x n, row-major) = a (m x k) * b (k x n)`, the columns of `dst` split over the pool's
/// threads: each task packs only its block of `b`'s columns (the large operand here, a weight
/// or a batch of activations) and writes a block of columns, copied into `dst` after.
fn matmul_by_columns(dst: &mut [f32], a: Operand, b: Operand, [m, k, n]: [usize; 3]) {
    let tasks = (m * k * n / MACS_PER_TASK).clamp(1, super::threads());
    let cols = n.div_ceil(tasks).max(1);
    let blocks = super::map(0..n.div_ceil(cols), |task| {
        let (first, width) = (task * cols, cols.min(n - task * cols));
        let mut block = vec![0.0; m * width];
        let b = Operand { values: &b.values[(first * b.col_stride).min(b.values.len())..], ..b };
        matmul(&mut block, false, a, b, [m, k, width]);
        block
    });
    for (task, block) in blocks.into_iter().enumerate() {
        let (first, width) = (task * cols, cols.min(n - task * cols));
        for (row, values) in dst.chunks_mut(n).zip(block.chunks(width.max(1))) {
            row[first..first + width].copy_from_slice(values);
        }
    }
}

/// `y = x W^T + b`, `[batch, outputs]`: the product first, the bias added to it after, as
/// burn's `x.matmul(w.transpose()) + b` rounds.
pub fn forward(d: &Dims, x: &[f32], weight: &[f32], bias: &[f32]) -> Vec<f32> {
    let mut y = super::zeros(d.batch * d.outputs);
    if d.outputs == 0 || d.batch == 0 {
        return y;
    }
    matmul_by_columns(&mut y, Operand::rows(x, d.inputs), Operand::transposed(weight, d.inputs), [d.batch, d.inputs, d.outputs]);
    for row in y.chunks_mut(d.outputs) {
        row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
    }
    y
}

/// The gradient with respect to `x`, `dy W`, `[batch, inputs]`.
pub fn input_grad(d: &Dims, weight: &[f32], dy: &[f32]) -> Vec<f32> {
    let mut dx = super::zeros(d.batch * d.inputs);
    if d.inputs == 0 || d.batch == 0 {
        return dx;
    }
    matmul_by_columns(&mut dx, Operand::rows(dy, d.outputs), Operand::rows(weight, d.inputs), [d.batch, d.outputs, d.inputs]);
    dx
}

/// The gradient with respect to the weight, `dy^T x`, `[outputs, inputs]`.
pub fn weight_grad(d: &Dims, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let mut dw = super::zeros(d.outputs * d.inputs);
    if d.inputs == 0 || d.outputs == 0 {
        return dw;
    }
    matmul_by_columns(&mut dw, Operand::transposed(dy, d.outputs), Operand::rows(x, d.inputs), [d.outputs, d.batch, d.inputs]);
    dw
}

/// The gradient with respect to the bias: `dy` summed over the batch, row after row from zero
/// (as burn's sum over the first axis adds them).
pub fn bias_grad(d: &Dims, dy: &[f32]) -> Vec<f32> {
    let mut db = vec![0.0; d.outputs];
    for row in dy.chunks(d.outputs.max(1)).take(d.batch) {
        db.iter_mut().zip(row).for_each(|(s, v)| *s += v);
    }
    db
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layer and its gradients by their definitions, one multiply-add at a time.
    fn scalar(d: &Dims, x: &[f32], w: &[f32], b: &[f32], dy: &[f32]) -> [Vec<f32>; 4] {
        let (mut y, mut dx, mut dw, mut db) =
            (vec![0.0; d.batch * d.outputs], vec![0.0; x.len()], vec![0.0; w.len()], vec![0.0; d.outputs]);
        for s in 0..d.batch {
            for o in 0..d.outputs {
                let (yi, g) = (s * d.outputs + o, dy[s * d.outputs + o]);
                for i in 0..d.inputs {
                    y[yi] += x[s * d.inputs + i] * w[o * d.inputs + i];
                    dx[s * d.inputs + i] += w[o * d.inputs + i] * g;
                    dw[o * d.inputs + i] += x[s * d.inputs + i] * g;
                }
                y[yi] += b[o];
                db[o] += g;
            }
        }
        [y, dx, dw, db]
    }

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.5 - 1.0).collect()
    }

    #[test]
    fn kernels_match_their_definitions_on_edge_shapes() {
        for (batch, inputs, outputs) in
            [(7, 5, 3), (1, 9, 4), (2, 1, 1), (5, 3, 1), (3, 40, 17), (128, 64, 10), (128, 200, 171), (0, 4, 3), (3, 0, 2), (3, 4, 0)]
        {
            let d = Dims { batch, inputs, outputs };
            let (x, w, b, dy) = (values(batch * inputs, 1), values(outputs * inputs, 2), values(outputs, 3), values(batch * outputs, 4));
            let want = scalar(&d, &x, &w, &b, &dy);
            let got = [forward(&d, &x, &w, &b), input_grad(&d, &w, &dy), weight_grad(&d, &x, &dy), bias_grad(&d, &dy)];
            for ((name, got), want) in ["y", "dx", "dw", "db"].into_iter().zip(got).zip(&want) {
                assert_eq!(got.len(), want.len(), "{d:?} {name}");
                for (a, b) in got.iter().zip(want) {
                    assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{d:?} {name}: {a} against {b}");
                }
            }
        }
    }
}
