//! From a graph to an executable model: run the graph passes, infer shapes, and for every linear
//! layer and convolution pack the weights for the kernel chosen by timing the candidates (dense
//! GEMM, CSR sparse) on the layer's real shape, once for batch 1 and once for batched tiles.

use std::time::Instant;

use crate::error::{EngineError, Result};
use crate::graph::{Activation, Graph, Op, Quant, Weight, Window};
use crate::kernels::bcsr::{self, Bcsr};
use crate::kernels::csr::Csr;
use crate::kernels::kblocked::{self, KBlocked};
use crate::kernels::q8::{self, Dequant, Q8Matrix};
use crate::kernels::q8amx::{self, TileMatrix};
use crate::kernels::q8direct::{self, ShiftConv};
use crate::kernels::window::{self, Geometry};
use crate::kernels::{Isa, dense, direct, elementwise, spmm, spmv};
use crate::passes;
use crate::phases::{self, PhaseConv};

/// Samples per tile for batched execution.
pub const DEFAULT_TILE: usize = 64;

/// Which kernel families the compiler may use for weighted layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum KernelPolicy {
    /// Time the candidates on each layer's shape and keep the fastest (ties go to dense).
    #[default]
    Auto,
    /// Dense GEMM everywhere (the baseline of `--compare dense`).
    Dense,
    /// Sparse kernels everywhere.
    Sparse,
}

impl KernelPolicy {
    pub fn name(self) -> &'static str {
        match self {
            KernelPolicy::Auto => "auto",
            KernelPolicy::Dense => "dense",
            KernelPolicy::Sparse => "sparse",
        }
    }
}

/// Compilation settings.
#[derive(Debug, Clone)]
pub struct Options {
    pub policy: KernelPolicy,
    pub isa: Isa,
    /// Samples per tile for batched execution.
    pub tile: usize,
    /// A sparse kernel must be this much faster than dense to be chosen (0.05 = 5%).
    pub dense_bias: f64,
    /// Whether int8 linear layers may run dense on AMX tiles (`ENGINE_AMX`).
    pub amx: Amx,
    /// Strided convolutions on their input's phase images (`phases`): where they time faster
    /// (`None`, the default), wherever the direct kernel takes them (`Some(true)`), never.
    pub phases: Option<bool>,
    /// Residual additions fused into the layer before them (`fuse_residuals`); off only to
    /// compare against the separate addition.
    pub fuse_residuals: bool,
}

impl Options {
    pub fn new(policy: KernelPolicy) -> Result<Options> {
        let isa = crate::kernels::active_isa().map_err(EngineError::Setting)?;
        let amx = Amx::from_env().map_err(EngineError::Setting)?;
        Ok(Options { policy, isa, tile: DEFAULT_TILE, dense_bias: 0.05, amx, phases: None, fuse_residuals: true })
    }
}

/// Environment variable for the AMX choice: `off`, `on` or `timed` (the default).
pub const AMX_ENV: &str = "ENGINE_AMX";

/// When the int8 linear layers of a model run dense on AMX tiles (on CPUs that have them, under
/// the `auto` kernel policy; `sparse` and `dense` never use them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Amx {
    /// Where the tiles time faster than the sparse int8 kernel on the layer.
    #[default]
    Timed,
    /// Every int8 linear layer.
    Always,
    Off,
}

impl Amx {
    pub fn name(self) -> &'static str {
        match self {
            Amx::Timed => "timed",
            Amx::Always => "on",
            Amx::Off => "off",
        }
    }

    fn from_env() -> std::result::Result<Amx, String> {
        match std::env::var(AMX_ENV).as_deref() {
            Err(_) | Ok("timed") => Ok(Amx::Timed),
            Ok("on") => Ok(Amx::Always),
            Ok("off") => Ok(Amx::Off),
            Ok(v) => Err(format!("{AMX_ENV}={v} is not one of off, on, timed")),
        }
    }
}

/// A kernel family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    Dense,
    Sparse,
    /// Blocks of 4 output rows sharing columns (batched tiles only).
    Blocked,
    /// CSR weights in blocks of input columns over packed panels of the input (`kblocked`;
    /// tiles of two columns or more, where it times faster than plain CSR).
    ColumnBlocked,
    /// Int8 weights and uint8 inputs (quantized layers).
    Int8,
    /// Int8 direct convolution from a shifted quantized image, no im2col (`q8direct`; AVX-512
    /// VNNI, stride 1; tiles of any width, where it times faster than im2col and `Int8`).
    Int8Direct,
    /// Int8 weights dense in AMX tiles (`q8amx`; batched tiles of linear layers, on CPUs with
    /// AMX, where it times faster than the sparse int8 kernel).
    Int8Tiles,
    /// Sparse direct convolution from the image tile, no im2col (tiles of a multiple of 16
    /// (AVX-512) or 8 (AVX2) samples, and one sample at stride 1 with AVX-512; other tiles run
    /// im2col and the CSR kernel on the same weights).
    Direct,
}

impl Kernel {
    pub fn name(self, batch1: bool) -> &'static str {
        match (self, batch1) {
            (Kernel::Dense, _) => "dense-gemm",
            (Kernel::Sparse, false) => "f32-spmm-csr",
            (Kernel::Sparse, true) => "f32-spmv-csr",
            (Kernel::Blocked, _) => "f32-spmm-bcsr4x1",
            (Kernel::ColumnBlocked, _) => "f32-spmm-csr-kc128",
            (Kernel::Int8, false) => "q8-spmm-k4",
            (Kernel::Int8, true) => "q8-spmv-k4",
            (Kernel::Int8Direct, _) => "q8-conv-direct",
            (Kernel::Int8Tiles, _) => "q8-amx-dense",
            (Kernel::Direct, _) => "f32-conv-direct",
        }
    }
}

