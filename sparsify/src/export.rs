//! A trained network as the engine's graph, then as the engine's native file (sparse weights
//! stored compactly) or as ONNX (dense weights with their zeros, as SparseML exports).

use std::path::Path;

use anyhow::bail;
use engine::graph::{Activation, Graph, Node, Op, Quant, Weight, Window};

use crate::model::{Arch, Network};
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

/// The engine graph computing the same logits as `net.forward` (fake-quantized layers become
/// int8 layers).
pub fn to_graph(net: &Network) -> anyhow::Result<Graph> {
    let p = &net.params;
    let weights: Vec<Weight> = (0..p.len()).map(|i| engine_weight(net, i)).collect::<anyhow::Result<_>>()?;
    let weight = |i: usize| weights[i].clone();
    let node = |name: &str, op: Op, input: &str| Node { name: name.into(), op, inputs: vec![input.into()], output: name.into() };
    let linear = |i: usize, act| Op::Linear { weight: weight(i), bias: p[i + 1].values.clone(), act };
    let mut nodes = Vec::new();
    let mut prev = "input".to_string();
    let (input_shape, mut push) = match net.arch {
        Arch::Mlp { .. } => (vec![net.input_side * net.input_side], 0),
        Arch::Lenet5 => {
            let win = Window::square;
            let conv = |i: usize, pad| Op::Conv {
                weight: weight(i),
                bias: p[i + 1].values.clone(),
                window: win(5, 1, pad),
                act: Activation::Relu,
            };
            nodes.push(node("conv1", conv(0, 2), "input"));
            nodes.push(node("pool1", Op::MaxPool { window: win(2, 2, 0) }, "conv1"));
            nodes.push(node("conv2", conv(2, 0), "pool1"));
            nodes.push(node("pool2", Op::MaxPool { window: win(2, 2, 0) }, "conv2"));
            nodes.push(node("flatten", Op::Flatten, "pool2"));
            prev = "flatten".into();
            (vec![1, net.input_side, net.input_side], 4)
        }
        Arch::Rescnn => {
            let win = Window::square;
            let conv =
                |i: usize| Op::Conv { weight: weight(i), bias: p[i + 1].values.clone(), window: win(3, 1, 1), act: Activation::None };
            // BatchNorm in inference form, a per-channel affine map that the engine folds into
            // the convolution before it: scale = gamma / sqrt(var + eps), shift = beta - mean * scale.
            let affine = |i: usize, act| {
                let scale: Vec<f32> =
                    p[i].values.iter().zip(&p[i + 3].values).map(|(g, v)| g / (v + crate::model::BN_EPS).sqrt()).collect();
                let shift = p[i + 1].values.iter().zip(&p[i + 2].values).zip(&scale).map(|((b, m), s)| b - m * s).collect();
                Op::Affine { scale, shift, act }
            };
            nodes.push(node("conv1", conv(0), "input"));
            nodes.push(node("bn1", affine(2, Activation::Relu), "conv1"));
            nodes.push(node("pool1", Op::MaxPool { window: win(2, 2, 0) }, "bn1"));
            nodes.push(node("conv2", conv(6), "pool1"));
            nodes.push(node("bn2", affine(8, Activation::Relu), "conv2"));
            nodes.push(node("conv3", conv(12), "bn2"));
            nodes.push(node("bn3", affine(14, Activation::None), "conv3"));
            nodes.push(Node {
                name: "residual".into(),
                op: Op::Add { act: Activation::Relu },
                inputs: vec!["bn3".into(), "pool1".into()],
                output: "residual".into(),
            });
            nodes.push(node("pool2", Op::MaxPool { window: win(2, 2, 0) }, "residual"));
            nodes.push(node("flatten", Op::Flatten, "pool2"));
            prev = "flatten".into();
            (vec![1, net.input_side, net.input_side], 18)
        }
    };
    let layers = (p.len() - push) / 2;
    for l in 0..layers {
        let last = l + 1 == layers;
        let name = if last { "logits".to_string() } else { p[push].name.trim_end_matches(".weight").to_string() };
        nodes.push(node(&name, linear(push, if last { Activation::None } else { Activation::Relu }), &prev));
        prev = name;
        push += 2;
    }
    Ok(Graph { input: "input".into(), input_shape, output: prev, nodes, ports: None })
}

/// Writes `net` to `path` in `format`, atomically.
pub fn export(net: &Network, path: &Path, format: Format) -> anyhow::Result<()> {
    let graph = to_graph(net)?;
    let out_shape = graph.output_shape()?;
    if out_shape != [net.classes] {
        bail!("internal error: exported graph gives {out_shape:?}, expected [{}]", net.classes);
    }
    write_graph(&graph, path, format)
}

/// Writes an engine graph to `path` in `format`, atomically.
pub fn write_graph(graph: &Graph, path: &Path, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Native => engine::format::save(graph, path)?,
        Format::Onnx => engine::fsutil::write_atomic(path, &engine::onnx::export::export(graph, &graph.output_shape()?))?,
    }
    Ok(())
}
