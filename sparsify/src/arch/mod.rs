//! One description per architecture: a network is a list of layers, each reading the network's
//! input or earlier layers' outputs. The parameters (`model::Network::new`), the burn forward
//! pass (`model`), the masks' targets (every weight) and the export to the engine's graph
//! (`export`) all read this one description; a built-in architecture (`builtin`) is a short
//! function that writes one.

pub mod builtin;
pub mod onnx;

pub use builtin::{Arch, Init};

/// Most parameters a network may have (1 GiB of f32): a bound on what a recipe can make
/// `Network::new` allocate.
pub const MAX_PARAMETERS: usize = 1 << 28;

/// Every parameter's values, in plan order (a file's weights).
pub type ParamValues = Vec<Vec<f32>>;

/// Most elements one sample's activation may have at any layer (1 GiB of f32).
pub const MAX_ACTIVATION: usize = 1 << 28;

/// BatchNorm's epsilon (PyTorch's): training, export and ONNX import use this one.
pub const BN_EPS: f32 = 1e-5;

/// What a layer computes.
#[derive(Debug, Clone, PartialEq)]
pub enum LayerOp {
    /// `y = x W^T + b` on a flat input; weight `[out, in]`.
    Linear {
        out: usize,
    },
    /// 2-D convolution with a square kernel, weight `[out, in / groups, k, k]`; a bias unless
    /// `bias` is off (a BatchNorm follows).
    Conv {
        out: usize,
        kernel: usize,
        stride: usize,
        pad: usize,
        groups: usize,
        bias: bool,
    },
    /// BatchNorm over the channels: scale and shift (trained), running mean and variance (not).
    BatchNorm,
    Relu,
    /// `min(max(x, 0), 6)`.
    Relu6,
    /// Max pooling over square windows, no padding.
    MaxPool {
        kernel: usize,
        stride: usize,
    },
    /// The mean of each channel: `[C, H, W] -> [C, 1, 1]`.
    GlobalAvgPool,
    /// `[C, H, W] -> [C * H * W]`.
    Flatten,
    /// The sum of its two inputs (a residual connection).
    Add,
}

/// A value a layer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value {
    /// The network's input.
    Input,
    /// The output of `layers[i]`.
    Layer(usize),
}

/// One layer: its name (parameters are `name.weight`, `name.bias`, `name.gamma`, ...), what it
/// computes and what it reads.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    pub name: String,
    pub op: LayerOp,
    pub inputs: Vec<Value>,
}

/// A network: the shape of one sample (`[C, H, W]` images or `[features]`) and its layers; the
/// last layer's output is the network's, `[classes]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Desc {
    pub input: Vec<usize>,
    pub layers: Vec<Layer>,
}

/// What a parameter is to training.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// A linear or convolution weight: initialised He-uniform, prunable.
    Weight,
    /// A bias or BatchNorm shift: starts at zero.
    Shift,
    /// A BatchNorm scale: starts at one.
    Scale,
    /// A BatchNorm running mean (zero) or variance (one): updated from batches, not trained.
    RunningMean,
    RunningVar,
}

/// One parameter of a description, in the order `Network::params` holds them.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: ParamKind,
}

/// A checked description: every layer's output shape and parameters, and where each layer's
/// parameters start in the parameter list.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub shapes: Vec<Vec<usize>>,
    pub params: Vec<ParamSpec>,
    pub first_param: Vec<usize>,
}

impl Desc {
    /// The shape of a value, given the layers' output shapes so far.
    fn shape_of<'a>(&'a self, shapes: &'a [Vec<usize>], v: Value) -> &'a [usize] {
        match v {
            Value::Input => &self.input,
            Value::Layer(i) => &shapes[i],
        }
    }

    /// Every layer's output shape and parameters, checking that each layer reads earlier values
    /// of the shapes it needs, every size in checked arithmetic, at most `MAX_PARAMETERS`
    /// parameters and `MAX_ACTIVATION` elements per activation, and a `[classes]` output.
    pub fn plan(&self, classes: usize) -> Result<Plan, String> {
        let plan = self.plan_any()?;
        match plan.shapes.last() {
            Some(s) if s[..] == [classes] => Ok(plan),
            last => Err(format!("the network gives {:?} per sample, not [{classes}] class scores", last.unwrap_or(&self.input))),
        }
    }

    /// Every layer's output shape (see `plan`).
    pub fn shapes(&self) -> Result<Vec<Vec<usize>>, String> {
        self.plan_any().map(|p| p.shapes)
    }