/// Packed weights of a linear layer or convolution, `[rows, cols]` with `cols = in (* kh * kw)`.
#[derive(Debug, Clone)]
pub struct MatMul {
    pub rows: usize,
    pub cols: usize,
    pub bias: Vec<f32>,
    pub relu: bool,
    /// Kernel at batch 1 and for batched tiles.
    pub batch1: Kernel,
    pub batched: Kernel,
    /// Present when some choice is dense.
    pub dense: Option<Vec<f32>>,
    /// Present when some choice is sparse.
    pub csr: Option<Csr>,
    /// Present when the batched choice is the 4-row blocked kernel.
    pub bcsr: Option<Bcsr>,
    /// Present when some choice is the column-blocked CSR kernel.
    pub kblocked: Option<KBlocked>,
    /// Present when a convolution runs the direct kernel: its weights decoded for it.
    pub taps: Option<direct::Taps>,
    pub sparsity: f64,
    /// For convolutions, the window geometry (with `w = 1`; scaled per tile).
    pub conv: Option<Geometry>,
    /// Present when the layer runs in int8.
    pub int8: Option<Box<Int8Layer>>,
    /// An element-wise function of the outputs, applied right after the kernel wrote them (the
    /// SiLU or ReLU6 after a convolution): fused from the node that follows, fp32 layers only.
    pub post: Option<crate::graph::Unary>,
    /// A residual connection fused from the addition that alone read the outputs: the layer's
    /// second input is added to them (`fuse_residuals`).
    pub residual: Option<Residual>,
}

/// The residual addition a layer makes itself: its second input joins the sums after the bias,
/// then this ReLU applies (the layer's own `relu` is off). The CSR kernels add it as they store
/// each strip; the others' outputs get it in a pass of their own, as the addition did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Residual {
    pub relu: bool,
}

/// A quantized layer's packed int8 weights, its dequantization and its input quantization.
#[derive(Debug, Clone)]
pub struct Int8Layer {
    pub matrix: Q8Matrix,
    pub dequant: Dequant,
    pub input_scale: f32,
    pub input_zero: u8,
    /// For a convolution that runs the direct kernel, its weights regrouped for it.
    pub shift: Option<ShiftConv>,
    /// For a linear layer whose batched kernel is `Int8Tiles`, its weights in AMX tiles.
    pub tiles: Option<TileMatrix>,
}

impl Int8Layer {
    /// `values`: the weight's int8 values (`weight.int8()`); `direct`: the geometry of a
    /// convolution that may run the direct kernel.
    fn new(weight: &Weight, values: &[i8], q: &Quant, bias: &[f32], relu: bool, direct: Option<Geometry>) -> Int8Layer {
        let matrix = Q8Matrix::from_int8(values, weight.rows(), weight.cols());
        let shift = direct.and_then(|g| ShiftConv::new(values, weight.rows(), &g)).filter(|s| s.worthwhile(matrix.stored_groups()));
        let dequant = Dequant {
            bias: bias.to_vec(),
            mult: q.scales.iter().map(|s| s * q.input_scale).collect(),
            zero_corr: matrix.row_sums.iter().map(|&r| r * q.input_zero as i32).collect(),
            relu,
            fake_quant: None,
        };
        Int8Layer { matrix, dequant, input_scale: q.input_scale, input_zero: q.input_zero, shift, tiles: None }
    }
}

impl MatMul {
    pub fn kernel(&self, batch1: bool) -> Kernel {
        if batch1 { self.batch1 } else { self.batched }
    }
    /// The name of the kernel that tiles of one sample (`one_sample`) or wider ones run: on one
    /// sample a linear layer runs the kernels' matrix-vector form, a convolution their matrix form
    /// over its output positions. `engine info`, `analyze` and `bench` all name kernels by it.
    pub fn kernel_name(&self, one_sample: bool) -> &'static str {
        self.kernel(one_sample).name(one_sample && self.conv.is_none())
    }
    /// Bytes of packed weights kept for execution.
    pub fn weight_bytes(&self) -> usize {
        self.dense.as_ref().map_or(0, |d| 4 * d.len())
            + self.int8.as_ref().map_or(0, |q| {
                q.matrix.bytes()
                    + 12 * self.rows
                    + q.shift.as_ref().map_or(0, ShiftConv::bytes)
                    + q.tiles.as_ref().map_or(0, TileMatrix::bytes)
            })
            + self.csr.as_ref().map_or(0, Csr::bytes)
            + self.bcsr.as_ref().map_or(0, Bcsr::bytes)
            + self.kblocked.as_ref().map_or(0, KBlocked::bytes)
            + 4 * self.bias.len()
    }
    /// Useful (non-zero) multiply-adds per output position, times two: FLOPs per sample column.
    pub fn useful_flops_per_column(&self) -> f64 {
        2.0 * self.rows as f64 * self.cols as f64 * (1.0 - self.sparsity)
    }
    /// Output positions per sample: a convolution's output pixels, else one.
    pub fn positions(&self) -> f64 {
        self.conv.map_or(1.0, |g| (g.out_hw[0] * g.out_hw[1]) as f64)
    }
}

impl Model {
    /// FLOPs per sample of the weighted layers: `(useful, dense)`, the non-zero multiply-adds and
    /// all of them, times two. Their ratio bounds what skipping zeros can gain.
    pub fn flops_per_sample(&self) -> (f64, f64) {
        self.layers
            .iter()
            .filter_map(|l| match &l.exec {
                Exec::MatMul(m) => Some((m.useful_flops_per_column() * m.positions(), 2.0 * (m.rows * m.cols) as f64 * m.positions())),
                _ => None,
            })
            .fold((0.0, 0.0), |(u, d), (a, b)| (u + a, d + b))
    }
}

