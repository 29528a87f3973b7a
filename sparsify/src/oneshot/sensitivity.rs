//! Sensitivity analysis: each prunable layer alone pruned one-shot to each level, with what it
//! costs (loss and top-1 on evaluation images) and what it saves (the layer's time in the engine
//! at each batch size), in one table: SparseML's loss and performance sensitivities
//! (`pruning_loss_sens_*`, `pruning_perf_sens_one_shot`) measured together.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use engine::compile::{self, KernelPolicy, Options};
use engine::exec::Session;
use engine::graph::Graph;
use serde::{Deserialize, Serialize};

use super::{Settings, layer_hessian, prune_layer, targets};

/// Images to evaluate on: `n` normalized inputs (sample-major) and their labels.
pub struct Eval<'a> {
    pub inputs: &'a [f32],
    pub labels: &'a [u8],
}

/// One layer at one level (a row of the CSV). Times are per batch size, in `batches` order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub layer: String,
    pub rows: usize,
    pub cols: usize,
    pub level: f64,
    /// Measured sparsity of the layer's weights.
    pub sparsity: f64,
    /// Mean cross-entropy on the evaluation images, and its increase over the unpruned model.
    pub loss: f64,
    pub loss_increase: f64,
    pub top1: f64,
    pub top1_change: f64,
    pub batch: usize,
    /// The layer's median time in the engine at this level, and unpruned.
    pub ms: f64,
    pub dense_ms: f64,
    /// The whole unpruned model's time at this batch (every layer, pruned or not).
    pub model_ms: f64,
}

/// Mean cross-entropy and top-1 of the model's outputs on `eval` (probabilities are taken as
/// they are; other outputs as logits).
fn evaluate(graph: &Graph, eval: &Eval, threads: usize) -> anyhow::Result<(f64, f64)> {
    let model = compile::compile(graph.clone(), Options::new(KernelPolicy::Dense)?)?;
    let mut session = Session::new(&model, threads)?;
    let n = eval.labels.len();
    let per_sample = eval.inputs.len() / n.max(1);
    let mut out = Vec::new();
    for chunk in eval.inputs.chunks(500 * per_sample.max(1)) {
        out.extend(session.run(chunk, chunk.len() / per_sample.max(1))?);
    }
    let classes = out.len() / n.max(1);
    let (mut loss, mut correct) = (0.0f64, 0usize);
    for (row, &label) in out.chunks(classes.max(1)).zip(eval.labels) {
        let p = if crate::distill::is_distribution(row) {
            row[label as usize] as f64
        } else {
            let max = row.iter().copied().fold(f32::MIN, f32::max) as f64;
            let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
            (row[label as usize] as f64 - max).exp() / sum
        };
        loss -= p.max(1e-12).ln();
        correct += engine::top1::correct(row, classes, &[label]);
    }
    Ok((loss / n.max(1) as f64, correct as f64 / n.max(1) as f64))
}

/// At each of `batches`: each weighted layer's median time (by name) and the model's total, in
/// the engine with its chosen kernels (compiled once), over `iters` profiled runs.
fn layer_times(graph: &Graph, batches: &[usize], threads: usize, iters: usize) -> anyhow::Result<Vec<(BTreeMap<String, f64>, f64)>> {
    let model = compile::compile(graph.clone(), Options::new(KernelPolicy::Auto)?)?;
    let mut session = Session::new(&model, threads)?;
    let mut out = Vec::new();
    for &batch in batches {
        let layers = engine::report::analyze(&mut session, &model, batch, iters)?;
        let total = layers.iter().map(|l| l.ms).sum();
        out.push((layers.into_iter().map(|l| (l.layer, l.ms)).collect(), total));
    }
    Ok(out)
}

/// What `measure` needs besides the model and the data.
pub struct Plan<'a> {
    pub levels: &'a [f64],
    pub batches: &'a [usize],
    /// Profiled runs per timing.
    pub iters: usize,
    pub settings: Settings,
}

