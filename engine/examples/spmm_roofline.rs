//! Where the sparse CSR kernel's time goes: useful GFLOP/s of `spmm` (one thread, 90% sparse
//! rows of 256 outputs) on one packed input tile of `cols` inputs by 16, 32 or 64 columns, used
//! again and again, so the tile stays in L1 (48 KiB here), L2 or beyond by its size alone; the
//! dense GEMM on the same shapes gives the core's reachable peak. Prints a Markdown table.
//! Run: `cargo run --release -p engine --example spmm_roofline` (scripts/bench-kernel-roofline).

use engine::kernels::csr::Csr;
use engine::kernels::lines::LineAligned;
use engine::kernels::{Isa, dense, spmm};
use engine::stats::best_seconds_per_call;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const ROWS: usize = 256;

fn main() {
    let isa = Isa::detect();
    println!("| inputs | columns | input tile KiB | CSR GFLOP/s (useful) | dense GFLOP/s |");
    println!("|---|---|---|---|---|");
    for cols in [64, 128, 256, 512, 1152, 2304] {
        let mut rng = StdRng::seed_from_u64(cols as u64);
        let weights: Vec<f32> = (0..ROWS * cols).map(|_| if rng.random_bool(0.9) { 0.0 } else { rng.random_range(-1.0..1.0f32) }).collect();
        let csr = Csr::from_dense(&weights, ROWS, cols);
        let bias = vec![0.0; ROWS];
        for w in [16, 32, 64] {
            // On cache lines, as a session's arena holds its values.
            let x = LineAligned::from_fn(cols * w, |i| (i % 13) as f32 * 0.1);
            let mut y = LineAligned::zeroed(ROWS * w);
            // About 20 million multiply-adds per round.
            let calls = (20_000_000 / (csr.nnz() * w).max(1)).max(1);
            let sparse = best_seconds_per_call(calls, || spmm::spmm(isa, &csr, &bias, &x, w, &mut y, 0..ROWS, false));
            let dense = best_seconds_per_call(calls / 10 + 1, || dense::dense(isa, &weights, ROWS, cols, &bias, &x, w, &mut y, false));
            let useful = 2.0 * (csr.nnz() * w) as f64;
            let all = 2.0 * (ROWS * cols * w) as f64;
            println!("| {cols} | {w} | {} | {:.1} | {:.1} |", cols * w * 4 / 1024, useful / sparse / 1e9, all / dense / 1e9);
        }
    }
}