/// An executable operator.
#[derive(Debug, Clone)]
pub enum Exec {
    MatMul(Box<MatMul>),
    Affine {
        scale: Vec<f32>,
        shift: Vec<f32>,
        relu: bool,
        per_channel: usize,
    },
    Relu,
    Pool {
        geometry: Geometry,
        avg: Option<bool>,
    },
    GlobalAvgPool {
        channels: usize,
        pixels: usize,
    },
    Add {
        relu: bool,
        /// A QuantizeLinear / DequantizeLinear pair `(scale, zero)` that followed, fused.
        fake_quant: Option<(f32, u8)>,
    },
    /// Same memory layout in and out: a copy.
    Flatten,
    /// Softmax over groups of `len` elements (the last axis).
    Softmax {
        len: usize,
    },
    /// Rows of `table` (`width` values each) picked by the input's values.
    Embed {
        table: Vec<f32>,
        width: usize,
    },
    LayerNorm {
        scale: Vec<f32>,
        bias: Vec<f32>,
        epsilon: f32,
    },
    /// One product per output slice, its operands starting at elements `slices[i]` of the inputs.
    BatchMatMul {
        product: crate::kernels::sequence::Product,
        slices: Vec<(usize, usize)>,
    },
    /// `kernels::sequence::select` over `shape`: condition, then `x`, then `y`, each a constant or
    /// the next input, with its broadcast strides.
    Where {
        shape: Vec<usize>,
        strides: [Vec<usize>; 3],
        x: Option<Vec<f32>>,
        y: Option<Vec<f32>>,
    },
    QuantDequant {
        scale: f32,
        zero: u8,
    },
    /// Grouped convolution (`kernels::grouped`), dense weights `[out, in / groups, kh, kw]`.
    GroupConv {
        weight: Vec<f32>,
        bias: Vec<f32>,
        geometry: Geometry,
        groups: usize,
        relu: bool,
        /// As `MatMul::post`.
        post: Option<crate::graph::Unary>,
    },
    Unary(crate::graph::Unary),
    /// `a op b` over the output per-sample `shape`, each operand by its broadcast strides; `b` the
    /// second input or `constant`.
    Binary {
        kind: crate::graph::BinaryKind,
        shape: Vec<usize>,
        a_strides: Vec<usize>,
        b_strides: Vec<usize>,
        constant: Option<Vec<f32>>,
        constant_first: bool,
    },
    /// Output element `i` of each sample copies input element `sources[i]` (a transpose or a
    /// selection, `layout::sources`).
    Gather {
        sources: Vec<u32>,
    },
    /// `kernels::elementwise::concat`'s `outer` and `blocks`.
    Concat {
        outer: usize,
        blocks: Vec<usize>,
    },
}

/// One layer of the compiled model.
#[derive(Debug, Clone)]
pub struct Layer {
    pub name: String,
    pub kind: &'static str,
    pub exec: Exec,
    /// Value indices.
    pub inputs: Vec<usize>,
    pub output: usize,
    pub out_shape: Vec<usize>,
}

/// A compiled model, ready to run at any batch size.
#[derive(Debug, Clone)]
pub struct Model {
    pub graph: Graph,
    pub layers: Vec<Layer>,
    /// Per-sample element count of every value; value 0 is the input.
    pub value_sizes: Vec<usize>,
    pub output_value: usize,
    pub input_shape: Vec<usize>,
    pub output_shape: Vec<usize>,
    pub options: Options,
}

/// Compiles a graph.
pub fn compile(mut graph: Graph, options: Options) -> Result<Model> {
    passes::optimize(&mut graph);
    let shapes = graph.infer_shapes()?;
    let mut names: Vec<String> = vec![graph.input.clone()];
    let mut value_sizes = vec![graph.input_shape.iter().product()];
    let mut layers = Vec::new();
    let shape_of = |name: &str, upto: usize| -> Vec<usize> {
        shapes[..upto].iter().rev().find(|(n, _)| n == name).map(|(_, s)| s.clone()).unwrap_or_default()
    };
    let mut fused = None;
    for (i, node) in graph.nodes.iter().enumerate() {
        if fused.take() == Some(i) {
            continue;
        }
        let mut inputs: Vec<usize> = node
            .inputs
            .iter()
            .map(|n| names.iter().rposition(|v| v == n).ok_or_else(|| EngineError::graph(&node.name, format!("unknown input '{n}'"))))
            .collect::<Result<_>>()?;
        let in_shape = shape_of(&node.inputs[0], i + 1);
        let out_shape = shapes[i + 1].1.clone();
        let relu = |a: &Activation| *a == Activation::Relu;
        let mut exec = match &node.op {
            Op::Linear { weight, bias, act } => Exec::MatMul(Box::new(pack(&node.name, weight, bias, relu(act), None, &options)?)),
            Op::Conv { weight, bias, window, act } => {
                let (phased, m) = conv_plan(&node.name, weight, bias, relu(act), window, &in_shape, &out_shape, &options)?;
                if let Some(phased) = phased {
                    // The phase images are a value of their own, made by a gather layer.
                    names.push(format!("{}.phases", node.output));
                    value_sizes.push(phased.sources.len());
                    let gather = Exec::Gather { sources: phased.sources };
                    let (name, output) = (format!("{}.phases", node.name), names.len() - 1);
                    layers.push(Layer { name, kind: "phases", exec: gather, inputs, output, out_shape: phased.phase_shape });
                    inputs = vec![output];
                }
                Exec::MatMul(Box::new(m))
            }
            Op::Affine { scale, shift, act } => {
                Exec::Affine { scale: scale.clone(), shift: shift.clone(), relu: relu(act), per_channel: in_shape[1..].iter().product() }
            }
            Op::Relu => Exec::Relu,
            Op::MaxPool { window } | Op::AvgPool { window, .. } => {
                let geometry = geometry(&in_shape, &out_shape, *window);
                let avg = if let Op::AvgPool { count_include_pad, .. } = node.op { Some(count_include_pad) } else { None };
                Exec::Pool { geometry, avg }
            }
            Op::GlobalAvgPool => Exec::GlobalAvgPool { channels: in_shape[0], pixels: in_shape[1..].iter().product() },
            Op::Add { act } => Exec::Add { relu: relu(act), fake_quant: None },
            Op::Flatten | Op::Reshape { .. } => Exec::Flatten,
            Op::Transpose { .. } | Op::Select { .. } => {
                Exec::Gather { sources: crate::layout::sources(&node.op, &in_shape).expect("a layout operator") }
            }
            Op::Softmax => Exec::Softmax { len: *out_shape.last().expect("a shape has an axis") },
            Op::Pick { sources, .. } => Exec::Gather { sources: sources.iter().map(|&s| s as u32).collect() },
            Op::Embed { table } => Exec::Embed { table: table.data.clone(), width: table.shape[1] },
            Op::LayerNorm { scale, bias, epsilon } => Exec::LayerNorm { scale: scale.clone(), bias: bias.clone(), epsilon: *epsilon },
            Op::BatchMatMul => crate::sequence::batch_matmul(&in_shape, &shape_of(&node.inputs[1], i + 1)),
            Op::Where { x, y } => {
                let mut next = 0;
                let mut shape_of_operand = |c: &Option<crate::graph::Operand>| match c {
                    Some(c) => c.per_sample(in_shape.len()).expect("checked in infer_shapes").to_vec(),
                    None => {
                        next += 1;
                        shape_of(&node.inputs[next], i + 1)
                    }
                };
                let (xs, ys) = (shape_of_operand(x), shape_of_operand(y));
                let rank = out_shape.len();
                let strides = [&in_shape, &xs, &ys].map(|s| elementwise::broadcast_strides(s, rank));
                let values = |c: &Option<crate::graph::Operand>| c.as_ref().map(|c| c.values.clone());
                Exec::Where { shape: out_shape.clone(), strides, x: values(x), y: values(y) }
            }
            Op::QuantDequant { scale, zero } => Exec::QuantDequant { scale: *scale, zero: *zero },
            Op::GroupConv { weight, bias, window, groups, act } => Exec::GroupConv {
                weight: weight.data.clone(),
                bias: bias.clone(),
                geometry: geometry(&in_shape, &out_shape, *window),
                groups: *groups,
                relu: relu(act),
                post: None,
            },
            Op::Unary(f) => Exec::Unary(*f),
            Op::Binary { kind, constant, constant_first } => {
                let rank = out_shape.len();
                let other = match constant {
                    Some(c) => c.per_sample(rank).expect("checked in infer_shapes").to_vec(),
                    None => shape_of(&node.inputs[1], i + 1),
                };
                Exec::Binary {
                    kind: *kind,
                    shape: out_shape.clone(),
                    a_strides: elementwise::broadcast_strides(&in_shape, rank),
                    b_strides: elementwise::broadcast_strides(&other, rank),
                    constant: constant.as_ref().map(|c| c.values.clone()),
                    constant_first: *constant_first,
                }
            }
            Op::Concat { axis } => Exec::Concat {
                outer: out_shape[..*axis].iter().product(),
                blocks: node.inputs.iter().map(|n| shape_of(n, i + 1)[*axis..].iter().product()).collect(),
            },
        };
        let mut output_name = node.output.clone();
        if let Some((next, f)) = fusable_unary(&graph, i) {
            match &mut exec {
                Exec::MatMul(m) => m.post = Some(f),
                Exec::GroupConv { post, .. } => *post = Some(f),
                _ => unreachable!("only convolutions take a function"),
            }
            output_name = graph.nodes[next].output.clone();
            fused = Some(next);
        } else if let Some((next, scale, zero)) = fusable_qdq(&graph, i)
            && take_fake_quant(&mut exec, scale, zero)
        {
            output_name = graph.nodes[next].output.clone();
            fused = Some(next);
        }
        names.push(output_name);
        value_sizes.push(out_shape.iter().product());
        layers.push(Layer { name: node.name.clone(), kind: node.op.kind(), exec, inputs, output: names.len() - 1, out_shape });
    }
    let output_value =
        names.iter().rposition(|n| n == &graph.output).ok_or_else(|| EngineError::graph(&graph.output, "output not produced"))?;
    if options.fuse_residuals {
        fuse_residuals(&mut layers, output_value);
    }
    let output_shape =
        value_sizes.get(output_value).map(|_| shapes.iter().rev().find(|(n, _)| n == &graph.output).unwrap().1.clone()).unwrap();
    Ok(Model { input_shape: graph.input_shape.clone(), graph, layers, value_sizes, output_value, output_shape, options })
}