/// Every prunable layer of `graph` alone, pruned to each level from the calibration `samples`
/// (`n` of them), evaluated on `eval` and timed at each batch size. `progress` hears of each
/// layer as it starts.
pub fn measure(
    graph: &Graph,
    samples: &[f32],
    n: usize,
    eval: &Eval,
    plan: &Plan,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<Vec<Row>> {
    for &level in plan.levels {
        super::check(graph, level, samples, n)?;
    }
    let threads = plan.settings.threads;
    let (base_loss, base_top1) = evaluate(graph, eval, threads)?;
    let base_times = layer_times(graph, plan.batches, threads, plan.iters)?;
    let mut rows = Vec::new();
    for k in targets(graph)? {
        let name = graph.nodes[k].name.clone();
        progress(&name);
        let h = layer_hessian(graph, k, samples, n, threads)?;
        for &level in plan.levels {
            let mut pruned = graph.clone();
            let report = prune_layer(&mut pruned, k, &h, level, &plan.settings);
            let (loss, top1) = evaluate(&pruned, eval, threads)?;
            let pruned_times = layer_times(&pruned, plan.batches, threads, plan.iters)?;
            for ((&batch, (dense, model_ms)), (times, _)) in plan.batches.iter().zip(&base_times).zip(&pruned_times) {
                let of = |t: &BTreeMap<String, f64>| {
                    t.get(&name).copied().with_context(|| format!("layer '{name}' is not in the compiled model"))
                };
                rows.push(Row {
                    layer: name.clone(),
                    rows: report.rows,
                    cols: report.cols,
                    level,
                    sparsity: report.sparsity,
                    loss,
                    loss_increase: loss - base_loss,
                    top1,
                    top1_change: top1 - base_top1,
                    batch,
                    ms: of(times)?,
                    dense_ms: of(dense)?,
                    model_ms: *model_ms,
                });
            }
        }
    }
    Ok(rows)
}

/// Writes the rows as CSV, atomically.
pub fn write_csv(path: &Path, rows: &[Row]) -> anyhow::Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r)?;
    }
    engine::fsutil::write_atomic(path, &w.into_inner()?)?;
    Ok(())
}

/// Reads rows written by `write_csv`.
pub fn read_csv(path: &Path) -> anyhow::Result<Vec<Row>> {
    let mut r = csv::Reader::from_path(path).with_context(|| format!("reading {}", path.display()))?;
    let rows: Vec<Row> =
        r.deserialize().collect::<Result<_, _>>().with_context(|| format!("{}: not a sensitivity table", path.display()))?;
    if rows.is_empty() {
        anyhow::bail!("{}: the sensitivity table has no rows", path.display());
    }
    Ok(rows)
}

/// The plot beside the CSV (`<stem>.png`, `.svg`): loss increase against the time each layer's
/// pruning saves at `batch`, one line per layer through its levels.
pub fn plot(stem: &Path, rows: &[Row], batch: usize) -> anyhow::Result<()> {
    let mut layers: Vec<&str> = Vec::new();
    rows.iter().for_each(|r| {
        if !layers.contains(&r.layer.as_str()) {
            layers.push(&r.layer)
        }
    });
    let series: Vec<crate::plot::Series> = layers
        .iter()
        .map(|l| crate::plot::Series {
            name: l.to_string(),
            points: rows.iter().filter(|r| r.layer == *l && r.batch == batch).map(|r| (r.dense_ms - r.ms, r.loss_increase)).collect(),
            line: true,
            markers: true,
            bars: Vec::new(),
        })
        .collect();
    let title = format!("Each layer pruned alone: loss increase against time saved (batch {batch})");
    crate::plot::render(
        stem,
        &crate::plot::Chart { title: &title, x: "layer time saved (ms)", y: "loss increase (nats)", log_x: false },
        &series,
    )
}
