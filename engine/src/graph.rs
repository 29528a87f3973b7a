//! The engine's model: a graph of inference operators over per-sample tensors. ONNX files and the
//! native format both load into this form; the compiler turns it into an executable plan.
//!
//! Shapes here exclude the batch dimension: `[784]` for a vector input, `[1, 28, 28]` (C, H, W)
//! for an image. Weights are dense `f32` in memory, row-major, with the output dimension first
//! (`[out, in]` for linear layers, `[out, in, kh, kw]` for convolutions), as in PyTorch and ONNX.

use crate::error::{EngineError, Result};

/// A dense weight tensor, output dimension first.
#[derive(Debug, Clone, PartialEq)]
pub struct Weight {
    pub shape: Vec<usize>,
    /// Values; for a quantized weight, exactly `q * scales[row]` with `q` an int8 in [-127, 127].
    pub data: Vec<f32>,
    /// Present when the layer runs in int8.
    pub quant: Option<Quant>,
}

/// Int8 quantization of a linear layer or convolution: symmetric int8 weights with one scale per
/// output row, and the layer's input quantized to uint8 with a scale and zero point
/// (`x ~ (q - zero) * scale`), as ONNX's QuantizeLinear/DequantizeLinear pairs describe.
#[derive(Debug, Clone, PartialEq)]
pub struct Quant {
    pub scales: Vec<f32>,
    pub input_scale: f32,
    pub input_zero: u8,
}

impl Weight {
    pub fn rows(&self) -> usize {
        self.shape[0]
    }
    /// Elements per output row (`in`, or `in * kh * kw`).
    pub fn cols(&self) -> usize {
        self.shape[1..].iter().product()
    }
    /// A weight without quantization.
    pub fn dense(shape: Vec<usize>, data: Vec<f32>) -> Weight {
        Weight { shape, data, quant: None }
    }
    /// The int8 values of a quantized weight (`None` without quantization).
    pub fn int8(&self) -> Option<Vec<i8>> {
        let q = self.quant.as_ref()?;
        let cols = self.cols().max(1);
        Some(self.data.iter().enumerate().map(|(i, &v)| (v / q.scales[i / cols]).round().clamp(-127.0, 127.0) as i8).collect())
    }
    pub fn sparsity(&self) -> f64 {
        if self.data.is_empty() {
            return 0.0;
        }
        self.data.iter().filter(|&&v| v == 0.0).count() as f64 / self.data.len() as f64
    }
}

/// An activation fused into the producing operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    #[default]
    None,
    Relu,
}

/// Window geometry of a convolution or pooling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Window {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    /// Top, left, bottom, right.
    pub pads: [usize; 4],
    pub dilation: [usize; 2],
}

impl Window {
    /// Output height and width for an input of `h x w`, or an error if the window does not fit.
    pub fn output(&self, h: usize, w: usize, node: &str) -> Result<(usize, usize)> {
        let span = |k: usize, d: usize| d * (k - 1) + 1;
        let (ph, pw) = (h + self.pads[0] + self.pads[2], w + self.pads[1] + self.pads[3]);
        let (kh, kw) = (span(self.kernel[0], self.dilation[0]), span(self.kernel[1], self.dilation[1]));
        if self.kernel.contains(&0) || self.stride.contains(&0) || self.dilation.contains(&0) || kh > ph || kw > pw {
            return Err(EngineError::graph(node, format!("window {:?} does not fit an input of {h}x{w}", self)));
        }
        Ok(((ph - kh) / self.stride[0] + 1, (pw - kw) / self.stride[1] + 1))
    }
}

/// An inference operator.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// `y = x W^T + b`, `W` of shape `[out, in]`.
    Linear {
        weight: Weight,
        bias: Vec<f32>,
        act: Activation,
    },
    /// 2-D convolution (groups = 1), `W` of shape `[out, in, kh, kw]`.
    Conv {
        weight: Weight,
        bias: Vec<f32>,
        window: Window,
        act: Activation,
    },
    /// Per-channel `y = x * scale + shift` (an unfolded BatchNormalization).
    Affine {
        scale: Vec<f32>,
        shift: Vec<f32>,
        act: Activation,
    },
    Relu,
    MaxPool {
        window: Window,
    },
    AvgPool {
        window: Window,
        count_include_pad: bool,
    },
    GlobalAvgPool,
    /// Elementwise sum of the two inputs (residual connections).
    Add {
        act: Activation,
    },
    /// `[C, H, W] -> [C * H * W]`.
    Flatten,
    /// Softmax over the features of each sample.
    Softmax,
}

impl Op {
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Linear { .. } => "linear",
            Op::Conv { .. } => "conv",
            Op::Affine { .. } => "affine",
            Op::Relu => "relu",
            Op::MaxPool { .. } => "maxpool",
            Op::AvgPool { .. } => "avgpool",
            Op::GlobalAvgPool => "global_avgpool",
            Op::Add { .. } => "add",
            Op::Flatten => "flatten",
            Op::Softmax => "softmax",
        }
    }
    pub fn weight(&self) -> Option<&Weight> {
        match self {
            Op::Linear { weight, .. } | Op::Conv { weight, .. } => Some(weight),
            _ => None,
        }
    }
}