/// Fuses each residual addition into the fp32 linear layer or convolution that computes one of
/// its operands, where that layer's output has no other reader, nothing (no ReLU, no function)
/// follows the sums in the layer, and the other operand is ready before the layer runs (made by
/// an earlier layer, or the model input). The layer takes the other operand as its second input
/// (read at the output's rows, also in row bands: `schedule::band_rows`) and writes the
/// addition's output; the addition goes.
fn fuse_residuals(layers: &mut Vec<Layer>, output_value: usize) {
    let mut k = 0;
    while k < layers.len() {
        let Exec::Add { relu, fake_quant: None } = layers[k].exec else {
            k += 1;
            continue;
        };
        let producer = |v: usize| layers.iter().position(|l| l.output == v);
        let readers = |v: usize| layers.iter().filter(|l| l.inputs.contains(&v)).count();
        let fusable = |p: usize, other: usize| -> Option<usize> {
            let l = producer(p)?;
            let Exec::MatMul(m) = &layers[l].exec else { return None };
            let plain = m.int8.is_none() && m.post.is_none() && !m.relu && m.residual.is_none();
            let ready = producer(other).is_none_or(|o| o < l);
            (plain && ready && p != output_value && readers(p) == 1 && layers[l].inputs.len() == 1).then_some(l)
        };
        let [a, b] = layers[k].inputs[..] else {
            k += 1;
            continue;
        };
        let Some((l, other)) = fusable(a, b).map(|l| (l, b)).or_else(|| fusable(b, a).map(|l| (l, a))) else {
            k += 1;
            continue;
        };
        let add = layers.remove(k);
        let layer = &mut layers[l];
        let Exec::MatMul(m) = &mut layer.exec else { unreachable!("checked above") };
        m.residual = Some(Residual { relu });
        layer.kind = if m.conv.is_some() { "conv+add" } else { "linear+add" };
        layer.inputs.push(other);
        layer.output = add.output;
    }
}

/// The element-wise function that a fp32 convolution `nodes[i]` (grouped too) can apply to its outputs itself:
/// the next node's, where that node is its output's only reader (the node's index, the function).
fn fusable_unary(graph: &Graph, i: usize) -> Option<(usize, crate::graph::Unary)> {
    let node = &graph.nodes[i];
    let (Op::Conv { weight, .. } | Op::GroupConv { weight, .. }) = &node.op else { return None };
    let next = graph.nodes.get(i + 1)?;
    let Op::Unary(f) = next.op else { return None };
    (weight.quant.is_none() && next.inputs == [node.output.clone()] && passes::consumers(graph, &node.output) == 1).then_some((i + 1, f))
}

/// The QuantizeLinear / DequantizeLinear pair right after node `i` that alone reads its output:
/// the pair's index, scale and zero point.
fn fusable_qdq(graph: &Graph, i: usize) -> Option<(usize, f32, u8)> {
    let (node, next) = (&graph.nodes[i], graph.nodes.get(i + 1)?);
    let Op::QuantDequant { scale, zero } = next.op else { return None };
    (next.inputs == [node.output.clone()] && passes::consumers(graph, &node.output) == 1).then_some((i + 1, scale, zero))
}

