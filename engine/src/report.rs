//! What `engine info`, `engine analyze` and `engine bench` report about a compiled model, as
//! data: one place for each table, so the command line and the Python module give the same
//! numbers.

use std::ops::Deref;

use serde::Serialize;

use crate::compile::{Exec, KernelPolicy, Model};
use crate::exec::Session;
use crate::stats::{Latency, bench_input, time_runs};

/// One layer of `engine info`: its shapes, sparsity, the kernels it runs at batch 1 and above,
/// and the bytes its packed weights keep.
#[derive(Debug, Clone, Serialize)]
pub struct LayerInfo {
    pub layer: String,
    pub op: &'static str,
    pub output: Vec<usize>,
    /// `[rows, cols]` of a weighted layer.
    pub weight: Option<[usize; 2]>,
    pub sparsity: Option<f64>,
    pub kernel_batch1: Option<&'static str>,
    pub kernel_batched: Option<&'static str>,
    pub weight_bytes: usize,
}

/// Every layer of `model`, in execution order.
pub fn layers(model: &Model) -> Vec<LayerInfo> {
    model
        .layers
        .iter()
        .map(|l| {
            let m = match &l.exec {
                Exec::MatMul(m) => Some(m),
                _ => None,
            };
            LayerInfo {
                layer: l.name.clone(),
                op: l.kind,
                output: l.out_shape.clone(),
                weight: m.map(|m| [m.rows, m.cols]),
                sparsity: m.map(|m| m.sparsity),
                kernel_batch1: m.map(|m| m.kernel_name(true)),
                kernel_batched: m.map(|m| m.kernel_name(false)),
                weight_bytes: m.map_or(0, |m| m.weight_bytes()),
            }
        })
        .collect()
}

/// One layer of `engine analyze`: its median time over the runs, its share of the total, and
/// for weighted layers the useful (non-zero) GFLOP/s, sparsity and kernel.
#[derive(Debug, Clone, Serialize)]
pub struct LayerTime {
    pub layer: String,
    pub op: &'static str,
    pub ms: f64,
    pub share: f64,
    pub gflops: Option<f64>,
    pub sparsity: Option<f64>,
    pub kernel: Option<&'static str>,
}

/// Profiles `iters` runs of `batch` samples: each layer's median time.
pub fn analyze<M: Deref<Target = Model> + Clone>(
    session: &mut Session<M>,
    model: &Model,
    batch: usize,
    iters: usize,
) -> crate::Result<Vec<LayerTime>> {
    let x = bench_input(model, batch)?;
    let mut per_layer: Vec<Vec<f64>> = vec![Vec::new(); model.layers.len()];
    for _ in 0..iters.max(1) {
        for (l, s) in session.profile(&x, batch)?.into_iter().enumerate() {
            per_layer[l].push(s);
        }
    }
    let medians: Vec<f64> = per_layer.iter().map(|v| Latency::from_seconds(v).median_ms).collect();
    let total: f64 = medians.iter().sum();
    let plan = session.plan(batch);
    Ok(model
        .layers
        .iter()
        .zip(&medians)
        .enumerate()
        .map(|(i, (l, &ms))| {
            let m = match &l.exec {
                Exec::MatMul(m) => Some(m),
                _ => None,
            };
            LayerTime {
                layer: l.name.clone(),
                op: l.kind,
                ms,
                share: ms / total.max(1e-12),
                gflops: m.map(|m| m.useful_flops_per_column() * (batch as f64 * m.positions()) / (ms / 1e3) / 1e9),
                sparsity: m.map(|m| m.sparsity),
                kernel: m.map(|m| m.kernel_name_on(model.options.isa, plan.tile_of(i))),
            }
        })
        .collect())
}

/// One line of `engine bench --json`: the plan, the latency and throughput of one batch size,
/// and against a baseline when one was timed.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    pub model: String,
    pub kernels: &'static str,
    pub schedule: &'static str,
    pub tile: usize,
    pub columns: usize,
    pub batch: usize,
    pub threads: usize,
    #[serde(flatten)]
    pub latency: Latency,
    pub items_per_s: f64,
    /// The kernel each linear layer and convolution runs on this plan's tiles (as `engine info`
    /// names them; one-sample tiles run the batch-1 kernels): the compiler times candidates, so
    /// two processes may differ.
    pub layer_kernels: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dense_median_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speedup_vs_dense: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_median_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speedup: Option<f64>,
}

impl BenchRow {
    /// The row of `model` (named `name`, compiled under `kernels`) run by `session` on `batch`
    /// samples in `latency`, without a baseline.
    pub fn new<M: Deref<Target = Model> + Clone>(
        name: &str,
        model: &Model,
        kernels: KernelPolicy,
        session: &Session<M>,
        batch: usize,
        latency: Latency,
    ) -> BenchRow {
        let plan = session.plan(batch);
        BenchRow {
            model: name.to_string(),
            kernels: kernels.name(),
            schedule: plan.schedule.name(),
            tile: plan.tile,
            columns: plan.columns.len(),
            batch,
            threads: session.threads(),
            latency,
            items_per_s: batch as f64 / (latency.mean_ms / 1e3),
            layer_kernels: model
                .layers
                .iter()
                .enumerate()
                .filter_map(|(i, l)| match &l.exec {
                    Exec::MatMul(m) => Some(m.kernel_name_on(model.options.isa, plan.tile_of(i))),
                    _ => None,
                })
                .collect(),
            dense_median_ms: None,
            speedup_vs_dense: None,
            baseline: None,
            baseline_median_ms: None,
            speedup: None,
        }
    }
}

/// Times `session` on `batch` samples of the benchmark input: `warmup` untimed runs, then at
/// least 20 runs and `seconds`.
pub fn measure<M: Deref<Target = Model> + Clone>(
    session: &mut Session<M>,
    model: &Model,
    batch: usize,
    warmup: usize,
    seconds: f64,
) -> crate::Result<Latency> {
    let input = bench_input(model, batch)?;
    let runs = time_runs(warmup, 20, 100_000, seconds, || session.run(&input, batch).map(|_| ()))?;
    Ok(Latency::from_seconds(&runs))
}
