//! Useful GFLOP/s of the one-sample sparse 3x3 convolution kernels on ResNet-50's four stage
//! shapes at 90% (64 channels 56x56 to 512 channels 7x7), one thread, best of 30: the direct
//! kernel the engine picks (`direct::conv_direct_decoded`) against im2col and the CSR kernel.
//! Run: `cargo run --release -p engine --example resnet_convs`.

use engine::graph::Window;
use engine::kernels::csr::Csr;
use engine::kernels::direct::{self, Taps};
use engine::kernels::window::{Geometry, im2col};
use engine::kernels::{Isa, spmm};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Instant;

fn main() {
    let isa = Isa::detect();
    for (c, hw) in [(64, 56), (128, 28), (256, 14), (512, 7)] {
        let g = Geometry {
            channels: c,
            in_hw: [hw, hw],
            out_hw: [hw, hw],
            window: Window { kernel: [3, 3], stride: [1, 1], pads: [1; 4], dilation: [1, 1], ceil_mode: false },
            w: 1,
        };
        let mut rng = StdRng::seed_from_u64(1);
        let d: Vec<f32> = (0..c * c * 9).map(|_| if rng.random_bool(0.9) { 0.0 } else { rng.random_range(-1.0..1.0f32) }).collect();
        let m = Csr::from_dense(&d, c, c * 9);
        let taps = Taps::new(&m, &g);
        let x: Vec<f32> = (0..c * hw * hw).map(|i| (i % 13) as f32).collect();
        let bias = vec![0.0; c];
        let mut y = vec![0.0; c * hw * hw];
        let mut cols = vec![0.0; c * 9 * hw * hw];
        let flop = 2.0 * m.nnz() as f64 * (hw * hw) as f64;
        let (mut a, mut b) = (f64::MAX, f64::MAX);
        for _ in 0..30 {
            let t = Instant::now();
            direct::conv_direct_decoded(isa, &taps, &bias, &g, &x, &mut y, 0..c, 0..hw, true, None);
            a = a.min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            im2col(&g, &x, &mut cols);
            spmm::spmm(isa, &m, &bias, &cols, hw * hw, &mut y, 0..c, true);
            b = b.min(t.elapsed().as_secs_f64());
        }
        println!(
            "{c}ch {hw}x{hw}: direct {:.3} ms {:.1} GFLOP/s; im2col+spmm {:.3} ms {:.1} GFLOP/s",
            a * 1e3,
            flop / a / 1e9,
            b * 1e3,
            flop / b / 1e9
        );
    }
}