/// Fuses a fake quantization into the operator that computes its input, where that operator
/// applies one to its outputs as it writes them (an int8 layer's dequantization, an addition);
/// false otherwise.
fn take_fake_quant(exec: &mut Exec, scale: f32, zero: u8) -> bool {
    let slot = match exec {
        Exec::MatMul(m) => match m.int8.as_mut() {
            Some(q) => &mut q.dequant.fake_quant,
            None => return false,
        },
        Exec::Add { fake_quant, .. } => fake_quant,
        _ => return false,
    };
    *slot = Some((scale, zero));
    true
}

/// A convolution's packed weights, and for a strided one whose stride-1 form on its input's phase
/// images (`phases`) needs no im2col (the direct kernel, or a 1x1 convolution) and times faster
/// on one sample, gather included, that form's gather. The dense policy (the baseline of `--compare dense`) keeps every layer as written.
#[allow(clippy::too_many_arguments)]
fn conv_plan(
    name: &str,
    weight: &Weight,
    bias: &[f32],
    relu: bool,
    window: &Window,
    in_shape: &[usize],
    out_shape: &[usize],
    o: &Options,
) -> Result<(Option<PhaseConv>, MatMul)> {
    let strided = pack(name, weight, bias, relu, Some(geometry(in_shape, out_shape, *window)), o)?;
    let wanted = o.policy == KernelPolicy::Auto && o.phases != Some(false);
    let Some(phased) = phases::rewrite(weight, window, in_shape, out_shape).filter(|_| wanted) else {
        return Ok((None, strided));
    };
    let m = pack(name, &phased.weight, bias, relu, Some(geometry(&phased.phase_shape, out_shape, phased.window)), o)?;
    // On phase images without im2col: the direct kernel (fp32 or int8), or a 1x1 convolution
    // reading the image.
    let direct = |k: Kernel| matches!(k, Kernel::Direct | Kernel::Int8Direct);
    if !((direct(m.batched) && direct(m.batch1)) || phased.window.is_pointwise()) {
        return Ok((None, strided));
    }
    if o.phases == Some(true) {
        return Ok((Some(phased), m));
    }
    let team = crate::team::Team::new(1).map_err(|e| EngineError::graph(name, format!("starting a timing thread: {e}")))?;
    let x = test_values(in_shape.iter().product());
    let (mut phase_x, mut y) = (vec![0.0; phased.sources.len()], vec![0.0; out_shape.iter().product()]);
    let positions = out_shape[1] * out_shape[2];
    let mut scratch = vec![0.0; (strided.cols * positions).max(x.len().div_ceil(4))];
    let mut bytes = Int8Buffers::for_one_sample(&[&strided, &m], positions);
    let mut conv = |m: &MatMul, x: &[f32], y: &mut [f32], scratch: &mut [f32]| {
        let g = m.conv.expect("a convolution");
        match &m.int8 {
            // As the executor runs one sample: the direct kernel where it is the one-sample choice.
            Some(q) => {
                let direct = q.shift.as_ref().filter(|_| m.batch1 == Kernel::Int8Direct);
                int8_conv_rows(o.isa, q, direct, &g, x, 0..g.out_hw[0], y, scratch, &mut bytes, &team)
            }
            None => crate::exec::conv(o.isa, m, g, 1, x, None, y, scratch, &team),
        }
    };
    let t_strided = best_time(&mut || conv(&strided, &x, &mut y, &mut scratch));
    let t_phases = best_time(&mut || {
        elementwise::gather_rows(&phased.sources, &x, 1, &mut phase_x);
        conv(&m, &phase_x, &mut y, &mut scratch)
    });
    Ok(if t_phases < t_strided { (Some(phased), m) } else { (None, strided) })
}

/// Byte buffers for timing int8 convolutions (`int8_conv_rows`): quantized columns, and a row
/// buffer and shifted image for the direct kernel.
struct Int8Buffers {
    columns: Vec<u8>,
    row: Vec<u8>,
    shifted: Vec<u8>,
}

impl Int8Buffers {
    /// Enough for any of `layers` (int8 or not; convolutions of `positions` output positions) on
    /// one sample.
    fn for_one_sample(layers: &[&MatMul], positions: usize) -> Int8Buffers {
        let shifts: Vec<_> = layers.iter().filter_map(|m| m.conv.zip(m.int8.as_ref().and_then(|q| q.shift.as_ref()))).collect();
        Int8Buffers {
            columns: vec![0; layers.iter().map(|m| q8::quantized_len(m.cols, positions)).max().unwrap_or(0)],
            row: vec![0; shifts.iter().map(|(_, sc)| sc.wp + 3).max().unwrap_or(0)],
            shifted: vec![0; shifts.iter().map(|(g, sc)| sc.image_len(g, 1)).max().unwrap_or(0)],
        }
    }
}

/// Output rows `rows` of an int8 convolution on one thread, as the executor computes them, for
/// timing: the direct kernel on `direct`'s regrouped weights (`y` holds the whole output), else
/// im2col, quantization and the grouped kernel (`y` holds the band; `scratch`: the f32 columns
/// or the quantized image).
#[allow(clippy::too_many_arguments)] // the layer, its input and output, and the buffers
fn int8_conv_rows(
    isa: Isa,
    q: &Int8Layer,
    direct: Option<&ShiftConv>,
    g: &Geometry,
    x: &[f32],
    rows: std::ops::Range<usize>,
    y: &mut [f32],
    scratch: &mut [f32],
    bufs: &mut Int8Buffers,
    team: &crate::team::Team,
) {
    match direct {
        Some(sc) => {
            let source = q8direct::Source::F32 { x, scale: q.input_scale, zero: q.input_zero };
            q8direct::shift_image(isa, g, sc, source, rows.clone(), &mut bufs.row, &mut bufs.shifted);
            q8direct::conv_q8_direct(isa, sc, &q.dequant, g, &bufs.shifted, q8direct::Out::F32(y), 0..q.matrix.rows, rows)
        }
        None => {
            let cols_w = rows.len() * g.out_hw[1] * g.w;
            crate::exec::quantized_im2col(isa, q, g, x, rows, scratch, &mut bufs.columns, team);
            let out = &mut y[..q.matrix.rows * cols_w];
            q8::spmm_q8(isa, &q.matrix, &bufs.columns, cols_w, out, 0..q.matrix.rows, &q.dequant)
        }
    }
}