/// One operator applied to named values.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub name: String,
    pub op: Op,
    pub inputs: Vec<String>,
    pub output: String,
}

/// A model: one input, one output, nodes in execution order.
#[derive(Debug, Clone, PartialEq)]
pub struct Graph {
    pub input: String,
    /// Per-sample input shape.
    pub input_shape: Vec<usize>,
    pub output: String,
    pub nodes: Vec<Node>,
}

impl Graph {
    /// Per-sample shape of every value, in node order, checking that each node's inputs exist
    /// and fit its weights. Returns `(value name, shape)` pairs, the input first.
    pub fn infer_shapes(&self) -> Result<Vec<(String, Vec<usize>)>> {
        let mut shapes: Vec<(String, Vec<usize>)> = vec![(self.input.clone(), self.input_shape.clone())];
        for node in &self.nodes {
            let get = |name: &str| -> Result<Vec<usize>> {
                shapes
                    .iter()
                    .rev()
                    .find(|(n, _)| n == name)
                    .map(|(_, s)| s.clone())
                    .ok_or_else(|| EngineError::graph(&node.name, format!("input '{name}' is not produced by any earlier node")))
            };
            let arity = if matches!(node.op, Op::Add { .. }) { 2 } else { 1 };
            if node.inputs.len() != arity {
                return Err(EngineError::graph(&node.name, format!("expects {arity} input(s), has {}", node.inputs.len())));
            }
            let x = get(&node.inputs[0])?;
            let y = node_output_shape(node, &x, |i| get(&node.inputs[i]))?;
            shapes.push((node.output.clone(), y));
        }
        if !shapes.iter().any(|(n, _)| n == &self.output) {
            return Err(EngineError::graph(&self.output, "the graph output is not produced by any node"));
        }
        Ok(shapes)
    }

    /// Per-sample output shape.
    pub fn output_shape(&self) -> Result<Vec<usize>> {
        let shapes = self.infer_shapes()?;
        Ok(shapes.into_iter().rev().find(|(n, _)| n == &self.output).map(|(_, s)| s).expect("checked in infer_shapes"))
    }
}

fn image(node: &Node, x: &[usize]) -> Result<(usize, usize, usize)> {
    match x {
        [c, h, w] => Ok((*c, *h, *w)),
        _ => Err(EngineError::graph(&node.name, format!("expects a [C, H, W] input, got {x:?}"))),
    }
}

fn node_output_shape(node: &Node, x: &[usize], input: impl Fn(usize) -> Result<Vec<usize>>) -> Result<Vec<usize>> {
    let name = node.name.as_str();
    let bad = |reason: String| Err(EngineError::graph(name, reason));
    match &node.op {
        Op::Linear { weight, bias, .. } => {
            let features: usize = x.iter().product();
            if weight.shape.len() != 2 || weight.shape[1] != features {
                return bad(format!("weight {:?} does not fit an input of {features} features", weight.shape));
            }
            if bias.len() != weight.shape[0] || weight.data.len() != weight.shape.iter().product::<usize>() {
                return bad(format!("bias of {} for {} outputs", bias.len(), weight.shape[0]));
            }
            Ok(vec![weight.shape[0]])
        }
        Op::Conv { weight, bias, window, .. } => {
            let (c, h, w) = image(node, x)?;
            if weight.shape.len() != 4 || weight.shape[1] != c || weight.shape[2..] != window.kernel {
                return bad(format!("weight {:?} does not fit {c} input channels and kernel {:?}", weight.shape, window.kernel));
            }
            if bias.len() != weight.shape[0] || weight.data.len() != weight.shape.iter().product::<usize>() {
                return bad(format!("bias of {} for {} output channels", bias.len(), weight.shape[0]));
            }
            let (oh, ow) = window.output(h, w, name)?;
            Ok(vec![weight.shape[0], oh, ow])
        }
        Op::Affine { scale, shift, .. } => {
            let c = x.first().copied().unwrap_or(1);
            if scale.len() != c || shift.len() != c {
                return bad(format!("{} scales for {c} channels", scale.len()));
            }
            Ok(x.to_vec())
        }
        Op::MaxPool { window } | Op::AvgPool { window, .. } => {
            let (c, h, w) = image(node, x)?;
            let (oh, ow) = window.output(h, w, name)?;
            Ok(vec![c, oh, ow])
        }
        Op::GlobalAvgPool => {
            let (c, _, _) = image(node, x)?;
            Ok(vec![c, 1, 1])
        }
        Op::Add { .. } => {
            let other = input(1)?;
            if other != x {
                return bad(format!("adds {x:?} and {other:?}"));
            }
            Ok(x.to_vec())
        }
        Op::Flatten => Ok(vec![x.iter().product()]),
        Op::Relu | Op::Softmax => Ok(x.to_vec()),
    }
}
