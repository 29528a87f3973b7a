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

/// Largest value of one window field (kernel, stride, dilation, each pad): far beyond any real
/// network, and small enough that every window computation in the kernels fits in `usize`.
pub const MAX_WINDOW: usize = 1 << 16;
/// Largest per-sample value (elements): 1 GiB of f32.
pub const MAX_VALUE_ELEMENTS: usize = 1 << 28;
/// Largest weight or constant tensor (elements), in either file format.
pub const MAX_WEIGHT_ELEMENTS: usize = 1 << 28;
/// Largest sum of all weight elements of a model (2 GiB of f32).
pub const MAX_MODEL_WEIGHT_ELEMENTS: usize = 1 << 29;

/// The product of `dims`, if it does not overflow and stays within `limit`.
pub fn checked_numel(dims: &[usize], limit: usize) -> Option<usize> {
    dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).filter(|&n| n <= limit)
}

/// Window geometry of a convolution or pooling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Window {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    /// Top, left, bottom, right.
    pub pads: [usize; 4],
    pub dilation: [usize; 2],
    /// Pooling's `ceil_mode`: the output size rounds up, so a last window may reach past the
    /// bottom or right padding (it still starts inside the image or the top or left padding).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ceil_mode: bool,
}

impl Window {
    /// A 1x1 window at stride 1 without padding: each output pixel reads the same input pixel.
    pub fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1] && self.stride == [1, 1] && self.pads == [0; 4]
    }

    /// Output height and width for an input of `h x w`, or an error if a field is out of range or
    /// the window does not fit. Every field is at most `MAX_WINDOW` and `h`, `w` at most `MAX_DIM`,
    /// so nothing here or in the kernels that walk the window can overflow.
    pub fn output(&self, h: usize, w: usize, node: &str) -> Result<(usize, usize)> {
        let fields = self.kernel.iter().chain(&self.stride).chain(&self.dilation);
        if fields.clone().any(|&v| v == 0 || v > MAX_WINDOW)
            || self.pads.iter().any(|&p| p > MAX_WINDOW)
            || h > MAX_VALUE_ELEMENTS
            || w > MAX_VALUE_ELEMENTS
        {
            return Err(EngineError::graph(
                node,
                format!("{self} on {h}x{w}: kernel, stride and dilation must be 1..={MAX_WINDOW}, pads at most {MAX_WINDOW}"),
            ));
        }
        let span = |k: usize, d: usize| d * (k - 1) + 1;
        let (ph, pw) = (h + self.pads[0] + self.pads[2], w + self.pads[1] + self.pads[3]);
        let (kh, kw) = (span(self.kernel[0], self.dilation[0]), span(self.kernel[1], self.dilation[1]));
        if kh > ph || kw > pw {
            return Err(EngineError::graph(node, format!("{self} does not fit an input of {h}x{w}")));
        }
        let size = |padded: usize, span: usize, stride: usize, input: usize, begin: usize| {
            if !self.ceil_mode {
                return (padded - span) / stride + 1;
            }
            let out = (padded - span).div_ceil(stride) + 1;
            // As ONNX and PyTorch: no window may start in the bottom or right padding.
            if (out - 1) * stride >= input + begin { out - 1 } else { out }
        };
        Ok((size(ph, kh, self.stride[0], h, self.pads[0]), size(pw, kw, self.stride[1], w, self.pads[1])))
    }

    /// The same window without `ceil_mode`: bottom and right pads grown so that rounding down
    /// gives the rounded-up size (the kernels know one rule; max pooling and average pooling
    /// without counted padding ignore the extra pixels). `h x w` must fit (`output` said so).
    pub fn floor_equivalent(&self, h: usize, w: usize) -> Window {
        if !self.ceil_mode {
            return *self;
        }
        let (oh, ow) = self.output(h, w, "").expect("checked at load");
        let mut plain = Window { ceil_mode: false, ..*self };
        let need = |out: usize, axis: usize, input: usize| {
            let span = self.dilation[axis] * (self.kernel[axis] - 1) + 1;
            ((out - 1) * self.stride[axis] + span).saturating_sub(input + self.pads[axis] + self.pads[axis + 2])
        };
        plain.pads[2] += need(oh, 0, h);
        plain.pads[3] += need(ow, 1, w);
        plain
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "window kernel {:?} stride {:?} pads {:?} dilation {:?}", self.kernel, self.stride, self.pads, self.dilation)
    }
}