/// Window geometry of a `[C, H, W] -> [C', H', W']` operator, for one sample (`w` is set per tile).
fn geometry(in_shape: &[usize], out_shape: &[usize], window: Window) -> Geometry {
    let window = window.floor_equivalent(in_shape[1], in_shape[2]);
    Geometry { channels: in_shape[0], in_hw: [in_shape[1], in_shape[2]], out_hw: [out_shape[1], out_shape[2]], window, w: 1 }
}

/// Packs a layer's weights for the kernels chosen for it. Quantized layers run the int8 kernel,
/// except under the dense policy, which runs fp32 GEMM on the dequantized weights (the baseline
/// of `--compare dense`).
fn pack(name: &str, weight: &Weight, bias: &[f32], relu: bool, conv: Option<Geometry>, o: &Options) -> Result<MatMul> {
    let (rows, cols, data) = (weight.rows(), weight.cols(), weight.data.as_slice());
    if rows == 0 || data.len() != rows * cols || bias.len() != rows {
        return Err(EngineError::graph(name, format!("weight of {} values does not match [{rows}, {cols}]", data.len())));
    }
    let csr = Csr::from_dense(data, rows, cols);
    let sparsity = 1.0 - csr.nnz() as f64 / data.len().max(1) as f64;
    let mut m = MatMul {
        rows,
        cols,
        bias: bias.to_vec(),
        relu,
        batch1: Kernel::Dense,
        batched: Kernel::Dense,
        dense: None,
        csr: None,
        bcsr: None,
        kblocked: None,
        taps: None,
        sparsity,
        conv,
        int8: None,
        post: None,
        residual: None,
    };
    if let Some(q) = weight.quant.as_ref().filter(|_| o.policy != KernelPolicy::Dense) {
        if q.scales.len() != rows {
            return Err(EngineError::graph(name, format!("{} weight scales for {rows} rows", q.scales.len())));
        }
        let values = weight.int8().expect("quantized weight");
        let mut int8 = Int8Layer::new(weight, &values, q, bias, relu, conv.filter(|_| q8direct::available(o.isa)));
        // The direct kernel where its weights were regrouped and, under the auto policy, it times
        // faster at that tile width (1x1 convolutions and narrow images often do not).
        let direct = |tile: usize| match (int8.shift.as_ref(), conv) {
            (Some(sc), Some(g)) if o.policy == KernelPolicy::Auto => int8_direct_is_faster(&int8, sc, g, tile, o),
            (shift, _) => shift.is_some(),
        };
        let kernel = |direct: bool| if direct { Kernel::Int8Direct } else { Kernel::Int8 };
        (m.batch1, m.batched) = (kernel(direct(1)), kernel(direct(o.tile)));
        if m.batch1 != Kernel::Int8Direct && m.batched != Kernel::Int8Direct {
            int8.shift = None;
        }
        if m.batched == Kernel::Int8 && conv.is_none() && o.policy == KernelPolicy::Auto && o.amx != Amx::Off && q8amx::available(o.isa) {
            let tiles = TileMatrix::from_int8(&values, rows, cols);
            if o.amx == Amx::Always || tiles_are_faster(&int8, &tiles, o) {
                m.batched = Kernel::Int8Tiles;
                int8.tiles = Some(tiles);
            }
        }
        m.int8 = Some(Box::new(int8));
        return Ok(m);
    }
    (m.batch1, m.batched) = match o.policy {
        KernelPolicy::Dense => (Kernel::Dense, Kernel::Dense),
        KernelPolicy::Sparse => (Kernel::Sparse, Kernel::Sparse),
        KernelPolicy::Auto => {
            let positions = conv.map_or(1, |g| g.out_hw[0] * g.out_hw[1]);
            // Blocks of 4 rows are a candidate where the weights fill them well (block-pruned or
            // dense weights), with AVX2 or AVX-512; built once here and kept if chosen.
            let blocked = (o.isa >= Isa::Avx2).then(|| Bcsr::from_dense(data, rows, cols)).filter(|b| b.fill(csr.nnz()) <= 1.5);
            // Column blocks where there are at least two of them; likewise built once.
            let column_blocks = (cols > kblocked::DEFAULT_KC).then(|| KBlocked::from_csr(&csr, kblocked::DEFAULT_KC));
            let mut batched = choose(&m, data, &csr, blocked.as_ref(), column_blocks.as_ref(), timing_columns(&m, positions * o.tile), o);
            if let Some(g) = conv.filter(|_| direct::vectorized(o.isa, o.tile))
                && direct_is_faster(&m, g, data, &csr, blocked.as_ref(), column_blocks.as_ref(), batched, o.tile, o)
            {
                batched = Kernel::Direct;
            }
            if batched == Kernel::Blocked {
                m.bcsr = blocked;
            }
            // One sample runs the direct kernel where it takes one (AVX-512, stride 1 along rows)
            // and times faster on one sample, whatever wider tiles run: ResNet-50's 28x28 and
            // 14x14 3x3 layers run it about 15% faster than im2col on one sample and not on 16
            // (BERT's row-wise layers, a 1x128 image each, ran it at 39 GFLOP/s where the CSR
            // kernel on the image ran at 116).
            let one = choose(&m, data, &csr, None, column_blocks.as_ref(), timing_columns(&m, positions), o);
            let one = match conv {
                Some(g) if direct::takes(o.isa, 1, &g) && direct_is_faster(&m, g, data, &csr, None, column_blocks.as_ref(), one, 1, o) => {
                    Kernel::Direct
                }
                _ => one,
            };
            if one == Kernel::ColumnBlocked || batched == Kernel::ColumnBlocked {
                m.kblocked = column_blocks;
            }
            (one, batched)
        }
    };
    if m.batch1 == Kernel::Dense || m.batched == Kernel::Dense {
        m.dense = Some(data.to_vec());
    }
    if m.batch1 == Kernel::Sparse && m.conv.is_none() {
        // The batch-1 kernel of a linear layer streams every index once per sample.
        m.csr = Some(csr.with_narrow_columns());
    } else if matches!(m.batch1, Kernel::Sparse | Kernel::Direct) || matches!(m.batched, Kernel::Sparse | Kernel::Direct) {
        m.csr = Some(csr);
    }
    if (m.batch1 == Kernel::Direct || m.batched == Kernel::Direct)
        && let (Some(g), Some(csr)) = (&m.conv, &m.csr)
    {
        m.taps = Some(direct::Taps::new(csr, g));
    }
    Ok(m)
}

