//! Running one point of a sweep: train with sparsify (resuming a partial run), export the model
//! for the engine and as ONNX, measure test accuracy in the engine, and time the model with its
//! sparse kernels and with dense kernels in the same process at each batch size.

use std::path::{Path, PathBuf};

use anyhow::Context;
use engine::compile::{self, KernelPolicy, Options};
use engine::exec::Session;
use serde::{Deserialize, Serialize};
use sparsify::recipe::Recipe;
use sparsify::train::{self, TrainOptions};

use crate::sweep::{Point, Sweep};
use crate::timing::{self, BatchTiming};

/// Everything measured for a point (`point.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PointResult {
    pub point: Point,
    pub model: String,
    pub structure: String,
    pub target_sparsity: f64,
    pub measured_sparsity: f64,
    pub quantization: String,
    pub top1: f64,
    pub timings: Vec<BatchTiming>,
    pub file_bytes: u64,
    pub train_seconds: f64,
    pub git_revision: String,
    pub cpu: String,
    pub isa: String,
    /// Where the training and test images came from (`run.json`'s `data_source`): the full set's
    /// folder or the embedded subset; with the image counts. Points from before these fields
    /// were recorded read as "unknown".
    #[serde(default = "unknown")]
    pub data_source: String,
    #[serde(default)]
    pub train_images: usize,
    #[serde(default)]
    pub test_images: usize,
    /// `(epoch, test accuracy, sparsity)` per epoch.
    pub curve: Vec<(usize, f64, f64)>,
    /// `(parameter, sparsity)` at the end.
    pub layers: Vec<(String, f64)>,
}

fn unknown() -> String {
    "unknown".into()
}

pub fn point_dir(sweep_dir: &Path, p: &Point) -> PathBuf {
    sweep_dir.join("points").join(&p.id)
}

/// A finished point's result, if any, described by the sweep's `p` (the same recipe text,
/// overrides and seed, as their hash names the folder; fields added since it ran filled in).
pub fn finished(sweep_dir: &Path, p: &Point) -> Option<PointResult> {
    let text = std::fs::read_to_string(point_dir(sweep_dir, p).join("point.json")).ok()?;
    let result: PointResult = serde_json::from_str(&text).ok()?;
    Some(PointResult { point: p.clone(), ..result })
}

/// Runs a point (or returns its earlier result; with `rebench`, measures it again on the
/// finished training). `data`: the dataset folder, if given, and whether the embedded subset may
/// stand in for a full set that is not found.
pub fn run_point(
    sweep: &Sweep,
    sweep_dir: &Path,
    p: &Point,
    (data, allow_subset): (Option<PathBuf>, bool),
    peers: Option<&crate::peers::Peers>,
    rebench: bool,
) -> anyhow::Result<PointResult> {
    // A finished point is reused unless asked to measure it again, or its timing stayed
    // doubtful (or predates the checks): then its training is reused and the rest redone.
    let remeasure = |r: &PointResult| rebench || r.timings.iter().any(BatchTiming::needs_remeasure);
    if let Some(r) = finished(sweep_dir, p).filter(|r| !remeasure(r)) {
        return Ok(r);
    }
    let dir = point_dir(sweep_dir, p);
    // One writer per point: a second `run` or `run-point` on it is refused, naming the first.
    let _lock = engine::fsutil::DirLock::acquire(&dir)?;
    if let Some(o) = &p.oneshot {
        let mut result = crate::oneshot::run(o, &dir, (data, allow_subset), p)?;
        result.timings = timings(sweep, &dir, peers)?;
        sparsify::run::write_json(&dir.join("point.json"), &result)?;
        return Ok(result);
    }
    let run_dir = dir.join("run");
    let mut recipe = Recipe::parse(&p.recipe_text, &p.recipe.display().to_string(), &p.overrides)?;
    recipe.seed = p.seed;
    let resume = sparsify::run::latest_checkpoint(&run_dir).is_some();
    let opts = TrainOptions {
        out: run_dir.clone(),
        data: data.clone(),
        allow_subset,
        resume,
        force: false,
        quiet: true,
        recipe_path: p.recipe.display().to_string(),
        overrides: p.overrides.clone(),
        stop_after: None,
        profile: false,
    };
    let summary = train::train(&recipe, &p.recipe_text, &opts).with_context(|| format!("training {}", p.label()))?;
    let native = dir.join("model.sparse");
    let onnx = dir.join("model.onnx");
    sparsify::export::export(&summary.net, &native, sparsify::export::Format::Native)?;
    sparsify::export::export(&summary.net, &onnx, sparsify::export::Format::Onnx)?;

    let d = train::load_data(&recipe, data, allow_subset, true)?;
    let top1 = engine_accuracy(&native, &d.test, &d.norm, d.classes)?;
    let timings = timings(sweep, &dir, peers)?;
    let info: sparsify::run::RunInfo = serde_json::from_str(&std::fs::read_to_string(run_dir.join("run.json"))?)?;
    let last = summary.metrics.last().context("the run has no epochs")?;
    let result = PointResult {
        model: recipe.model.label(),
        structure: sparsify::prune::structure(&recipe),
        target_sparsity: recipe.pruning.first().map_or(0.0, |g| g.final_for("")),
        measured_sparsity: last.sparsity,
        quantization: if recipe.quantization.is_some() { "int8".into() } else { "none".into() },
        top1,
        timings,
        file_bytes: std::fs::metadata(&native)?.len(),
        train_seconds: info.train_seconds,
        git_revision: info.git_revision,
        cpu: info.cpu,
        isa: info.isa,
        data_source: info.data_source,
        train_images: info.train_images,
        test_images: info.test_images,
        curve: summary.metrics.iter().map(|m| (m.epoch, m.test_accuracy, m.sparsity)).collect(),
        layers: last.layers.clone(),
        point: p.clone(),
    };
    sparsify::run::write_json(&dir.join("point.json"), &result)?;
    Ok(result)
}

/// The point's model (`model.sparse`, `model.onnx` in its folder) timed with its kernels against
/// dense ones at each batch size, and in the peers when they are given.
fn timings(sweep: &Sweep, dir: &Path, peers: Option<&crate::peers::Peers>) -> anyhow::Result<Vec<BatchTiming>> {
    let mut timings = timing::bench(&dir.join("model.sparse"), &sweep.batches, sweep.threads, sweep.bench_seconds)?;
    if let Some(peers) = peers {
        for t in &mut timings {
            let (ort, ds) = peers.time(&dir.join("model.onnx"), t.batch, sweep.threads)?;
            t.onnxruntime_ms = ort;
            t.deepsparse_ms = ds;
        }
    }
    Ok(timings)
}

/// Top-1 accuracy of a model file on a test split (normalized by `norm`), in the engine.
pub fn engine_accuracy(model: &Path, test: &datasets::Split, norm: &datasets::Normalization, classes: usize) -> anyhow::Result<f64> {
    let m = compile::compile(engine::load(model)?, Options::new(KernelPolicy::Auto)?)?;
    let mut s = Session::new(&m, 2)?;
    let order: Vec<usize> = (0..test.len()).collect();
    let mut correct = 0;
    for b in datasets::batch::batches(test, &order, 500, norm, None) {
        let out = s.run(&b.inputs, b.len())?;
        correct += engine::top1::correct(&out, classes, &b.labels);
    }
    Ok(correct as f64 / test.len().max(1) as f64)
}
