//! Every fp32 kernel of the catalogue (`engine::catalogue::Kernel::ALL`) on the same layers, one
//! thread, through `F32Kernel::run_rows` as the compiler times them and the executor runs them:
//! useful GFLOP/s (non-zero multiply-adds x 2 per second) of weight matrices from ResNet-50's and
//! BERT's layers, 90% sparse unstructured and in blocks of 4 output rows (`4x1`), on input tiles
//! of 1, 16 and 64 columns. Prints a Markdown table.
//! Run: `cargo run --release -p engine --example kernel_catalogue` (scripts/bench-kernel-catalogue).

use std::sync::Arc;
use std::time::Instant;

use engine::catalogue::{F32Kernel, Kernel};
use engine::kernels::bcsr::Bcsr;
use engine::kernels::csr::Csr;
use engine::kernels::kblocked::{DEFAULT_KC, KBlocked};
use engine::kernels::lines::LineAligned;
use engine::kernels::spmm::{Ld, Sums};
use engine::kernels::{Isa, bcsr};
use engine::stats::best_seconds_per_call;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The best seconds per call of `f` over five rounds of about 20 ms each.
fn seconds(mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    f();
    let calls = ((0.02 / t.elapsed().as_secs_f64().max(1e-9)) as usize).clamp(1, 100_000);
    best_seconds_per_call(calls, f)
}

/// `[rows, cols]` weights with a fraction `keep` of them non-zero, scattered or (`blocks`) in
/// blocks of 4 output rows sharing a column.
fn weights(rows: usize, cols: usize, keep: f64, blocks: bool, rng: &mut StdRng) -> Vec<f32> {
    let mut w = vec![0.0f32; rows * cols];
    for r in (0..rows).step_by(if blocks { bcsr::BR } else { 1 }) {
        for c in 0..cols {
            if rng.random::<f64>() < keep {
                let band = if blocks { r..(r + bcsr::BR).min(rows) } else { r..r + 1 };
                band.for_each(|r| w[r * cols + c] = rng.random::<f32>() - 0.5);
            }
        }
    }
    w
}

/// The catalogue's fp32 kernels that run on `[cols, w]` columns (the direct kernel reads images:
/// `examples/resnet_convs.rs`), each packed from `data`.
fn kernels(data: &[f32], rows: usize, cols: usize) -> Vec<F32Kernel> {
    let csr = Arc::new(Csr::from_dense(data, rows, cols));
    Kernel::ALL
        .iter()
        .filter_map(|k| match k {
            Kernel::Dense => Some(F32Kernel::Dense(Arc::new(data.to_vec()))),
            Kernel::Sparse => Some(F32Kernel::Sparse(csr.clone())),
            Kernel::Blocked => Some(F32Kernel::Blocked(Arc::new(Bcsr::from_dense(data, rows, cols)))),
            Kernel::ColumnBlocked => Some(F32Kernel::ColumnBlocked(Arc::new(KBlocked::from_csr(&csr, DEFAULT_KC)))),
            // The unfolding and Winograd kernels read images (`examples/winograd_convs.rs`); on
            // columns they are the column-blocked and dense ones.
            Kernel::Unfolding | Kernel::Direct | Kernel::Winograd | Kernel::Int8 | Kernel::Int8Direct | Kernel::Int8Tiles => None,
        })
        .collect()
}

fn main() {
    let isa = Isa::detect();
    let mut rng = StdRng::seed_from_u64(7);
    // ResNet-50: a 3x3 layer of stage 2 (im2col rows 1152), a 1x1 expansion of stage 3; BERT-base:
    // the attention output and the first feed-forward layer.
    let layers = [
        ("resnet50 3x3 stage 2", 128, 1152),
        ("resnet50 1x1 stage 3", 1024, 256),
        ("bert attention out", 768, 768),
        ("bert ffn up", 3072, 768),
    ];
    println!("| layer | weights | sparsity | columns | kernel | useful GFLOP/s |");
    println!("|---|---|---|---|---|---|");
    for (name, rows, cols) in layers {
        for blocks in [false, true] {
            let data = weights(rows, cols, 0.1, blocks, &mut rng);
            let nnz = data.iter().filter(|v| **v != 0.0).count();
            let bias: Vec<f32> = (0..rows).map(|r| (r % 7) as f32 * 0.01).collect();
            for w in [1, 16, 64] {
                // On cache lines, as a session's arena holds its values.
                let x = LineAligned::from_fn(cols * w, |i| ((i * 7919) % 13) as f32 * 0.1 - 0.6);
                let mut y = LineAligned::zeroed(rows * w);
                for k in kernels(&data, rows, cols) {
                    let sums = Sums::new(Ld::packed(w), true);
                    let s = seconds(|| k.run_rows(isa, &bias, cols, &x, w, &mut y, 0..rows, sums));
                    let mask = if blocks { "4x1" } else { "unstructured" };
                    let sparsity = 100.0 * (1.0 - nnz as f64 / data.len() as f64);
                    let gflops = 2.0 * (nnz * w) as f64 / s / 1e9;
                    println!("| {name} | [{rows}, {cols}] | {sparsity:.1}% {mask} | {w} | {} | {gflops:.1} |", k.kernel().name(w == 1));
                }
            }
        }
    }
}