/// Bytes of input (im2col columns) the kernel timings run on at most. A tile's whole image is
/// timed where it fits; above this, the planner cuts such layers into row bands anyway, and
/// timing a whole 96 x 96 image at 16-sample tiles (a 170 MB im2col buffer for a 32-channel 3 x 3
/// layer) had made compiling the convolution stack take 10 s.
const TIMING_BYTES: usize = 32 << 20;

/// Multiply-adds of one dense timing run at most (about 1-2 ms), but never fewer columns than
/// `MIN_TIMING_COLUMNS`, which the kernels' speed per column has settled by. Timing whole
/// images had BERT-base's 73 row-wise layers (128 rows, tiles of 64) take 75 s to compile.
const TIMING_MACS: usize = 1 << 26;
const MIN_TIMING_COLUMNS: usize = 256;

/// The columns (output positions times samples) to time a layer of `m.cols` inputs on: all `w`
/// of them, or as many as `TIMING_BYTES` holds and `TIMING_MACS` allows.
fn timing_columns(m: &MatMul, w: usize) -> usize {
    let by_work = (TIMING_MACS / (m.rows * m.cols).max(1)).max(MIN_TIMING_COLUMNS);
    w.min(TIMING_BYTES / (4 * m.cols.max(1))).min(by_work).max(1)
}

/// Times the candidates on a `[cols, w]` input (single thread) and returns the fastest, with
/// `dense_bias` in dense's favour.
fn choose(m: &MatMul, data: &[f32], csr: &Csr, blocked: Option<&Bcsr>, column_blocks: Option<&KBlocked>, w: usize, o: &Options) -> Kernel {
    if w == 1 {
        // One sample reads every weight once, so the cost is the bytes streamed from memory; a
        // timing loop would keep the weights in cache and favour dense wrongly on large layers.
        let sparse_bytes = csr.nnz() * 8 + 4 * (m.rows + 1);
        return if (sparse_bytes as f64) < (4 * data.len()) as f64 * (1.0 - o.dense_bias) { Kernel::Sparse } else { Kernel::Dense };
    }
    let x = test_values(m.cols * w);
    let mut y = vec![0.0f32; m.rows * w];
    let mut time = |f: &mut dyn FnMut(&mut [f32])| best_time(&mut || f(&mut y));
    let t_dense = time(&mut |y| dense::dense(o.isa, data, m.rows, m.cols, &m.bias, &x, w, y, m.relu));
    let t_sparse = time(&mut |y| {
        if w == 1 {
            spmv::spmv(o.isa, csr, &m.bias, &x, y, 0..m.rows, m.relu)
        } else {
            spmm::spmm(o.isa, csr, &m.bias, &x, w, y, 0..m.rows, m.relu)
        }
    });
    let mut best = (t_sparse, Kernel::Sparse);
    if let Some(kb) = column_blocks {
        let t =
            time(&mut |y| kblocked::spmm_kblocked(o.isa, kb, &m.bias, &x, w, y, 0..m.rows, spmm::Sums::new(spmm::Ld::packed(w), m.relu)));
        if t < best.0 {
            best = (t, Kernel::ColumnBlocked);
        }
    }
    if let Some(b) = blocked.filter(|_| w > 1) {
        let t = time(&mut |y| bcsr::spmm_bcsr(o.isa, b, &m.bias, &x, w, y, 0..b.blocks(), m.relu));
        if t < best.0 {
            best = (t, Kernel::Blocked);
        }
    }
    if best.0 < t_dense * (1.0 - o.dense_bias) { best.1 } else { Kernel::Dense }
}

/// Times an int8 linear layer's dense AMX tiles against its sparse int8 kernel on one tile of
/// `o.tile` samples (single thread), in three alternating rounds, keeping each one's best time
/// (the tile unit runs slowly for a while after it starts, and a single round flipped the choice
/// on LeNet-300-100's first layer between runs).
fn tiles_are_faster(int8: &Int8Layer, tiles: &TileMatrix, o: &Options) -> bool {
    let (m, w) = (&int8.matrix, o.tile);
    let x: Vec<u8> = (0..q8::quantized_len(m.cols, w)).map(|i| (i * 7919 % 251) as u8).collect();
    let mut y = vec![0.0f32; m.rows * w];
    let (mut t_sparse, mut t_tiles) = (f64::MAX, f64::MAX);
    for _ in 0..3 {
        t_sparse = t_sparse.min(best_time(&mut || q8::spmm_q8(o.isa, m, &x, w, &mut y, 0..m.rows, &int8.dequant)));
        t_tiles = t_tiles.min(best_time(&mut || q8amx::matmul_into(tiles, &x, w, q8::Output::F32(&mut y), 0..m.rows, &int8.dequant)));
    }
    t_tiles < t_sparse
}

/// Deterministic inputs for timing kernels.
fn test_values(n: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * 7919) % 13) as f32 * 0.1 - 0.6).collect()
}

/// The best of up to 15 runs of `f` (after one warm-up), stopping after 50 ms.
fn best_time(f: &mut dyn FnMut()) -> f64 {
    f();
    let mut best = f64::MAX;
    let mut spent = 0.0;
    for _ in 0..15 {
        let e = elapsed(f);
        best = best.min(e);
        spent += e;
        if spent > 0.05 {
            break;
        }
    }
    best
}

/// The best times of up to 15 runs each of `a` and `b` in turns (after one warm-up each),
/// stopping after 100 ms: a slow phase of the machine hits both, where timing one and then the
/// other had flipped ResNet-50's choices between runs.
fn best_times_in_turns(a: &mut dyn FnMut(), b: &mut dyn FnMut()) -> (f64, f64) {
    a();
    b();
    let (mut best_a, mut best_b, mut spent) = (f64::MAX, f64::MAX, 0.0);
    for _ in 0..15 {
        let (ta, tb) = (elapsed(a), elapsed(b));
        (best_a, best_b, spent) = (best_a.min(ta), best_b.min(tb), spent + ta + tb);
        if spent > 0.1 {
            break;
        }
    }
    (best_a, best_b)
}