impl Window {
    /// A `k x k` window with the same stride and padding on both axes, no dilation.
    pub fn square(k: usize, stride: usize, pad: usize) -> Window {
        Window { kernel: [k, k], stride: [stride, stride], pads: [pad; 4], dilation: [1, 1], ceil_mode: false }
    }

    /// For pooling, each pad must be smaller than the kernel along its axis (as ONNX Runtime
    /// requires): a window wholly in the padding would have no input to pool.
    pub fn check_pool(&self, node: &str) -> Result<()> {
        let [t, l, b, r] = self.pads;
        if t >= self.kernel[0] || b >= self.kernel[0] || l >= self.kernel[1] || r >= self.kernel[1] {
            return Err(EngineError::graph(
                node,
                format!("pooling pads {:?} must be smaller than the kernel {:?}", self.pads, self.kernel),
            ));
        }
        Ok(())
    }
}

pub use crate::kernels::sequence::Swapped;
pub use crate::ops::{BinaryKind, Unary};

/// A constant operand of a `Binary`: its per-sample shape (broadcast against the value's, NumPy
/// rules, aligned right) and values.
#[derive(Debug, Clone, PartialEq)]
pub struct Operand {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

impl Operand {
    /// The constant's shape against a per-sample value of `rank` dimensions: an ONNX constant
    /// may carry the batch dimension (`[1, C, 1, 1]` against `[N, C, H, W]`), which must be 1.
    pub fn per_sample(&self, rank: usize) -> Option<&[usize]> {
        let extra = self.shape.len().saturating_sub(rank);
        self.shape[..extra].iter().all(|&d| d == 1).then(|| &self.shape[extra..])
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
    /// Grouped 2-D convolution (depth-wise where `groups` is the number of input channels),
    /// `W` of shape `[out, in / groups, kh, kw]`; output channel `o` reads the input channels of
    /// group `o / (out / groups)`.
    GroupConv {
        weight: Weight,
        bias: Vec<f32>,
        window: Window,
        groups: usize,
        act: Activation,
    },
    Unary(Unary),
    /// `a op b`, NumPy broadcasting: `b` is the second input, or `constant` (the left operand
    /// where `constant_first`, as in `1 - x`).
    Binary {
        kind: BinaryKind,
        constant: Option<Operand>,
        constant_first: bool,
    },
    /// The inputs joined along per-sample axis `axis`.
    Concat {
        axis: usize,
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
    /// Softmax over the last axis; `masked`: of the first input plus the second, whose shape is
    /// the first's last axes (after leading 1s), repeated over the first's other axes
    /// (attention's mask over every head); `zero_nan`: a row that comes out NaN (every score
    /// -inf) gives zeros (`row_passes::fuse_masked_softmax`).
    Softmax {
        masked: bool,
        zero_nan: bool,
    },
    /// An activation's QuantizeLinear then DequantizeLinear, run as written in fp32:
    /// `y = (clamp(round_half_even(x / scale) + zero, 0, 255) - zero) * scale`. A signed (int8)
    /// pair is the same with codes and zero point shifted by 128. Removed at compile time where
    /// only int8 layers with the same input quantization read it (they quantize alike).
    QuantDequant {
        scale: f32,
        zero: u8,
    },
    /// The same elements in the same order under another per-sample shape (ONNX Reshape,
    /// Squeeze, Unsqueeze).
    Reshape {
        shape: Vec<usize>,
    },
    /// Axes permuted: output axis `a` is input axis `perm[a]`.
    Transpose {
        perm: Vec<usize>,
    },
    /// Along each axis `a`, output coordinate `i` reads input coordinate `indices[a][i]` (Slice,
    /// Split, nearest Resize, Gather with constant indices).
    Select {
        indices: Vec<Vec<usize>>,
    },
    /// Output element `i` (of per-sample `shape`) copies input element `sources[i]` (GatherND,
    /// GatherElements and Expand with constant indices).
    Pick {
        shape: Vec<usize>,
        sources: Vec<usize>,
    },
    /// Rows of `table` (`[rows, width]`) picked by the input's values, integer indices (ONNX
    /// Gather of an embedding): the input's shape with `width` appended.
    Embed {
        table: Weight,
    },
    /// Normalization over the last axis: `(x - mean) / sqrt(variance + epsilon) * scale + bias`;
    /// `columns`: over the first axis instead, each position of the others apart (a features-first
    /// value, `row_passes::layer_norm_before_pick`).
    LayerNorm {
        scale: Vec<f32>,
        bias: Vec<f32>,
        epsilon: f32,
        columns: bool,
    },
    /// Matrix products of two values over their last two axes (`[.., m, k] x [.., k, n]`), the
    /// leading axes broadcast (attention's products); `swapped`: which of the two inputs and the
    /// output are stored with their last two axes swapped (`row_passes::swap_into_products`).
    BatchMatMul {
        swapped: Swapped,
    },
    /// `x` where the first input is non-zero, else `y` (broadcast); `x` and `y` are constants or
    /// the next inputs, in that order.
    Where {
        x: Option<Operand>,
        y: Option<Operand>,
    },
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
            Op::Softmax { .. } => "softmax",
            Op::QuantDequant { .. } => "qdq",
            Op::GroupConv { .. } => "group_conv",
            Op::Unary(_) => "unary",
            Op::Binary { .. } => "binary",
            Op::Concat { .. } => "concat",
            Op::Reshape { .. } => "reshape",
            Op::Transpose { .. } => "transpose",
            Op::Select { .. } => "select",
            Op::Pick { .. } => "pick",
            Op::Embed { .. } => "embed",
            Op::LayerNorm { .. } => "layer_norm",
            Op::BatchMatMul { .. } => "batch_matmul",
            Op::Where { .. } => "where",
        }
    }
    pub fn weight(&self) -> Option<&Weight> {
        match self {
            Op::Linear { weight, .. } | Op::Conv { weight, .. } | Op::GroupConv { weight, .. } => Some(weight),
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

/// One of a model's several inputs or outputs (`Ports`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Port {
    pub name: String,
    /// Per-sample shape.
    pub shape: Vec<usize>,
    /// Integer values (held as exact `f32`s, so within +-2^24).
    pub integer: bool,
    /// For an integer input that indexes a table (token ids): the table's rows; valid values
    /// are `0..rows`.
    pub rows: Option<usize>,
}

impl Port {
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A model with several inputs or outputs (BERT: token ids, attention mask, token types): the
/// graph's one input holds the inputs one after another per sample, and its one output the
/// outputs, each flattened.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Ports {
    pub inputs: Vec<Port>,
    pub outputs: Vec<Port>,
}

impl Ports {
    /// The inputs fill the packed input of `input_shape` exactly (and each shape is sane).
    pub fn check(&self, input_shape: &[usize]) -> std::result::Result<(), String> {
        let sizes = |ports: &[Port]| ports.iter().try_fold(0usize, |n, p| n.checked_add(checked_numel(&p.shape, MAX_VALUE_ELEMENTS)?));
        let (inputs, outputs) = (sizes(&self.inputs), sizes(&self.outputs));
        if inputs.is_none() || outputs.is_none() || inputs != checked_numel(input_shape, MAX_VALUE_ELEMENTS) || self.inputs.is_empty() {
            return Err(format!("the model's ports do not fill its input of shape {input_shape:?}"));
        }
        Ok(())
    }

    /// Each of `ports` (the inputs or the outputs) with the elements of a packed sample it holds.
    pub fn placed(ports: &[Port]) -> impl Iterator<Item = (std::ops::Range<usize>, &Port)> {
        ports.iter().scan(0, |at, p| {
            let range = *at..*at + p.elements();
            *at = range.end;
            Some((range, p))
        })
    }
}

/// A model: one input, one output, nodes in execution order.
#[derive(Debug, Clone, PartialEq)]
pub struct Graph {
    pub input: String,
    /// Per-sample input shape.
    pub input_shape: Vec<usize>,
    pub output: String,
    pub nodes: Vec<Node>,
    /// Present where the model has several inputs or outputs packed into `input` and `output`.
    pub ports: Option<Ports>,
}

impl Graph {
    /// Per-sample shape of every value, in node order, checking that each node's inputs exist
    /// and fit its weights. Returns `(value name, shape)` pairs, the input first.
    pub fn infer_shapes(&self) -> Result<Vec<(String, Vec<usize>)>> {
        check_shape(&self.input, &self.input_shape)?;
        let mut shapes: Vec<(String, Vec<usize>)> = vec![(self.input.clone(), self.input_shape.clone())];
        let mut weight_elements = 0usize;
        for node in &self.nodes {
            let weights = match &node.op {
                Op::Linear { weight, .. } | Op::Conv { weight, .. } | Op::GroupConv { weight, .. } => weight.data.len(),
                Op::Binary { constant: Some(c), .. } => c.values.len(),
                Op::Affine { scale, .. } => 2 * scale.len(),
                Op::Select { indices } => indices.iter().map(Vec::len).sum(),
                Op::Pick { sources, .. } => sources.len(),
                Op::Embed { table } => table.data.len(),
                Op::LayerNorm { scale, .. } => 2 * scale.len(),
                Op::Where { x, y } => x.iter().chain(y).map(|c| c.values.len()).sum(),
                _ => 0,
            };
            weight_elements = weight_elements.saturating_add(weights);
            if weight_elements > MAX_MODEL_WEIGHT_ELEMENTS {
                return Err(EngineError::graph(&node.name, format!("the model has more than {MAX_MODEL_WEIGHT_ELEMENTS} weights")));
            }
            let get = |name: &str| -> Result<Vec<usize>> {
                shapes
                    .iter()
                    .rev()
                    .find(|(n, _)| n == name)
                    .map(|(_, s)| s.clone())
                    .ok_or_else(|| EngineError::graph(&node.name, format!("input '{name}' is not produced by any earlier node")))
            };
            let arity = match &node.op {
                Op::Add { .. } | Op::Binary { constant: None, .. } | Op::BatchMatMul { .. } | Op::Softmax { masked: true, .. } => 2..=2,
                Op::Where { x, y } => {
                    let n = 1 + x.is_none() as usize + y.is_none() as usize;
                    n..=n
                }
                Op::Concat { .. } => 1..=usize::MAX,
                _ => 1..=1,
            };
            if !arity.contains(&node.inputs.len()) {
                return Err(EngineError::graph(&node.name, format!("expects {arity:?} input(s), has {}", node.inputs.len())));
            }
            let x = get(&node.inputs[0])?;
            let y = node_output_shape(node, &x, |i| get(&node.inputs[i]))?;
            check_shape(&node.output, &y)?;
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

/// Every dimension non-zero and the product within `MAX_VALUE_ELEMENTS`: the bounds that
/// keep the compiler's and the kernels' size arithmetic from overflowing.
fn check_shape(value: &str, shape: &[usize]) -> Result<()> {
    if shape.is_empty() || shape.contains(&0) || checked_numel(shape, MAX_VALUE_ELEMENTS).is_none() {
        return Err(EngineError::graph(
            value,
            format!("shape {shape:?}: dimensions must be non-zero and a sample at most {MAX_VALUE_ELEMENTS} elements"),
        ));
    }
    Ok(())
}

/// A weight's shape: at least 2-D, every dimension non-zero, its elements within the cap and
/// equal to the data's length.
fn check_weight(node: &str, weight: &Weight) -> Result<()> {
    let numel = checked_numel(&weight.shape, MAX_WEIGHT_ELEMENTS);
    if weight.shape.len() < 2 || weight.shape.contains(&0) || numel != Some(weight.data.len()) {
        return Err(EngineError::graph(node, format!("weight of shape {:?} with {} values", weight.shape, weight.data.len())));
    }
    if weight.data.iter().any(|v| !v.is_finite()) {
        return Err(EngineError::graph(node, "the weight holds NaN or infinite values"));
    }
    if let Some(q) = &weight.quant
        && (q.scales.len() != weight.shape[0]
            || !(q.input_scale.is_finite() && q.input_scale > 0.0)
            || q.scales.iter().any(|s| !s.is_finite()))
    {
        return Err(EngineError::graph(node, "int8 weight: one finite scale per output row and a positive input scale are needed"));
    }
    Ok(())
}

/// Whether `perm` lists each of `0..rank` once.
pub fn is_permutation(perm: &[usize], rank: usize) -> bool {
    let mut seen = vec![false; rank];
    perm.len() == rank && perm.iter().all(|&a| a < rank && !std::mem::replace(&mut seen[a], true))
}

/// The NumPy broadcast of two per-sample shapes (aligned right), if they broadcast.
pub fn broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let rank = a.len().max(b.len());
    let dim = |s: &[usize], i: usize| if i + s.len() >= rank { s[i + s.len() - rank] } else { 1 };
    (0..rank)
        .map(|i| match (dim(a, i), dim(b, i)) {
            (x, y) if x == y || y == 1 => Some(x),
            (1, y) => Some(y),
            _ => None,
        })
        .collect()
}

pub(crate) fn all_finite(v: &[f32]) -> bool {
    v.iter().all(|x| x.is_finite())
}

fn image(node: &Node, x: &[usize]) -> Result<(usize, usize, usize)> {
    match x {
        [c, h, w] => Ok((*c, *h, *w)),
        _ => Err(EngineError::graph(&node.name, format!("expects a [C, H, W] input, got {x:?}"))),
    }
}

/// Per-sample output shape of `node` on input shapes `x` (the first) and `input(i)`, checking its
/// parameters.
pub fn node_output_shape(node: &Node, x: &[usize], input: impl Fn(usize) -> Result<Vec<usize>>) -> Result<Vec<usize>> {
    let name = node.name.as_str();
    let bad = |reason: String| Err(EngineError::graph(name, reason));
    match &node.op {
        Op::Linear { weight, bias, .. } => {
            check_weight(name, weight)?;
            let features: usize = x.iter().product();
            if weight.shape.len() != 2 || weight.shape[1] != features {
                return bad(format!("weight {:?} does not fit an input of {features} features", weight.shape));
            }
            if bias.len() != weight.shape[0] || !all_finite(bias) {
                return bad(format!("bias of {} values (all finite) needed for {} outputs", bias.len(), weight.shape[0]));
            }
            Ok(vec![weight.shape[0]])
        }
        Op::Conv { weight, bias, window, .. } => {
            check_weight(name, weight)?;
            let (c, h, w) = image(node, x)?;
            if weight.shape.len() != 4 || weight.shape[1] != c || weight.shape[2..] != window.kernel {
                return bad(format!("weight {:?} does not fit {c} input channels and kernel {:?}", weight.shape, window.kernel));
            }
            if bias.len() != weight.shape[0] || !all_finite(bias) {
                return bad(format!("bias of {} values (all finite) needed for {} output channels", bias.len(), weight.shape[0]));
            }
            let (oh, ow) = window.output(h, w, name)?;
            Ok(vec![weight.shape[0], oh, ow])
        }
        Op::Affine { scale, shift, .. } => {
            let c = x.first().copied().unwrap_or(1);
            if scale.len() != c || shift.len() != c || !all_finite(scale) || !all_finite(shift) {
                return bad(format!("{} scales and {} shifts (all finite) for {c} channels", scale.len(), shift.len()));
            }
            Ok(x.to_vec())
        }
        Op::MaxPool { window } | Op::AvgPool { window, .. } => {
            let (c, h, w) = image(node, x)?;
            window.check_pool(name)?;
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
        Op::Relu | Op::Softmax { masked: false, .. } => Ok(x.to_vec()),
        Op::Softmax { masked: true, .. } => {
            let mask = input(1)?;
            if !crate::sequence::repeats_over_leading_axes(&mask, x) {
                return bad(format!("a mask of shape {mask:?} for rows of {x:?}"));
            }
            Ok(x.to_vec())
        }
        Op::Pick { .. } | Op::Embed { .. } | Op::LayerNorm { .. } | Op::BatchMatMul { .. } | Op::Where { .. } => {
            crate::sequence::output_shape(node, x, input)
        }
        Op::GroupConv { weight, bias, window, groups, .. } => {
            check_weight(name, weight)?;
            let (c, h, w) = image(node, x)?;
            let out = weight.shape[0];
            let fits = weight.shape.len() == 4
                && *groups > 0
                && c.is_multiple_of(*groups)
                && out.is_multiple_of(*groups)
                && weight.shape[1] == c / groups
                && weight.shape[2..] == window.kernel;
            if !fits {
                return bad(format!(
                    "weight {:?} does not fit {c} input channels in {groups} groups and kernel {:?}",
                    weight.shape, window.kernel
                ));
            }
            if weight.quant.is_some() {
                return bad(
                    "grouped convolutions run in fp32: their weights dequantized, the input's quantization a QuantDequant before them"
                        .into(),
                );
            }
            if bias.len() != out || !all_finite(bias) {
                return bad(format!("bias of {} values (all finite) needed for {out} output channels", bias.len()));
            }
            let (oh, ow) = window.output(h, w, name)?;
            Ok(vec![out, oh, ow])
        }
        Op::Unary(_) => Ok(x.to_vec()),
        Op::Binary { constant, .. } => {
            let other = match constant {
                Some(c) => {
                    if checked_numel(&c.shape, MAX_WEIGHT_ELEMENTS) != Some(c.values.len()) || !all_finite(&c.values) {
                        return bad(format!("constant of shape {:?} with {} values (all finite)", c.shape, c.values.len()));
                    }
                    c.per_sample(x.len())
                        .ok_or_else(|| EngineError::graph(name, format!("constant {:?} would broadcast along the batch", c.shape)))?
                        .to_vec()
                }
                None => input(1)?,
            };
            broadcast(x, &other).ok_or_else(|| EngineError::graph(name, format!("shapes {x:?} and {other:?} do not broadcast")))
        }
        Op::Concat { axis } => {
            let mut out = x.to_vec();
            if *axis >= x.len() {
                return bad(format!("axis {axis} of a {}-D value", x.len()));
            }
            for i in 1..node.inputs.len() {
                let s = input(i)?;
                let same_elsewhere = s.len() == x.len() && s.iter().zip(x).enumerate().all(|(d, (a, b))| d == *axis || a == b);
                if !same_elsewhere {
                    return bad(format!("cannot join {x:?} and {s:?} along axis {axis}"));
                }
                out[*axis] = out[*axis].checked_add(s[*axis]).ok_or_else(|| EngineError::graph(name, "concatenation too large"))?;
            }
            Ok(out)
        }
        Op::QuantDequant { scale, .. } => {
            if !(scale.is_finite() && *scale > 0.0) {
                return bad(format!("quantization scale {scale} must be positive and finite"));
            }
            Ok(x.to_vec())
        }
        Op::Reshape { shape } => {
            if checked_numel(shape, MAX_VALUE_ELEMENTS) != Some(x.iter().product()) {
                return bad(format!("cannot reshape {x:?} to {shape:?}"));
            }
            Ok(shape.clone())
        }
        Op::Transpose { perm } => {
            if !is_permutation(perm, x.len()) {
                return bad(format!("{perm:?} is not a permutation of the axes of {x:?}"));
            }
            Ok(perm.iter().map(|&a| x[a]).collect())
        }
        Op::Select { indices } => {
            let fits = indices.len() == x.len() && indices.iter().zip(x).all(|(ix, &d)| !ix.is_empty() && ix.iter().all(|&i| i < d));
            if !fits {
                return bad(format!("selection of {} axes, each non-empty and within {x:?}", indices.len()));
            }
            Ok(indices.iter().map(Vec::len).collect())
        }
    }
}
