//! One-shot pruning of a trained model, no training: every fp32 linear layer and convolution is
//! pruned in turn to a target sparsity from a little calibration data, by magnitude, by Wanda
//! (|weight| times the norm of its input; Sun et al., 2023) or by layer-wise optimal brain
//! surgeon as SparseGPT does it (`obs`). Layers are visited in order and each sees the
//! calibration data through the layers before it as already pruned.

pub mod hessian;
pub mod obs;

use std::time::Instant;

use anyhow::bail;
use engine::graph::{Graph, Op};
use serde::Serialize;

use crate::mask::{MaskKind, layer_mask};

/// How the weights to prune are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
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

/// Prunes every fp32 linear layer and convolution of `graph` in place; `samples` holds `n`
/// calibration inputs (normalized, sample-major). `progress` hears of each layer as it starts.
pub fn prune(
    graph: &mut Graph,
    samples: &[f32],
    n: usize,
    s: &Settings,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<Vec<LayerReport>> {
    if !(0.0..1.0).contains(&s.sparsity) {
        bail!("sparsity {} is outside [0, 1)", s.sparsity);
    }
    let per_sample: usize = graph.input_shape.iter().product();
    if n == 0 || samples.len() != n * per_sample {
        bail!("the calibration data has {} values, not {n} samples of the model's input {:?}", samples.len(), graph.input_shape);
    }
    let targets: Vec<usize> = (0..graph.nodes.len())
        .filter(|&k| matches!(&graph.nodes[k].op, Op::Linear { weight, .. } | Op::Conv { weight, .. } if weight.quant.is_none()))
        .collect();
    if targets.is_empty() {
        bail!("the model has no fp32 linear layer or convolution to prune");
    }
    let shapes = graph.infer_shapes()?;
    let mut reports = Vec::new();
    for k in targets {
        let start = Instant::now();
        let name = graph.nodes[k].name.clone();
        progress(&name);
        let x = hessian::layer_input(graph, k, samples, n, s.threads)?;
        let in_shape = shapes.iter().rev().find(|(v, _)| *v == graph.nodes[k].inputs[0]).map(|(_, s)| s.clone()).unwrap_or_default();
        let (weight, h) = match &mut graph.nodes[k].op {
            Op::Linear { weight, .. } => {
                let cols = weight.cols();
                (weight, hessian::linear(&x, cols))
            }
            Op::Conv { weight, window, .. } => {
                let [c, hh, ww] = in_shape[..] else { bail!("layer '{name}': input shape {in_shape:?} is not [channels, height, width]") };
                let h = hessian::conv(&x, [c, hh, ww], window);
                (weight, h)
            }
            _ => unreachable!("targets are linear layers and convolutions"),
        };
        let (rows, cols) = (weight.rows(), weight.cols());
        let before = weight.data.clone();
        match s.method {
            Method::Magnitude => apply(&mut weight.data, &layer_mask(&before, rows, cols, s.sparsity, s.mask)),
            Method::Wanda => {
                let scores: Vec<f32> =
                    before.iter().enumerate().map(|(i, w)| w.abs() * (h[(i % cols) * cols + i % cols]).sqrt() as f32).collect();
                let keep: Vec<bool> = match s.mask {
                    // Wanda compares the weights of one output with each other.
                    MaskKind::Unstructured => scores.chunks(cols).flat_map(|row| layer_mask(row, 1, cols, s.sparsity, s.mask)).collect(),
                    _ => layer_mask(&scores, rows, cols, s.sparsity, s.mask),
                };
                apply(&mut weight.data, &keep);
            }
            Method::Obs => obs::prune(&mut weight.data, rows, cols, &h, s.sparsity, s.mask, s.obs),
        }
        let zeros = weight.data.iter().filter(|v| **v == 0.0).count();
        reports.push(LayerReport {
            layer: name,
            rows,
            cols,
            sparsity: zeros as f64 / weight.data.len().max(1) as f64,
            relative_error: obs::relative_error(&before, &weight.data, rows, cols, &h),
            seconds: start.elapsed().as_secs_f64(),
        });
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
    pub sparsity: f64,
    pub calibration: String,
    pub samples: usize,
    pub damp: f64,
    pub block: usize,
    pub layers: Vec<LayerReport>,
    pub seconds: f64,
}

/// The calibration inputs: `samples` training images of `dataset` (a seeded random choice),
/// normalized as training and `engine eval` do. Returns the values, how many, and where they
/// came from.
pub fn calibration(
    dataset: &str,
    data: Option<std::path::PathBuf>,
    allow_subset: bool,
    samples: usize,
    input_shape: &[usize],
) -> anyhow::Result<(Vec<f32>, usize, String)> {
    let d = datasets::Resolver::new(data, true).allowing_subset(allow_subset).load(dataset)?;
    let per_sample: usize = input_shape.iter().product();
    if d.train.image_size() != per_sample {
        bail!(
            "{dataset} images are {}x{} ({} values); the model takes {input_shape:?} per sample",
            d.train.rows,
            d.train.cols,
            d.train.image_size()
        );
    }
    let n = samples.clamp(1, d.train.len());
    let order = datasets::batch::shuffled(d.train.len(), 0)[..n].to_vec();
    let batch = datasets::batch::batches(&d.train, &order, n, d.mean, d.std).next().expect("n >= 1");
    Ok((batch.inputs, n, format!("{dataset} ({})", d.source)))
}
