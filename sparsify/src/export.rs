//! A trained network as the engine's graph, then as the engine's native file (sparse weights
//! stored compactly) or as ONNX (dense weights with their zeros, as SparseML exports).

use std::collections::HashMap;
use std::path::Path;

use anyhow::bail;
use engine::graph::{Activation, Graph, Node, Op, Quant, Unary, Weight, Window};
use engine::onnx::BatchNormState;
use engine::ops::Clip;

use crate::arch::{LayerOp, Value};
use crate::model::{BN_EPS, Network};
use crate::quant::{self, ActQuant};

/// File formats `sparsify export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The engine's native file (safetensors container, sparse weights in CSR).
    Native,
    /// ONNX, opset 13, for ONNX Runtime and DeepSparse.
    Onnx,
}

impl Format {
    /// The format a file name implies: `.onnx` is ONNX, anything else native.
    pub fn from_path(path: &Path) -> Format {
        if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx")) { Format::Onnx } else { Format::Native }
    }
}

/// A weight parameter as the engine sees it: for a layer under active quantization, its int8
/// values times their scales, with the input's observed range as the activation quantizer.
fn engine_weight(net: &Network, i: usize) -> anyhow::Result<Weight> {
    let p = &net.params[i];
    let Some((q, layer)) = net.quant.as_ref().filter(|q| q.active).and_then(|q| Some((q, &q.layers[q.layer(i)?]))) else {
        return Ok(Weight::dense(p.shape.clone(), p.values.clone()));
    };
    let Some(range) = layer.range else {
        bail!("{}: quantization is on but its input observer has seen no data (train past start_epoch first)", p.name);
    };
    let (data, scales) = quant::quantized_weight(&p.values, p.shape[0], q.per_channel);
    let input = ActQuant::from_range(range);
    Ok(Weight { shape: p.shape.clone(), data, quant: Some(Quant { scales, input_scale: input.scale, input_zero: input.zero_point }) })
}

/// The engine graph computing the same logits as `net.forward`: one node per layer of the
/// description, named after it (fake-quantized layers become int8 layers; BatchNorm becomes the
/// per-channel affine map the engine folds into the convolution before it).
pub fn to_graph(net: &Network) -> anyhow::Result<Graph> {
    let desc = &net.desc;
    let value_name = |v: Value| match v {
        Value::Input => "input".to_string(),
        Value::Layer(i) => desc.layers[i].name.clone(),
    };
    let mut nodes = Vec::with_capacity(desc.layers.len());
    for (i, layer) in desc.layers.iter().enumerate() {
        let mut inputs: Vec<String> = layer.inputs.iter().map(|&v| value_name(v)).collect();
        let first = net.first_param[i];
        let values = |k: usize| net.params[first + k].values.clone();
        let op = match layer.op {
            LayerOp::Linear { .. } => Op::Linear { weight: engine_weight(net, first)?, bias: values(1), act: Activation::None },
            LayerOp::Conv { out, kernel, stride, pad, groups, bias } => {
                let (mut weight, window) = (engine_weight(net, first)?, Window::square(kernel, stride, pad));
                let bias = if bias { values(1) } else { vec![0.0; out] };
                if groups == 1 {
                    Op::Conv { weight, bias, window, act: Activation::None }
                } else {
                    // Grouped convolutions run in fp32 on the fake-quantized weights; the input's
                    // quantization is a node of its own.
                    if let Some(q) = weight.quant.take() {
                        let output = format!("{}.input_quantized", layer.name);
                        let op = Op::QuantDequant { scale: q.input_scale, zero: q.input_zero };
                        nodes.push(Node { name: output.clone(), op, inputs: std::mem::take(&mut inputs), output: output.clone() });
                        inputs = vec![output];
                    }
                    Op::GroupConv { weight, bias, window, groups, act: Activation::None }
                }
            }
            // Inference BatchNorm: scale = gamma / sqrt(var + eps), shift = beta - mean * scale.
            LayerOp::BatchNorm => {
                let scale: Vec<f32> = values(0).iter().zip(values(3)).map(|(g, v)| g / (v + BN_EPS).sqrt()).collect();
                let shift = values(1).iter().zip(values(2)).zip(&scale).map(|((b, m), s)| b - m * s).collect();
                Op::Affine { scale, shift, act: Activation::None }
            }
            LayerOp::Relu => Op::Relu,
            LayerOp::Relu6 => Op::Unary(Unary::Clip(Clip { lo: 0.0, hi: 6.0 })),
            LayerOp::MaxPool { kernel, stride } => Op::MaxPool { window: Window::square(kernel, stride, 0) },
            LayerOp::GlobalAvgPool => Op::GlobalAvgPool,
            LayerOp::Flatten => Op::Flatten,
            LayerOp::Add => Op::Add { act: Activation::None },
        };
        nodes.push(Node { name: layer.name.clone(), op, inputs, output: layer.name.clone() });
    }
    let output = nodes.last().map(|n| n.output.clone()).unwrap_or_else(|| "input".into());
    Ok(Graph { input: "input".into(), input_shape: desc.input.clone(), output, nodes, ports: None })
}

/// Writes `net` to `path` in `format`, atomically.
pub fn export(net: &Network, path: &Path, format: Format) -> anyhow::Result<()> {
    let graph = to_graph(net)?;
    let out_shape = graph.output_shape()?;
    if out_shape != [net.classes] {
        bail!("internal error: exported graph gives {out_shape:?}, expected [{}]", net.classes);
    }
    match format {
        Format::Native => write_graph(&graph, path, format),
        // Each BatchNorm's own parameters, so that training can read the file back and go on.
        Format::Onnx => {
            let states = batch_norm_states(net);
            let bytes = engine::onnx::export::export_with_batch_norms(&graph, &out_shape, &states);
            Ok(engine::fsutil::write_atomic(path, &bytes)?)
        }
    }
}

/// Every BatchNorm layer's parameters, by layer name.
fn batch_norm_states(net: &Network) -> HashMap<String, BatchNormState> {
    let layers = net.desc.layers.iter().enumerate().filter(|(_, l)| l.op == LayerOp::BatchNorm);
    layers
        .map(|(i, l)| {
            let values = |k: usize| net.params[net.first_param[i] + k].values.clone();
            let state = BatchNormState { gamma: values(0), beta: values(1), mean: values(2), var: values(3), epsilon: BN_EPS };
            (l.name.clone(), state)
        })
        .collect()
}

/// Writes an engine graph to `path` in `format`, atomically.
pub fn write_graph(graph: &Graph, path: &Path, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Native => engine::format::save(graph, path)?,
        Format::Onnx => engine::fsutil::write_atomic(path, &engine::onnx::export::export(graph, &graph.output_shape()?))?,
    }
    Ok(())
}
