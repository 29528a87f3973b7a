//! A network read from an ONNX file, for training: the engine's importer gives the graph
//! (constants folded, aliases gone), which becomes a description layer by layer, with the
//! file's values as the parameters. Layers are named after the weights they read (PyTorch's
//! parameter names: `layer1.0.conv1`), else after their nodes; BatchNormalization keeps its four
//! parameters where the file has them (a model exported for training, or by `sparsify`).

use std::collections::HashMap;
use std::path::Path;

use engine::graph::{Activation, Graph, Op, Unary, Weight, Window};
use engine::onnx::training::LayerSource;
use engine::ops::Clip;

use super::{BN_EPS, Desc, Layer, LayerOp, ParamValues, Value};

/// What training reads, for the error that names what it does not.
const TRAINABLE: &str = "Gemm, MatMul, Conv (with groups), BatchNormalization, Relu, Clip(0, 6), MaxPool, GlobalAveragePool, Add, Flatten and Reshape to [N, -1]";

/// The description of the model in `path` and its parameters' values, in plan order.
pub fn read(path: &Path) -> Result<(Desc, ParamValues), String> {
    let at = |e: String| format!("{}: {e}", path.display());
    let bytes = std::fs::read(path).map_err(|e| at(e.to_string()))?;
    let graph = engine::onnx::import::import_file(&bytes, path).map_err(|e| e.to_string())?;
    let sources = engine::onnx::training::layer_sources(&bytes, path).map_err(|e| e.to_string())?;
    describe(&graph, &sources).map_err(at)
}

