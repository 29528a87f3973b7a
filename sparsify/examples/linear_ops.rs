//! Times the training linear layer's kernels at LeNet-300-100's shapes (batch 128) on the
//! operators' team (all cores, or `RAYON_NUM_THREADS`): forward, input gradient, weight
//! gradient; medians of 201 calls, microseconds.
use std::time::Instant;

use sparsify::ops::linear_kernels::{self as kernels, Dims};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time(f: impl Fn()) -> f64 {
    median(
        (0..201)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64() * 1e6
            })
            .collect(),
    )
}

fn main() {
    println!("{} threads", sparsify::ops::threads());
    for (inputs, outputs) in [(784, 300), (300, 100), (100, 10)] {
        let d = Dims { batch: 128, inputs, outputs };
        let values = |n: usize| (0..n).map(|i| (i % 97) as f32 / 97.0 - 0.5).collect::<Vec<f32>>();
        let (x, w, b, dy) = (values(128 * inputs), values(outputs * inputs), values(outputs), values(128 * outputs));
        let fwd = time(|| drop(kernels::forward(&d, &x, &w, &b)));
        let dx = time(|| drop(kernels::input_grad(&d, &w, &dy)));
        let dw = time(|| drop(kernels::weight_grad(&d, &x, &dy)));
        let gflops = |us: f64| 2.0 * (128 * inputs * outputs) as f64 / us / 1e3;
        println!(
            "{inputs}->{outputs}: forward {fwd:.0} us ({:.0} GFLOP/s), input grad {dx:.0} us ({:.0}), weight grad {dw:.0} us ({:.0})",
            gflops(fwd),
            gflops(dx),
            gflops(dw)
        );
    }
}
