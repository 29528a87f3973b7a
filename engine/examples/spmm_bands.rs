//! The CSR kernel as a depth-wise column calls it, against the same work on a cached tile: a
//! pointwise layer of ResNet-50 (90% sparse, one thread) over a whole image in row bands, in
//! place (rows a whole image apart, as `spmm_strided` reads and writes them), four ways: one
//! band again and again (its rows stay in cache), every band in turn over one image (the image
//! larger than L2), every band over one of six images in turn (each image cold, as a column's
//! input arriving from memory), and every band into one of six outputs in turn (each output's
//! lines cold, as a column writes a value's band of a whole-image region once per tile). Useful
//! GFLOP/s, best of several calls. Prints a Markdown table.
//! Run: `cargo run --release -p engine --example spmm_bands`.

use engine::kernels::csr::Csr;
use engine::kernels::lines::LineAligned;
use engine::kernels::{Isa, spmm};
use engine::stats::best_seconds_per_call;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Images the cold sweep turns through: 6 x 3.2 MB, more than L2 and most of a shared L3's share.
const IMAGES: usize = 6;

fn main() {
    let isa = Isa::detect();
    println!(
        "| layer (outputs x inputs) | image | band columns | one band repeated | bands, warm image | bands, cold images | bands, cold outputs |"
    );
    println!("|---|---|---|---|---|---|---|");
    // ResNet-50's pointwise layers on 56x56 and 28x28 images, with the band widths its depth-wise
    // columns run at batch 16 (`engine info`: 16 bands per image).
    for (rows, cols, hw, band) in [(64, 256, 3136, 224), (256, 64, 3136, 224), (128, 512, 784, 56), (512, 128, 784, 56)] {
        let mut rng = StdRng::seed_from_u64((rows * cols) as u64);
        let weights: Vec<f32> = (0..rows * cols).map(|_| if rng.random_bool(0.9) { 0.0 } else { rng.random_range(-1.0..1.0f32) }).collect();
        let csr = Csr::from_dense(&weights, rows, cols);
        let bias = vec![0.0; rows];
        let images: Vec<LineAligned> = (0..IMAGES).map(|k| LineAligned::from_fn(cols * hw, |i| ((i + k) % 13) as f32 * 0.1)).collect();
        let mut outputs: Vec<LineAligned> = (0..IMAGES).map(|_| LineAligned::zeroed(rows * hw)).collect();
        let y = &mut outputs[0];
        let sums = spmm::Sums::new(spmm::Ld { x: hw, y: hw }, false);
        let bands = hw / band;
        let sweep = |x: &LineAligned, y: &mut LineAligned| {
            for b in 0..bands {
                spmm::spmm_strided(isa, &csr, &bias, &x[b * band..], band, &mut y[b * band..], 0..rows, sums);
            }
        };
        let repeated = best_seconds_per_call(20 * bands, || spmm::spmm_strided(isa, &csr, &bias, &images[0], band, y, 0..rows, sums));
        let warm = best_seconds_per_call(3, || sweep(&images[0], y));
        let mut next = 0;
        let cold = best_seconds_per_call(IMAGES, || {
            next = (next + 1) % IMAGES;
            sweep(&images[next], y)
        });
        let cold_outputs = best_seconds_per_call(IMAGES, || {
            next = (next + 1) % IMAGES;
            sweep(&images[0], &mut outputs[next])
        });
        let useful = 2.0 * (csr.nnz() * hw) as f64;
        let rate = |seconds: f64| useful / seconds / 1e9;
        println!(
            "| {rows} x {cols} | {hw} | {band} | {:.1} | {:.1} | {:.1} | {:.1} |",
            rate(repeated * bands as f64),
            rate(warm),
            rate(cold),
            rate(cold_outputs)
        );
    }
}