    /// `plan` without the check of the output.
    fn plan_any(&self) -> Result<Plan, String> {
        let mut shapes: Vec<Vec<usize>> = Vec::with_capacity(self.layers.len());
        let mut params = Vec::new();
        let mut first_param = Vec::with_capacity(self.layers.len());
        let mut total = 0usize;
        check_activation("the input", &self.input)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let name = &layer.name;
            let arity = if layer.op == LayerOp::Add { 2 } else { 1 };
            if layer.inputs.len() != arity || layer.inputs.iter().any(|v| matches!(v, Value::Layer(j) if *j >= i)) {
                return Err(format!("{name}: reads {} values, or a later layer's", layer.inputs.len()));
            }
            let x = self.shape_of(&shapes, layer.inputs[0]).to_vec();
            let image = || match x[..] {
                [c, h, w] => Ok((c, h, w)),
                _ => Err(format!("{name}: needs a [channels, height, width] input, got {x:?}")),
            };
            first_param.push(params.len());
            let mut add = |suffix: &str, shape: Vec<usize>, kind| -> Result<(), String> {
                let n = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
                total = n
                    .and_then(|n| total.checked_add(n))
                    .filter(|&t| t <= MAX_PARAMETERS)
                    .ok_or_else(|| format!("{name}: the network has more than {MAX_PARAMETERS} parameters"))?;
                params.push(ParamSpec { name: format!("{name}.{suffix}"), shape, kind });
                Ok(())
            };
            let out = match layer.op {
                LayerOp::Linear { out } => {
                    let [features] = x[..] else { return Err(format!("{name}: needs a flat input, got {x:?}")) };
                    add("weight", vec![out, features], ParamKind::Weight)?;
                    add("bias", vec![out], ParamKind::Shift)?;
                    vec![out]
                }
                LayerOp::Conv { out, kernel, stride, pad, groups, bias } => {
                    let (c, h, w) = image()?;
                    if groups == 0 || c % groups != 0 || out % groups != 0 {
                        return Err(format!("{name}: {groups} groups do not divide {c} input and {out} output channels"));
                    }
                    add("weight", vec![out, c / groups, kernel, kernel], ParamKind::Weight)?;
                    if bias {
                        add("bias", vec![out], ParamKind::Shift)?;
                    }
                    vec![out, window(name, h, kernel, stride, pad)?, window(name, w, kernel, stride, pad)?]
                }
                LayerOp::BatchNorm => {
                    let (c, _, _) = image()?;
                    add("gamma", vec![c], ParamKind::Scale)?;
                    add("beta", vec![c], ParamKind::Shift)?;
                    add("running_mean", vec![c], ParamKind::RunningMean)?;
                    add("running_var", vec![c], ParamKind::RunningVar)?;
                    x.clone()
                }
                LayerOp::MaxPool { kernel, stride } => {
                    let (c, h, w) = image()?;
                    vec![c, window(name, h, kernel, stride, 0)?, window(name, w, kernel, stride, 0)?]
                }
                LayerOp::GlobalAvgPool => vec![image()?.0, 1, 1],
                LayerOp::Flatten => vec![x.iter().product()],
                LayerOp::Relu | LayerOp::Relu6 => x.clone(),
                LayerOp::Add => {
                    let other = self.shape_of(&shapes, layer.inputs[1]);
                    if other != x {
                        return Err(format!("{name}: adds {x:?} and {other:?}"));
                    }
                    x.clone()
                }
            };
            check_activation(name, &out)?;
            shapes.push(out);
        }
        Ok(Plan { shapes, params, first_param })
    }

    /// Elements of one sample's input.
    pub fn input_len(&self) -> usize {
        self.input.iter().product()
    }
}

/// Every dimension at least one and the whole within `MAX_ACTIVATION`.
fn check_activation(name: &str, shape: &[usize]) -> Result<(), String> {
    let n = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).unwrap_or(usize::MAX);
    if shape.contains(&0) || n > MAX_ACTIVATION {
        return Err(format!("{name}: an output of shape {shape:?} (every size from 1 to {MAX_ACTIVATION} elements)"));
    }
    Ok(())
}

/// Output length of a window of `kernel` at `stride` over `size` inputs padded by `pad` each
/// side, or an error where it does not fit.
fn window(name: &str, size: usize, kernel: usize, stride: usize, pad: usize) -> Result<usize, String> {
    let padded = pad.checked_mul(2).and_then(|p| p.checked_add(size));
    match padded {
        Some(p) if kernel >= 1 && stride >= 1 && p >= kernel => Ok((p - kernel) / stride + 1),
        _ => Err(format!("{name}: a {kernel}x{kernel} window at stride {stride}, padding {pad} does not fit {size} pixels")),
    }
}

/// Writes a description layer by layer, each reading the one before unless told otherwise;
/// layers without parameters are named after what they read (`conv1.relu`).
pub struct Builder {
    desc: Desc,
    current: Value,
}

impl Builder {
    pub fn new(input: Vec<usize>) -> Builder {
        Builder { desc: Desc { input, layers: Vec::new() }, current: Value::Input }
    }

    /// The value the next layer reads.
    pub fn current(&self) -> Value {
        self.current
    }

