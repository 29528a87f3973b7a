//! One-shot pruning of a trained model, no training: every fp32 linear layer and convolution is
//! pruned in turn to a target sparsity from a little calibration data, by magnitude, by Wanda
//! (|weight| times the norm of its input; Sun et al., 2023) or by layer-wise optimal brain
//! surgeon as SparseGPT does it (`obs`). Layers are visited in order and each sees the
//! calibration data through the layers before it as already pruned.

pub mod allocate;
pub mod hessian;
pub mod obs;
pub mod sensitivity;

use std::time::Instant;

use anyhow::bail;
use engine::graph::{Graph, Op};
use serde::Serialize;

use crate::mask::{MaskKind, layer_mask};

/// How the weights to prune are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// The smallest weights of each layer.
    Magnitude,
    /// The smallest |weight| x input norm of each output row (blocks and N:M: of the layer).
    Wanda,
    /// SparseGPT: the least loss of each column block, the kept weights updated to compensate.
    Obs,
}

/// What to prune and how.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub sparsity: f64,
    pub method: Method,
    pub mask: MaskKind,
    pub obs: obs::ObsOptions,
    pub threads: usize,
}

/// One pruned layer in `oneshot.json`.
#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    pub layer: String,
    pub rows: usize,
    pub cols: usize,
    pub sparsity: f64,
    /// How much of the layer's output on the calibration data the pruning changed:
    /// `||(W' - W) X||^2 / ||W X||^2`.
    pub relative_error: f64,
    pub seconds: f64,
}

/// The layers one-shot pruning prunes: every fp32 linear layer and convolution, as node indices.
pub fn targets(graph: &Graph) -> anyhow::Result<Vec<usize>> {
    let targets: Vec<usize> = (0..graph.nodes.len())
        .filter(|&k| matches!(&graph.nodes[k].op, Op::Linear { weight, .. } | Op::Conv { weight, .. } if weight.quant.is_none()))
        .collect();
    if targets.is_empty() {
        bail!("the model has no fp32 linear layer or convolution to prune");
    }
    Ok(targets)
}

/// Checks a sparsity and calibration data that must hold `n` samples of the model's input.
pub fn check(graph: &Graph, sparsity: f64, samples: &[f32], n: usize) -> anyhow::Result<()> {
    if !(0.0..1.0).contains(&sparsity) {
        bail!("sparsity {sparsity} is outside [0, 1)");
    }
    let per_sample: usize = graph.input_shape.iter().product();
    if n == 0 || samples.len() != n * per_sample {
        bail!("the calibration data has {} values, not {n} samples of the model's input {:?}", samples.len(), graph.input_shape);
    }
    Ok(())
}

/// The Hessian of node `k`'s inputs on the calibration data run through the graph before it.
pub fn layer_hessian(graph: &Graph, k: usize, samples: &[f32], n: usize, threads: usize) -> anyhow::Result<Vec<f64>> {
    let name = &graph.nodes[k].name;
    let x = hessian::layer_input(graph, k, samples, n, threads)?;
    match &graph.nodes[k].op {
        Op::Linear { weight, .. } => Ok(hessian::linear(&x, weight.cols())),
        Op::Conv { window, .. } => {
            let shapes = graph.infer_shapes()?;
            let in_shape = shapes.iter().rev().find(|(v, _)| *v == graph.nodes[k].inputs[0]).map(|(_, s)| s.clone()).unwrap_or_default();
            let [c, h, w] = in_shape[..] else { bail!("layer '{name}': input shape {in_shape:?} is not [channels, height, width]") };
            Ok(hessian::conv(&x, [c, h, w], window))
        }
        _ => bail!("layer '{name}' is not a linear layer or a convolution"),
    }
}

/// Prunes node `k`'s weights to `sparsity` given its inputs' Hessian `h`; reports the result.
pub fn prune_layer(graph: &mut Graph, k: usize, h: &[f64], sparsity: f64, s: &Settings) -> LayerReport {
    let start = Instant::now();
    let layer = graph.nodes[k].name.clone();
    let (Op::Linear { weight, .. } | Op::Conv { weight, .. }) = &mut graph.nodes[k].op else {
        unreachable!("targets are linear layers and convolutions")
    };
    let (rows, cols) = (weight.rows(), weight.cols());
    let before = weight.data.clone();
    match s.method {
        Method::Magnitude => apply(&mut weight.data, &layer_mask(&before, rows, cols, sparsity, s.mask)),
        Method::Wanda => {
            let scores: Vec<f32> =
                before.iter().enumerate().map(|(i, w)| w.abs() * (h[(i % cols) * cols + i % cols]).sqrt() as f32).collect();
            let keep: Vec<bool> = match s.mask {
                // Wanda compares the weights of one output with each other.
                MaskKind::Unstructured => scores.chunks(cols).flat_map(|row| layer_mask(row, 1, cols, sparsity, s.mask)).collect(),
                _ => layer_mask(&scores, rows, cols, sparsity, s.mask),
            };
            apply(&mut weight.data, &keep);
        }
        Method::Obs => obs::prune(&mut weight.data, rows, cols, h, sparsity, s.mask, s.obs),
    }
    let zeros = weight.data.iter().filter(|v| **v == 0.0).count();
    LayerReport {
        layer,
        rows,
        cols,
        sparsity: zeros as f64 / weight.data.len().max(1) as f64,
        relative_error: obs::relative_error(&before, &weight.data, rows, cols, h),
        seconds: start.elapsed().as_secs_f64(),
    }
}

