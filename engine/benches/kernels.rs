//! Kernel benchmarks on the shapes of the standard workload (the 2048-wide layers of
//! `mlp3x2048`): dense GEMM as the measured peak, the unstructured sparse kernels at 90% and 95%,
//! and the int8 kernel on unstructured and 1x4-block weights.
//! Throughput is reported in useful FLOP (2 x non-zeros x columns), so dense and sparse compare.
//! Run: `cargo bench -p engine --bench kernels`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use engine::kernels::bcsr::{self, Bcsr};
use engine::kernels::csr::Csr;
use engine::kernels::kblocked::{self, KBlocked};
use engine::kernels::q8::{self, Dequant, Q8Matrix};
use engine::kernels::q8amx::{self, TileMatrix};
use engine::kernels::{Isa, dense, spmm, spmv};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn random_sparse(rows: usize, cols: usize, sparsity: f64, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..rows * cols).map(|_| if rng.random_bool(sparsity) { 0.0 } else { rng.random_range(-1.0..1.0f32) }).collect()
}

fn kernels(c: &mut Criterion) {
    let isa = Isa::detect();
    let (rows, cols, w) = (2048, 2048, 64);
    // 64-byte aligned activations, as the executor lays them out.
    let x_storage: Vec<f32> = (0..cols * w + 16).map(|i| (i % 17) as f32 * 0.1).collect();
    let start = (64 - x_storage.as_ptr() as usize % 64) % 64 / 4;
    let x = &x_storage[start..start + cols * w];
    let bias = vec![0.1f32; rows];
    let mut y = vec![0.0f32; rows * w];
    let mut g = c.benchmark_group(format!("layer_2048x2048_{}", isa.name()));
    g.sample_size(20).measurement_time(std::time::Duration::from_secs(3));

    let wd = random_sparse(rows, cols, 0.0, 1);
    g.throughput(Throughput::Elements((2 * rows * cols * w) as u64));
    g.bench_function("f32-gemm-dense-b64", |b| b.iter(|| dense::dense(isa, &wd, rows, cols, &bias, x, w, &mut y, true)));
    let full = Bcsr::from_dense(&wd, rows, cols);
    g.bench_function("f32-spmm-bcsr4x1-b64-s0", |b| {
        b.iter(|| bcsr::spmm_bcsr(isa, &full, &bias, x, w, &mut y, 0..rows, spmm::Sums::new(spmm::Ld::packed(w), true)))
    });
    // 90% sparse in whole blocks of 4 output rows, as `mask = "4x1"` trains them.
    let mut rng = StdRng::seed_from_u64(3);
    let keep: Vec<bool> = (0..rows / 4 * cols).map(|_| !rng.random_bool(0.9)).collect();
    let blocked: Vec<f32> = (0..rows * cols).map(|i| if keep[(i / cols) / 4 * cols + i % cols] { 0.5 } else { 0.0 }).collect();
    let bm = Bcsr::from_dense(&blocked, rows, cols);
    g.throughput(Throughput::Elements((2 * bm.val.len() * w) as u64));
    g.bench_function("f32-spmm-bcsr4x1-b64-s90", |b| {
        b.iter(|| bcsr::spmm_bcsr(isa, &bm, &bias, x, w, &mut y, 0..rows, spmm::Sums::new(spmm::Ld::packed(w), true)))
    });

    for s in [0.9, 0.95] {
        let m = Csr::from_dense(&random_sparse(rows, cols, s, 2), rows, cols);
        g.throughput(Throughput::Elements((2 * m.nnz() * w) as u64));
        g.bench_function(format!("f32-spmm-csr-b64-s{}", (s * 100.0) as u32), |b| {
            b.iter(|| spmm::spmm(isa, &m, &bias, x, w, &mut y, 0..rows, true))
        });
        let kb = KBlocked::from_csr(&m, kblocked::DEFAULT_KC);
        g.bench_function(format!("f32-spmm-csr-kc128-b64-s{}", (s * 100.0) as u32), |b| {
            b.iter(|| kblocked::spmm_kblocked(isa, &kb, &bias, x, w, &mut y, 0..rows, spmm::Sums::new(spmm::Ld::packed(w), true)))
        });
        g.throughput(Throughput::Elements((2 * m.nnz()) as u64));
        g.bench_function(format!("f32-spmv-csr-b1-s{}", (s * 100.0) as u32), |b| {
            b.iter(|| spmv::spmv(isa, &m, &bias, &x[..cols], &mut y, 0..rows, true))
        });
    }

    // Int8: unstructured 90% and 90% in 1x4 blocks (one VNNI group each), on a quantized tile.
    let mut qx = vec![0u8; q8::quantized_len(cols, w)];
    q8::quantize(isa, x, cols, w, 0.02, 128, &mut qx);
    let dequant =
        |m: &Q8Matrix| Dequant { bias: bias.clone(), mult: vec![1e-3; rows], zero_corr: m.row_sums.clone(), relu: true, fake_quant: None };
    let int8 = |v: &[f32]| v.iter().map(|&f| (f * 100.0) as i8).collect::<Vec<i8>>();
    let unstructured = Q8Matrix::from_int8(&int8(&random_sparse(rows, cols, 0.9, 4)), rows, cols);
    let keep4: Vec<bool> = (0..rows * cols / 4).map(|_| !rng.random_bool(0.9)).collect();
    let block4: Vec<f32> = (0..rows * cols).map(|i| if keep4[i / 4] { 0.5 } else { 0.0 }).collect();
    let block4 = Q8Matrix::from_int8(&int8(&block4), rows, cols);
    let useful = |m: &Q8Matrix| (0..m.packed.len()).map(|j| m.packed[j].to_le_bytes().iter().filter(|&&b| b != 0).count()).sum::<usize>();
    for (name, m) in [("q8-spmm-k4-b64-s90", &unstructured), ("q8-spmm-k4-b64-s90-block1x4", &block4)] {
        let d = dequant(m);
        g.throughput(Throughput::Elements((2 * useful(m) * w) as u64));
        g.bench_function(name, |b| b.iter(|| q8::spmm_q8(isa, m, &qx, w, &mut y, 0..rows, &d)));
    }
    // The same unstructured weights dense on AMX tiles (where the CPU has them): useful work as
    // above, so the figure compares with the sparse kernel's directly.
    if q8amx::available(isa) {
        let values = int8(&random_sparse(rows, cols, 0.9, 4));
        let tiles = TileMatrix::from_int8(&values, rows, cols);
        let d = dequant(&unstructured);
        g.throughput(Throughput::Elements((2 * useful(&unstructured) * w) as u64));
        g.bench_function("q8-amx-dense-b64-s90", |b| b.iter(|| q8amx::matmul_into(&tiles, &qx, w, q8::Output::F32(&mut y), 0..rows, &d)));
    }
    g.finish();
}

criterion_group!(benches, kernels);
criterion_main!(benches);