/// Seconds one run of `f` takes.
fn elapsed(f: &mut dyn FnMut()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

/// Times an int8 convolution's direct kernel against im2col, quantization and the grouped
/// kernel on one tile of `tile` samples (single thread), on a band of output rows from the middle
/// of the image where the whole is more than the timing budget, as `direct_is_faster` does.
fn int8_direct_is_faster(q: &Int8Layer, sc: &ShiftConv, g: Geometry, tile: usize, o: &Options) -> bool {
    let (rows, cols, [oh, ow]) = (q.matrix.rows, q.matrix.cols, g.out_hw);
    let budget = (TIMING_MACS / (rows * cols).max(1)).max(MIN_TIMING_COLUMNS).min(TIMING_BYTES / cols.max(1));
    let band = (budget / (ow * tile).max(1)).clamp(1, oh);
    let out_rows = (oh - band) / 2..(oh - band) / 2 + band;
    let (g, cols_w) = (Geometry { w: tile, ..g }, band * ow * tile);
    // Only the input rows the band reads get values; the rest of the buffers stays untouched
    // (zeroed allocations are not written, so 16-sample tiles of large images cost nothing).
    let (plane, row, input) = (g.in_hw[0] * g.in_hw[1] * tile, g.in_hw[1] * tile, g.input_rows(out_rows.clone()));
    let mut x = vec![0.0f32; g.channels * plane];
    let values = test_values((input.end - input.start) * row);
    for channel in x.chunks_exact_mut(plane.max(1)) {
        channel[input.start * row..input.end * row].copy_from_slice(&values);
    }
    let mut scratch = vec![0.0f32; (cols * cols_w).max(x.len().div_ceil(4))];
    let mut bufs = Int8Buffers {
        columns: vec![0; q8::quantized_len(cols, cols_w)],
        row: vec![0; (sc.wp + 3) * tile],
        shifted: vec![0; sc.image_len(&g, tile)],
    };
    let mut y = vec![0.0f32; rows * oh * ow * tile];
    // A team of one spawns no thread, so this does not fail.
    let Ok(team) = crate::team::Team::new(1) else { return true };
    let mut run =
        |direct: Option<&ShiftConv>| int8_conv_rows(o.isa, q, direct, &g, &x, out_rows.clone(), &mut y, &mut scratch, &mut bufs, &team);
    // A warm-up, then two runs in turns, so that a slow phase of the machine hits both: the two
    // differ by 2-5x where it matters (ResNet-50's int8 layers took 4 s to compile at best_time's
    // 15 runs each).
    let (mut t_im2col, mut t_direct) = (f64::MAX, f64::MAX);
    run(None);
    run(Some(sc));
    for _ in 0..2 {
        t_im2col = t_im2col.min(elapsed(&mut || run(None)));
        t_direct = t_direct.min(elapsed(&mut || run(Some(sc))));
    }
    t_direct < t_im2col
}

/// Times a convolution's direct kernel against im2col followed by the `batched` kernel on one
/// tile of `o.tile` samples (single thread): im2col's copy is part of the cost the direct kernel
/// saves, so it is timed with it.
#[allow(clippy::too_many_arguments)]
fn direct_is_faster(
    m: &MatMul,
    g: Geometry,
    data: &[f32],
    csr: &Csr,
    blocked: Option<&Bcsr>,
    column_blocks: Option<&KBlocked>,
    batched: Kernel,
    tile: usize,
    o: &Options,
) -> bool {
    let [oh, ow] = g.out_hw;
    // The whole image, or a band of output rows from its middle (`timing_columns`); where one row
    // of the tile is more than that (a row-wise linear layer's 128 positions), a narrower tile.
    let budget = timing_columns(m, oh * ow * tile);
    let tile = if ow * tile > budget { (budget / ow.max(1)).next_multiple_of(16).min(tile) } else { tile };
    let g = Geometry { w: tile, ..g };
    let band = (budget / (ow * tile).max(1)).clamp(1, oh);
    let rows = (oh - band) / 2..(oh - band) / 2 + band;
    let cols_w = band * ow * tile;
    let x = test_values(g.channels * g.in_hw[0] * g.in_hw[1] * tile);
    // A 1x1 convolution reads the image as its im2col (`exec::conv`; in row bands, in place):
    // the band's columns are timed as the first `cols_w` of each channel, with no copy (charging
    // one had the one-sample direct kernel picked for ResNet-50's 256-to-128 1x1 layer, where it
    // then ran at half the CSR kernel's speed).
    let own = g.window.is_pointwise();
    let (mut cols, mut y) = (vec![0.0f32; if own { 0 } else { m.cols * cols_w }], vec![0.0f32; m.rows * oh * ow * tile]);
    let mut y_direct = vec![0.0f32; y.len()];
    let taps = direct::Taps::new(csr, &g);
    let mut im2col = || {
        let cols: &[f32] = if own {
            &x
        } else {
            window::im2col_rows(&g, &x, rows.clone(), &mut cols);
            &cols
        };
        match (batched, blocked) {
            (Kernel::Dense, _) => dense::dense(o.isa, data, m.rows, m.cols, &m.bias, cols, cols_w, &mut y, m.relu),
            (Kernel::Blocked, Some(b)) => bcsr::spmm_bcsr(o.isa, b, &m.bias, cols, cols_w, &mut y, 0..b.blocks(), m.relu),
            (Kernel::ColumnBlocked, _) if let Some(kb) = column_blocks => kblocked::spmm_kblocked(
                o.isa,
                kb,
                &m.bias,
                cols,
                cols_w,
                &mut y,
                0..m.rows,
                spmm::Sums::new(spmm::Ld::packed(cols_w), m.relu),
            ),
            _ => spmm::spmm(o.isa, csr, &m.bias, cols, cols_w, &mut y, 0..m.rows, m.relu),
        }
    };
    let mut direct = || direct::conv_direct_decoded(o.isa, &taps, &m.bias, &g, &x, &mut y_direct, 0..m.rows, rows.clone(), m.relu, None);
    let (t_im2col, t_direct) = best_times_in_turns(&mut im2col, &mut direct);
    t_direct < t_im2col
}
