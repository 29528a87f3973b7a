//! One-shot points of a sweep: a trained model pruned without training by one method to one
//! sparsity (`sparsify::oneshot`), then evaluated and timed like a trained point.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use sparsify::export::{Format, write_graph};
use sparsify::oneshot::{self, Settings, obs::ObsOptions};

use crate::point::{PointResult, engine_accuracy};
use crate::sweep::{OneshotPoint, Point};

/// Prunes, writes `model.sparse` and `model.onnx` into `dir`, and measures top-1 on the
/// dataset's test set; the timings are left to the caller.
pub fn run(o: &OneshotPoint, dir: &Path, (data, allow_subset): (Option<PathBuf>, bool), p: &Point) -> anyhow::Result<PointResult> {
    let start = Instant::now();
    let mut graph = engine::load(&o.model)?;
    let (d, source) = oneshot::load_images(&o.dataset, data, allow_subset, &graph.input_shape)?;
    let mask = sparsify::mask::MaskKind::parse(&o.mask).map_err(anyhow::Error::msg)?;
    let settings = Settings { sparsity: o.sparsity, method: o.method, mask, obs: ObsOptions::default(), threads: 2 };
    let (inputs, labels) = oneshot::images(&d, &d.train, o.samples, 0);
    let n = labels.len();
    let layers = oneshot::prune(&mut graph, &inputs, n, &settings, |_| {}).with_context(|| format!("pruning {}", p.label()))?;
    let native = dir.join("model.sparse");
    write_graph(&graph, &native, Format::Native)?;
    write_graph(&graph, &dir.join("model.onnx"), Format::Onnx)?;
    let top1 = engine_accuracy(&native, &d.test, &d.norm, d.num_classes)?;
    let weights: usize = layers.iter().map(|l| l.rows * l.cols).sum();
    let pruned: f64 = layers.iter().map(|l| l.sparsity * (l.rows * l.cols) as f64).sum();
    let stem = o.model.file_stem().map_or(String::new(), |s| s.to_string_lossy().into_owned());
    Ok(PointResult {
        point: p.clone(),
        model: format!("{stem} one-shot {}", format!("{:?}", o.method).to_lowercase()),
        structure: mask.label(),
        target_sparsity: o.sparsity,
        measured_sparsity: pruned / weights.max(1) as f64,
        quantization: "none".into(),
        top1,
        timings: Vec::new(),
        file_bytes: std::fs::metadata(&native)?.len(),
        train_seconds: start.elapsed().as_secs_f64(),
        git_revision: sparsify::run::git_revision(),
        cpu: sparsify::run::cpu_name(),
        isa: engine::kernels::Isa::detect().name().to_string(),
        data_source: source,
        train_images: n,
        test_images: d.test.len(),
        curve: Vec::new(),
        layers: layers.iter().map(|l| (l.layer.clone(), l.sparsity)).collect(),
    })
}
