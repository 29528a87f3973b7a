//! Dense one-sample 3x3 convolutions at stride 1 on ResNet's four stage shapes (64 channels
//! 56x56 to 512 channels 7x7), one thread, best of 20: Winograd's F(2x2, 3x3)
//! (`winograd::conv_winograd`) against im2col and dense GEMM, in GFLOP/s of the direct
//! convolution's multiply-adds (so Winograd can pass the machine's peak).
//! Run: `cargo run --release -p engine --example winograd_convs`.

use engine::graph::Window;
use engine::kernels::window::{Geometry, im2col};
use engine::kernels::winograd::{self, Winograd};
use engine::kernels::{Isa, dense};
use std::time::Instant;

fn best(f: &mut dyn FnMut()) -> f64 {
    f();
    (0..20)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
}

fn main() {
    let isa = Isa::detect();
    for (c, hw) in [(64, 56), (128, 28), (256, 14), (512, 7)] {
        let window = Window { kernel: [3, 3], stride: [1, 1], pads: [1; 4], dilation: [1, 1], ceil_mode: false };
        let g = Geometry { channels: c, in_hw: [hw, hw], out_hw: [hw, hw], window, w: 1 };
        let wt: Vec<f32> = (0..c * c * 9).map(|i| ((i * 7919) % 13) as f32 * 0.01 - 0.06).collect();
        let x: Vec<f32> = (0..c * hw * hw).map(|i| (i % 17) as f32 * 0.1 - 0.8).collect();
        let bias = vec![0.1; c];
        let (mut y, mut cols) = (vec![0.0; c * hw * hw], vec![0.0; c * 9 * hw * hw]);
        let t_gemm = best(&mut || {
            im2col(&g, &x, &mut cols);
            dense::dense(isa, &wt, c, c * 9, &bias, &cols, hw * hw, &mut y, true)
        });
        let wg = Winograd::new(&wt, c, c);
        let mut scratch = vec![0.0; wg.scratch_len(isa, &g, 1)];
        let t_winograd = best(&mut || {
            winograd::conv_winograd(isa, &wg, &bias, &g, &x, None, &mut y, true, &mut scratch, 1, |job| job(0));
        });
        let flop = 2.0 * (c * c * 9 * hw * hw) as f64;
        let rate = |t: f64| flop / t / 1e9;
        println!(
            "{c}ch {hw}x{hw}: im2col+gemm {:.3} ms {:.1} GFLOP/s; winograd {:.3} ms {:.1} GFLOP/s",
            t_gemm * 1e3,
            rate(t_gemm),
            t_winograd * 1e3,
            rate(t_winograd)
        );
    }
}