/// Turns the engine's graph into layers.
fn describe(graph: &Graph, sources: &HashMap<String, LayerSource>) -> Result<(Desc, ParamValues), String> {
    if graph.ports.is_some() {
        return Err("a model with several inputs or outputs cannot be trained".into());
    }
    let mut readers: HashMap<&str, Vec<&Op>> = HashMap::new();
    for n in &graph.nodes {
        for i in &n.inputs {
            readers.entry(i.as_str()).or_default().push(&n.op);
        }
    }
    let mut b = Layers { desc: Desc { input: graph.input_shape.clone(), layers: Vec::new() }, values: Vec::new(), names: HashMap::new() };
    b.names.insert(graph.input.clone(), Value::Input);
    for n in &graph.nodes {
        let input = |k: usize| {
            n.inputs
                .get(k)
                .and_then(|i| b.names.get(i).copied())
                .ok_or_else(|| format!("node '{}' reads a value training cannot follow", n.name))
        };
        let source = sources.get(&n.output).cloned().unwrap_or_default();
        let layer_name = |suffixes: &[&str]| {
            let named = source.weight.as_deref().and_then(|w| suffixes.iter().find_map(|s| w.strip_suffix(s)));
            named.map_or_else(|| n.name.trim_start_matches('/').replace('/', "."), str::to_string)
        };
        let (op, values, act) = match &n.op {
            Op::Linear { weight, bias, act } => {
                (LayerOp::Linear { out: weight.shape[0] }, vec![fp32(&n.name, weight)?, bias.clone()], *act)
            }
            Op::Conv { weight, bias, window, act } | Op::GroupConv { weight, bias, window, act, .. } => {
                let groups = if let Op::GroupConv { groups, .. } = n.op { groups } else { 1 };
                let (kernel, stride, pad) = square(&n.name, window)?;
                // A zero bias before a BatchNorm is no bias (PyTorch's `bias=False`).
                let only_reader = readers.get(n.output.as_str()).filter(|r| r.len() == 1).map(|r| r[0]);
                let has_bias = !(bias.iter().all(|&v| v == 0.0) && matches!(only_reader, Some(Op::Affine { .. })));
                let op = LayerOp::Conv { out: weight.shape[0], kernel, stride, pad, groups, bias: has_bias };
                let mut values = vec![fp32(&n.name, weight)?];
                if has_bias {
                    values.push(bias.clone());
                }
                (op, values, *act)
            }
            Op::Affine { scale, shift, act } => {
                let c = scale.len();
                let values = match source.batch_norm {
                    // The same function with this BatchNorm's epsilon.
                    Some(s) if s.epsilon == BN_EPS => vec![s.gamma, s.beta, s.mean, s.var],
                    Some(s) => vec![s.gamma, s.beta, s.mean, s.var.iter().map(|v| (v + s.epsilon - BN_EPS).max(0.0)).collect()],
                    None => vec![scale.clone(), shift.clone(), vec![0.0; c], vec![1.0 - BN_EPS; c]],
                };
                (LayerOp::BatchNorm, values, *act)
            }
            Op::Relu => (LayerOp::Relu, vec![], Activation::None),
            Op::Unary(Unary::Clip(Clip { lo, hi })) if (*lo, *hi) == (0.0, 6.0) => (LayerOp::Relu6, vec![], Activation::None),
            Op::MaxPool { window } => {
                let (kernel, stride, pad) = square(&n.name, window)?;
                if pad != 0 || window.ceil_mode {
                    return Err(format!("node '{}': a padded or ceil_mode MaxPool cannot be trained", n.name));
                }
                (LayerOp::MaxPool { kernel, stride }, vec![], Activation::None)
            }
            Op::GlobalAvgPool => (LayerOp::GlobalAvgPool, vec![], Activation::None),
            Op::Flatten => (LayerOp::Flatten, vec![], Activation::None),
            Op::Reshape { shape } if shape.len() == 1 => (LayerOp::Flatten, vec![], Activation::None),
            Op::Add { act } => (LayerOp::Add, vec![], *act),
            other => return Err(format!("node '{}' ({}) cannot be trained; training reads {TRAINABLE}", n.name, other.kind())),
        };
        let inputs = if op == LayerOp::Add { vec![input(0)?, input(1)?] } else { vec![input(0)?] };
        let name = match op {
            LayerOp::Linear { .. } | LayerOp::Conv { .. } => layer_name(&[".weight"]),
            LayerOp::BatchNorm => layer_name(&[".weight", ".scale"]),
            _ => n.name.trim_start_matches('/').replace('/', "."),
        };
        b.push(name, op, inputs, values);
        if act == Activation::Relu {
            let relu = format!("{}.relu", b.desc.layers.last().expect("just pushed").name);
            b.push(relu, LayerOp::Relu, vec![Value::Layer(b.desc.layers.len() - 1)], vec![]);
        }
        b.names.insert(n.output.clone(), Value::Layer(b.desc.layers.len() - 1));
    }
    if b.names.get(&graph.output) != Some(&Value::Layer(b.desc.layers.len().wrapping_sub(1))) {
        return Err("the model's output is not its last layer's".into());
    }
    Ok((b.desc, b.values.into_iter().flatten().collect()))
}

/// The layers so far, their parameters' values and the layer each value name is.
struct Layers {
    desc: Desc,
    values: Vec<Vec<Vec<f32>>>,
    names: HashMap<String, Value>,
}

impl Layers {
    /// Appends a layer, its name made unique.
    fn push(&mut self, name: String, op: LayerOp, inputs: Vec<Value>, values: Vec<Vec<f32>>) {
        let taken = |n: &str| self.desc.layers.iter().any(|l| l.name == n);
        let name = (0..).map(|i| if i == 0 { name.clone() } else { format!("{name}_{i}") }).find(|n| !taken(n)).expect("a free name");
        self.desc.layers.push(Layer { name, op, inputs });
        self.values.push(values);
    }
}

fn fp32(node: &str, w: &Weight) -> Result<Vec<f32>, String> {
    match w.quant {
        Some(_) => Err(format!("node '{node}' is int8; train from the float32 model")),
        None => Ok(w.data.clone()),
    }
}

/// A square window with one stride and the same padding on every side: kernel, stride, pad.
fn square(node: &str, w: &Window) -> Result<(usize, usize, usize), String> {
    let [k, k2] = w.kernel;
    let [s, s2] = w.stride;
    if k != k2 || s != s2 || w.pads.iter().any(|&p| p != w.pads[0]) || w.dilation != [1, 1] {
        return Err(format!("node '{node}': training reads square windows with one stride, even padding and no dilation, found {w:?}"));
    }
    Ok((k, s, w.pads[0]))
}