/// Prunes every fp32 linear layer and convolution of `graph` in place to `s.sparsity`; see
/// `prune_each`.
pub fn prune(graph: &mut Graph, samples: &[f32], n: usize, s: &Settings, progress: impl FnMut(&str)) -> anyhow::Result<Vec<LayerReport>> {
    let levels = vec![s.sparsity; targets(graph)?.len()];
    prune_each(graph, samples, n, s, &levels, progress)
}

/// Prunes the fp32 linear layers and convolutions of `graph` in place, in order, the i-th to
/// `levels[i]`, each seeing the calibration data through the layers before it as pruned;
/// `samples` holds `n` calibration inputs (normalized, sample-major). `progress` hears of each
/// layer as it starts.
pub fn prune_each(
    graph: &mut Graph,
    samples: &[f32],
    n: usize,
    s: &Settings,
    levels: &[f64],
    mut progress: impl FnMut(&str),
) -> anyhow::Result<Vec<LayerReport>> {
    let targets = targets(graph)?;
    if levels.len() != targets.len() {
        bail!("{} sparsities for {} prunable layers", levels.len(), targets.len());
    }
    for &level in levels {
        check(graph, level, samples, n)?;
    }
    let mut reports = Vec::new();
    for (k, &level) in targets.into_iter().zip(levels) {
        progress(&graph.nodes[k].name);
        let start = Instant::now();
        let h = layer_hessian(graph, k, samples, n, s.threads)?;
        let mut report = prune_layer(graph, k, &h, level, s);
        report.seconds = start.elapsed().as_secs_f64();
        reports.push(report);
    }
    Ok(reports)
}

fn apply(weights: &mut [f32], keep: &[bool]) {
    weights.iter_mut().zip(keep).filter(|(_, k)| !**k).for_each(|(w, _)| *w = 0.0);
}

/// What `sparsify oneshot` was asked for and did (`<out>.oneshot.json`).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub model: String,
    pub out: String,
    pub method: Method,
    pub mask: MaskKind,
    /// One sparsity for every layer, or the recipe whose per-layer targets were used.
    pub sparsity: Option<f64>,
    pub recipe: Option<String>,
    pub calibration: String,
    pub samples: usize,
    pub damp: f64,
    pub block: usize,
    pub layers: Vec<LayerReport>,
    pub seconds: f64,
}

/// A dataset for calibration and evaluation, checked against the model's input: `source` says
/// where its images came from.
pub fn load_images(
    dataset: &str,
    data: Option<std::path::PathBuf>,
    allow_subset: bool,
    input_shape: &[usize],
) -> anyhow::Result<(datasets::Dataset, String)> {
    let d = datasets::Resolver::new(data, true).allowing_subset(allow_subset).load(dataset)?;
    let per_sample: usize = input_shape.iter().product();
    if d.train.image_size() != per_sample {
        bail!("{dataset} images are {:?} ({} values); the model takes {input_shape:?} per sample", d.train.shape(), d.train.image_size());
    }
    let source = format!("{dataset} ({})", d.source);
    Ok((d, source))
}

/// `n` images of `split` (a choice seeded by `seed`), normalized as training and `engine eval`
/// do: the values (sample-major) and labels.
pub fn images(d: &datasets::Dataset, split: &datasets::Split, n: usize, seed: u64) -> (Vec<f32>, Vec<u8>) {
    let n = n.clamp(1, split.len().max(1));
    let order = datasets::batch::shuffled(split.len(), seed)[..n.min(split.len())].to_vec();
    let batch = datasets::batch::batches(split, &order, n, &d.norm, None)
        .next()
        .unwrap_or(datasets::batch::Batch { inputs: vec![], labels: vec![] });
    (batch.inputs, batch.labels)
}

/// The prunable weights of a recipe's model, in order: their names and element counts.
pub fn recipe_params(recipe: &crate::recipe::Recipe) -> anyhow::Result<Vec<(String, usize)>> {
    let (input, classes) = recipe.nominal().map_err(|e| anyhow::anyhow!(e))?;
    let net = crate::model::Network::zeroed(&recipe.model, input, classes).map_err(|e| anyhow::anyhow!("the recipe's model: {e}"))?;
    Ok(net.prunable().into_iter().map(|i| (net.params[i].name.clone(), net.params[i].values.len())).collect())
}

/// The sparsity of each prunable layer of `graph` (in order) from a recipe's gmp modifier's
/// final targets, matching the recipe model's prunable weights to the layers in order (their
/// sizes must agree).
pub fn recipe_levels(recipe: &crate::recipe::Recipe, name: &str, graph: &Graph) -> anyhow::Result<Vec<f64>> {
    let [gmp] = &recipe.pruning[..] else { bail!("{name}: the recipe needs exactly one gmp modifier for per-layer targets") };
    let params = recipe_params(recipe)?;
    let layers = targets(graph)?;
    if params.len() != layers.len() {
        bail!("{name}: its model has {} prunable weights; this model has {} prunable layers", params.len(), layers.len());
    }
    let mut levels = Vec::new();
    for ((param, size), k) in params.iter().zip(layers) {
        let (Op::Linear { weight, .. } | Op::Conv { weight, .. }) = &graph.nodes[k].op else { unreachable!("targets are weighted") };
        if weight.data.len() != *size {
            bail!("{name}: {param} has {size} weights, layer '{}' {}", graph.nodes[k].name, weight.data.len());
        }
        levels.push(gmp.final_for(param));
    }
    Ok(levels)
}