    /// Continue from `value` (a branch of a residual block).
    pub fn from(&mut self, value: Value) -> &mut Self {
        self.current = value;
        self
    }

    fn push(&mut self, name: String, op: LayerOp, inputs: Vec<Value>) -> &mut Self {
        self.desc.layers.push(Layer { name, op, inputs });
        self.current = Value::Layer(self.desc.layers.len() - 1);
        self
    }

    /// Name of the layer after the current value's: `conv1` -> `conv1.relu`.
    fn after(&self, suffix: &str) -> String {
        match self.current {
            Value::Input => format!("input.{suffix}"),
            Value::Layer(i) => format!("{}.{suffix}", self.desc.layers[i].name),
        }
    }

    fn unnamed(&mut self, suffix: &str, op: LayerOp) -> &mut Self {
        let name = self.after(suffix);
        self.push(name, op, vec![self.current])
    }

    pub fn linear(&mut self, name: &str, out: usize) -> &mut Self {
        self.push(name.into(), LayerOp::Linear { out }, vec![self.current])
    }

    /// A convolution with a bias, one group.
    pub fn conv(&mut self, name: &str, out: usize, kernel: usize, stride: usize, pad: usize) -> &mut Self {
        self.push(name.into(), LayerOp::Conv { out, kernel, stride, pad, groups: 1, bias: true }, vec![self.current])
    }

    /// A convolution without bias (`groups` of channels) and the BatchNorm `bn` after it.
    pub fn conv_bn(&mut self, name: &str, bn: &str, out: usize, kernel: usize, stride: usize, groups: usize) -> &mut Self {
        let op = LayerOp::Conv { out, kernel, stride, pad: kernel / 2, groups, bias: false };
        self.push(name.into(), op, vec![self.current]).batchnorm(bn)
    }

    pub fn batchnorm(&mut self, name: &str) -> &mut Self {
        self.push(name.into(), LayerOp::BatchNorm, vec![self.current])
    }

    pub fn relu(&mut self) -> &mut Self {
        self.unnamed("relu", LayerOp::Relu)
    }

    pub fn relu6(&mut self) -> &mut Self {
        self.unnamed("relu6", LayerOp::Relu6)
    }

    pub fn max_pool(&mut self, kernel: usize, stride: usize) -> &mut Self {
        self.unnamed("pool", LayerOp::MaxPool { kernel, stride })
    }

    pub fn global_avg_pool(&mut self) -> &mut Self {
        self.unnamed("pool", LayerOp::GlobalAvgPool)
    }

    pub fn flatten(&mut self) -> &mut Self {
        self.unnamed("flatten", LayerOp::Flatten)
    }

    /// The current value plus `other`.
    pub fn add(&mut self, name: &str, other: Value) -> &mut Self {
        self.push(name.into(), LayerOp::Add, vec![self.current, other])
    }

    pub fn build(&mut self) -> Desc {
        std::mem::replace(&mut self.desc, Desc { input: Vec::new(), layers: Vec::new() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_give_shapes_parameters_and_their_offsets() {
        let mut b = Builder::new(vec![1, 8, 8]);
        b.conv_bn("conv", "bn", 4, 3, 2, 1).relu();
        let x = b.current();
        b.conv_bn("dw", "dw_bn", 4, 3, 1, 4).add("sum", x).global_avg_pool().flatten().linear("fc", 3);
        let plan = b.build().plan(3).unwrap();
        assert_eq!(plan.shapes[0], vec![4, 4, 4]);
        let names: Vec<&str> = plan.params.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names[..2], ["conv.weight", "bn.gamma"]);
        assert_eq!(plan.params[5].shape, vec![4, 1, 3, 3], "depth-wise weight");
        assert_eq!(plan.first_param, vec![0, 1, 5, 5, 6, 10, 10, 10, 10]);
        assert_eq!(plan.shapes.last().unwrap(), &vec![3]);
    }

    #[test]
    fn bad_descriptions_are_errors() {
        let plan = |b: &mut Builder, classes| b.build().plan(classes).unwrap_err();
        assert!(plan(Builder::new(vec![1, 4, 4]).conv("c", 2, 5, 1, 0).flatten().linear("fc", 2), 2).contains("does not fit"));
        assert!(plan(Builder::new(vec![1, 4, 4]).flatten().linear("fc", 2), 3).contains("not [3]"));
        assert!(plan(Builder::new(vec![16]).linear("fc", usize::MAX / 4), 2).contains("parameters"));
        assert!(plan(Builder::new(vec![16]).batchnorm("bn"), 2).contains("[channels, height, width]"));
        assert!(plan(Builder::new(vec![3, 4, 4]).conv_bn("c", "bn", 4, 3, 1, 2), 2).contains("groups"));
        let mut b = Builder::new(vec![2, 4, 4]);
        b.conv("c", 3, 3, 1, 1).add("sum", Value::Input);
        assert!(plan(&mut b, 2).contains("adds"));
    }
}
