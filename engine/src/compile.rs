//! From a graph to an executable model: run the graph passes, infer shapes, and for every linear
//! layer and convolution pack the weights for the kernel chosen by timing the candidates (dense
//! GEMM, CSR sparse) on the layer's real shape, once for batch 1 and once for batched tiles.

use std::time::Instant;

use crate::error::{EngineError, Result};
use crate::graph::{Activation, Graph, Op, Quant, Weight, Window};
use std::sync::Arc;

use crate::catalogue::{DirectWeights, F32Kernel, Int8Kernel, Kernels};
pub use crate::catalogue::{Int8Layer, Kernel};
use crate::kernels::bcsr::Bcsr;
use crate::kernels::csr::Csr;
use crate::kernels::kblocked::{self, KBlocked};
use crate::kernels::lines::LineAligned;
use crate::kernels::q8::{self, Dequant, Q8Matrix};
use crate::kernels::q8amx::{self, TileMatrix};
use crate::kernels::q8direct::{self, ShiftConv};
use crate::kernels::window::{self, Geometry, Unfold};
use crate::kernels::winograd::{self, Winograd};
use crate::kernels::{Isa, direct, elementwise, q8conv, spmm};
use crate::ops::{FakeQuant, Unary};
use crate::passes;
use crate::phases;

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
    /// Whether int8 linear layers and convolutions may run dense on AMX tiles (`ENGINE_AMX`).
    pub amx: Amx,
    /// Strided convolutions on their input's phase images (`phases`): where they time faster
    /// (`None`, the default), wherever the direct kernel takes them (`Some(true)`), never.
    pub phases: Option<bool>,
    /// Residual additions fused into the layer before them (`fuse_residuals`); off only to
    /// compare against the separate addition.
    pub fuse_residuals: bool,
    /// Pointwise convolutions fused into the depth-wise convolution that alone reads them
    /// (`fuse_expansions`); off only to compare against the separate layers.
    pub fuse_expansions: bool,
    /// Concatenations whose inputs are written straight into their output's region
    /// (`exec::concat_regions`); off only to compare against the copies.
    pub concat_in_place: bool,
}

impl Options {
    pub fn new(policy: KernelPolicy) -> Result<Options> {
        let isa = crate::kernels::active_isa().map_err(EngineError::Setting)?;
        let amx = Amx::from_env().map_err(EngineError::Setting)?;
        Ok(Options {
            policy,
            isa,
            tile: DEFAULT_TILE,
            dense_bias: 0.05,
            amx,
            phases: None,
            fuse_residuals: true,
            fuse_expansions: true,
            concat_in_place: true,
        })
    }
}

/// Environment variable for the AMX choice: `off`, `on` or `timed` (the default).
pub const AMX_ENV: &str = "ENGINE_AMX";

/// When the int8 linear layers and convolutions of a model run dense on AMX tiles (on CPUs that
/// have them, under the `auto` kernel policy; `sparse` and `dense` never use them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Amx {
    /// Where the tiles time faster than the sparse int8 kernel on the layer.
    #[default]
    Timed,
    /// Every int8 linear layer's batched tiles, and every convolution the tiles are timed on.
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

/// Packed weights of a linear layer or convolution, `[rows, cols]` with `cols = in (* kh * kw)`.
#[derive(Debug, Clone)]
pub struct MatMul {
    pub rows: usize,
    pub cols: usize,
    pub bias: Vec<f32>,
    pub relu: bool,
    /// The kernels of tiles of one sample and of wider ones, with their packed weights.
    pub kernels: Kernels,
    pub sparsity: f64,
    /// For convolutions, the window geometry (with `w = 1`; scaled per tile).
    pub conv: Option<Geometry>,
    /// An element-wise function of the outputs, applied right after the kernel wrote them (the
    /// SiLU or ReLU6 after a convolution): fused from the node that follows, fp32 layers only.
    pub post: Option<crate::graph::Unary>,
    /// A residual connection fused from the addition that alone read the outputs: the layer's
    /// second input is added to them (`fuse_residuals`).
    pub residual: Option<Residual>,
}

/// A layer's scratch for one tile (`MatMul::scratch`), in bytes: the f32 scratch region (im2col
/// columns, or an int8 convolution's quantized image) and the quantized input slot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scratch {
    pub bytes: usize,
    pub quantized: usize,
}

/// The residual addition a layer makes itself: its second input joins the sums after the bias,
/// then this ReLU applies (the layer's own `relu` is off). The CSR kernels add it as they store
/// each strip; the others' outputs get it in a pass of their own, as the addition did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Residual {
    pub relu: bool,
    /// The QuantizeLinear / DequantizeLinear pair that followed the addition, applied after the
    /// ReLU (int8 layers only: an fp32 layer's addition fuses only without one).
    pub fake_quant: Option<(f32, u8)>,
}

/// `values`: the weight's int8 values (`weight.int8()`).
fn int8_layer(weight: &Weight, values: &[i8], q: &Quant, bias: &[f32], relu: bool) -> Int8Layer {
    let matrix = Q8Matrix::from_int8(values, weight.rows(), weight.cols());
    let dequant = Dequant {
        bias: bias.to_vec(),
        mult: q.scales.iter().map(|s| s * q.input_scale).collect(),
        zero_corr: matrix.row_sums.iter().map(|&r| r * q.input_zero as i32).collect(),
        relu,
        fake_quant: None,
    };
    Int8Layer { matrix, dequant, input_scale: q.input_scale, input_zero: q.input_zero }
}

impl MatMul {
    /// The kernel that tiles of one sample (`one_sample`) or wider ones run.
    pub fn kernel(&self, one_sample: bool) -> Kernel {
        self.kernels.kernel(one_sample)
    }
    /// The layer's int8 weights and quantization, where it runs in int8.
    pub fn int8(&self) -> Option<&Int8Layer> {
        self.kernels.int8()
    }
    /// The name of the kernel that tiles of one sample (`one_sample`) or wider ones run: on one
    /// sample a linear layer runs the kernels' matrix-vector form, a convolution their matrix form
    /// over its output positions. `engine info`, `analyze` and `bench` all name kernels by it.
    pub fn kernel_name(&self, one_sample: bool) -> &'static str {
        self.kernel(one_sample).name(one_sample && self.conv.is_none())
    }
    /// The name of the kernel that tiles of `w` samples run: `kernel_name`, except that where the
    /// direct kernel does not take such tiles, the kernel they run instead (`DirectWeights::others`).
    pub fn kernel_name_on(&self, isa: Isa, w: usize) -> &'static str {
        match self.kernels.f32(w == 1) {
            Some(F32Kernel::Direct(d)) if !self.runs_direct(isa, w) => d.others.kernel().name(false),
            _ => self.kernel_name(w == 1),
        }
    }
    /// Columns of the layer's product on a tile of `w` samples: a convolution's output
    /// positions times `w`, else `w`.
    pub fn columns(&self, w: usize) -> usize {
        self.conv.map_or(1, |g| g.out_hw[0] * g.out_hw[1]) * w
    }
    /// The bounds of a fused Clip (ReLU6), which the matrix kernels clamp their stores to
    /// (`spmm::Sums::clip`); none where the fused function is another or there is none, or
    /// where the layer adds a residual (the function comes before the addition).
    pub fn kernel_clip(&self) -> Option<[f32; 2]> {
        match self.post {
            Some(crate::graph::Unary::Clip(c)) if self.residual.is_none() => Some([c.lo, c.hi]),
            _ => None,
        }
    }
    /// The fused function left to apply after the matrix kernels (`matmul_rows` and the
    /// others in `exec::layers`) wrote the outputs: none where they clamped a fused Clip.
    pub fn post_after_kernel(&self) -> Option<crate::graph::Unary> {
        self.post.filter(|_| self.kernel_clip().is_none())
    }
    /// Whether a convolution runs the fp32 direct kernel on tiles of `w` samples (else im2col
    /// and the matrix kernel on the same weights).
    pub fn runs_direct(&self, isa: Isa, w: usize) -> bool {
        self.kernel(w == 1) == Kernel::Direct && self.conv.is_some_and(|g| direct::takes(isa, w, &g))
    }
    /// Whether a convolution's kernel on tiles of `w` samples unfolds the image itself (no
    /// im2col buffer): the column-blocked kernel, on any window but a pointwise one (whose image
    /// is its own im2col).
    pub fn unfolds(&self, w: usize) -> bool {
        self.conv.is_some_and(|g| !g.window.is_pointwise()) && self.kernels.f32(w == 1).is_some_and(|k| k.unfolding().is_some())
    }
    /// What a tile `ld` columns wide needs beside its values, for its kernel at that width:
    /// im2col columns (f32), or an int8 convolution's quantized image or row buffer, and the
    /// quantized input of an int8 layer. The executor's plans allocate it, the column planner
    /// counts it in working sets.
    pub fn scratch(&self, isa: Isa, ld: usize) -> Scratch {
        let cols_w = self.columns(ld);
        let quantized = q8::quantized_len(self.cols, cols_w);
        match (self.conv, self.kernels.int8_kernel(ld == 1)) {
            // A direct int8 convolution quantizes its input into a shifted image, a row at a time.
            (Some(g), Some(Int8Kernel::Direct(sc))) => Scratch { bytes: (sc.wp + 3) * ld, quantized: sc.image_len(&g, ld) },
            // Int8 convolutions of stride 1 along rows quantize their input into a padded image,
            // others of wide tiles into the image, then unfold bytes (`quantized_im2col`);
            // narrower ones unfold f32 columns and quantize those.
            (Some(g), Some(_)) if g.window.stride[1] == 1 => Scratch { bytes: q8conv::padded_len(&Geometry { w: ld, ..g }), quantized },
            (Some(g), Some(_)) if ld.is_multiple_of(16) => Scratch { bytes: g.channels * g.in_hw[0] * g.in_hw[1] * ld, quantized },
            (Some(_), Some(_)) => Scratch { bytes: 4 * self.cols * cols_w, quantized },
            (None, Some(_)) => Scratch { bytes: 0, quantized },
            (Some(_), None) if self.runs_direct(isa, ld) || self.unfolds(ld) => Scratch::default(),
            // A 1x1 convolution reads its image in place, except in row bands of a kernel with no
            // strided form: counted as im2col too.
            (Some(_), None) => Scratch { bytes: 4 * self.cols * cols_w, quantized: 0 },
            (None, None) => Scratch::default(),
        }
    }
    /// The Winograd weights where one sample runs Winograd's products (its one-sample kernel),
    /// which transform whole images.
    pub fn one_sample_winograd(&self) -> Option<&Winograd> {
        self.kernels.f32(true).and_then(F32Kernel::winograd)
    }
    /// Floats a Winograd convolution (the one-sample kernel) needs for its products on one
    /// sample (`ld == 1`) in up to `threads` parts (`winograd::conv_winograd`), else 0.
    pub fn winograd_scratch(&self, isa: Isa, ld: usize, threads: usize) -> usize {
        match (self.conv, self.one_sample_winograd()) {
            (Some(g), Some(wg)) if ld == 1 => (1..=threads.max(1)).map(|p| wg.scratch_len(isa, &g, p)).max().unwrap_or(0),
            _ => 0,
        }
    }
    /// Bytes of packed weights kept for execution.
    pub fn weight_bytes(&self) -> usize {
        self.kernels.weight_bytes() + 4 * self.bias.len()
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
                Exec::MatMul(m) | Exec::GroupConv { expand: Some(m), .. } => {
                    Some((m.useful_flops_per_column() * m.positions(), 2.0 * (m.rows * m.cols) as f64 * m.positions()))
                }
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
    /// Softmax over groups of `len` elements (the last axis), as `Op::Softmax`'s flags say.
    Softmax {
        len: usize,
        masked: bool,
        zero_nan: bool,
    },
    /// Rows of `table` (`width` values each) picked by the input's values.
    Embed {
        table: Vec<f32>,
        width: usize,
    },
    /// `columns`: down the columns of a `[scale.len(), positions * w]` tile (`Op::LayerNorm`).
    LayerNorm {
        scale: Vec<f32>,
        bias: Vec<f32>,
        epsilon: f32,
        columns: bool,
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
    /// Grouped convolution (`kernels::grouped`), dense weights `[out, in / groups, kh, kw]`.
    GroupConv {
        weight: Vec<f32>,
        bias: Vec<f32>,
        geometry: Geometry,
        groups: usize,
        relu: bool,
        /// As `MatMul::post`.
        post: Option<crate::graph::Unary>,
        /// A pointwise convolution fused before a depth-wise one (`fuse_expansions`): the layer's
        /// input is the pointwise convolution's, whose output channels are made a few at a time,
        /// each chunk convolved while it is in cache, never the whole expanded image.
        expand: Option<Box<MatMul>>,
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
        /// Where the map swaps two axes: one sample runs by whole runs or a transpose.
        swap: Option<crate::layout::Swap>,
        /// Where the map is long runs of a constant step (phase images): one sample runs by them.
        runs: Option<Vec<crate::layout::Run>>,
    },
    /// `kernels::elementwise::concat`'s `outer` and `blocks`.
    Concat {
        outer: usize,
        blocks: Vec<usize>,
    },
}

impl Exec {
    /// A gather by `sources`, knowing whether it swaps two axes or is made of long runs.
    fn gather(sources: Vec<u32>) -> Exec {
        let swap = crate::layout::Swap::of(&sources);
        let runs = crate::layout::Run::of(&sources);
        Exec::Gather { sources, swap, runs }
    }
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
                if let Some(PhaseLayer { gather, shape: phase_shape }) = phased {
                    // The phase images are a value of their own, made by a gather layer.
                    names.push(format!("{}.phases", node.output));
                    value_sizes.push(phase_shape.iter().product());
                    let (name, output) = (format!("{}.phases", node.name), names.len() - 1);
                    layers.push(Layer { name, kind: "phases", exec: gather, inputs, output, out_shape: phase_shape });
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
                Exec::gather(crate::layout::sources(&node.op, &in_shape).expect("a layout operator"))
            }
            Op::Softmax { masked, zero_nan } => {
                Exec::Softmax { len: *out_shape.last().expect("a shape has an axis"), masked: *masked, zero_nan: *zero_nan }
            }
            Op::Pick { sources, .. } => Exec::gather(sources.iter().map(|&s| s as u32).collect()),
            Op::Embed { table } => Exec::Embed { table: table.data.clone(), width: table.shape[1] },
            Op::LayerNorm { scale, bias, epsilon, columns } => {
                Exec::LayerNorm { scale: scale.clone(), bias: bias.clone(), epsilon: *epsilon, columns: *columns }
            }
            Op::BatchMatMul { swapped } => crate::sequence::batch_matmul(&in_shape, &shape_of(&node.inputs[1], i + 1), *swapped),
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
            // A quantize-dequantize pair left on its own runs as the function it fuses as.
            Op::QuantDequant { scale, zero } => Exec::Unary(Unary::FakeQuant(FakeQuant { scale: *scale, zero: *zero })),
            Op::GroupConv { weight, bias, window, groups, act } => Exec::GroupConv {
                weight: weight.data.clone(),
                bias: bias.clone(),
                geometry: geometry(&in_shape, &out_shape, *window),
                groups: *groups,
                relu: relu(act),
                post: None,
                expand: None,
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
    if options.fuse_expansions {
        fuse_expansions(&mut layers, output_value);
    }
    let output_shape =
        value_sizes.get(output_value).map(|_| shapes.iter().rev().find(|(n, _)| n == &graph.output).unwrap().1.clone()).unwrap();
    Ok(Model { input_shape: graph.input_shape.clone(), graph, layers, value_sizes, output_value, output_shape, options })
}

/// Fuses each residual addition into the linear layer or convolution that computes one of its
/// operands, where that layer's output has no other reader, nothing (no ReLU, no function)
/// follows the sums in the layer, and the other operand is ready before the layer runs (made by
/// an earlier layer, or the model input). The layer takes the other operand as its second input
/// (read at the output's rows, also in row bands: `schedule::band_rows`) and writes the
/// addition's output; the addition goes. An int8 layer takes the addition's fake quantization
/// too and adds the residual to its dequantized outputs part by part while they are in cache
/// (`exec::int8`): ResNet-50's QDQ file had spent about a tenth of its batch-1 run in 16 separate
/// additions (results/int8-residuals.md).
fn fuse_residuals(layers: &mut Vec<Layer>, output_value: usize) {
    let mut k = 0;
    while k < layers.len() {
        let Exec::Add { relu, fake_quant } = layers[k].exec else {
            k += 1;
            continue;
        };
        let producer = |v: usize| layers.iter().position(|l| l.output == v);
        let readers = |v: usize| layers.iter().filter(|l| l.inputs.contains(&v)).count();
        let fusable = |p: usize, other: usize| -> Option<usize> {
            let l = producer(p)?;
            let Exec::MatMul(m) = &layers[l].exec else { return None };
            let sums_plain = match m.int8() {
                Some(q) => !q.dequant.relu,
                None => fake_quant.is_none(),
            };
            let plain = sums_plain && m.post.is_none() && !m.relu && m.residual.is_none();
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
        m.residual = Some(Residual { relu, fake_quant });
        layer.kind = if m.conv.is_some() { "conv+add" } else { "linear+add" };
        layer.inputs.push(other);
        layer.output = add.output;
    }
}

/// Fuses each fp32 pointwise convolution (1x1, stride 1, no padding; no residual) into the
/// depth-wise convolution that is the only reader of its output: the depth-wise layer takes the
/// pointwise one's input and runs it chunk by chunk of channels (`Exec::GroupConv::expand`), so
/// that an inverted residual block's expanded image (4.8 MB in MobileNetV2's 112x112 stage) is
/// not written to memory and read back.
fn fuse_expansions(layers: &mut Vec<Layer>, output_value: usize) {
    let mut k = 0;
    while k < layers.len() {
        let depthwise = matches!(&layers[k].exec, Exec::GroupConv { geometry, groups, bias, expand: None, .. }
            if *groups == geometry.channels && bias.len() == geometry.channels);
        let Some(&input) = layers[k].inputs.first().filter(|_| depthwise) else {
            k += 1;
            continue;
        };
        let producer = layers.iter().position(|l| l.output == input);
        let readers = layers.iter().filter(|l| l.inputs.contains(&input)).count();
        let fusable = producer.filter(|&p| {
            let Exec::MatMul(m) = &layers[p].exec else { return false };
            m.conv.is_some_and(|g| g.window.is_pointwise()) && m.int8().is_none() && m.residual.is_none() && layers[p].inputs.len() == 1
        });
        let (true, Some(p), 1) = (input != output_value, fusable, readers) else {
            k += 1;
            continue;
        };
        let pointwise = layers.remove(p);
        let k_now = if p < k { k - 1 } else { k };
        let layer = &mut layers[k_now];
        let (Exec::MatMul(m), Exec::GroupConv { expand, .. }) = (pointwise.exec, &mut layer.exec) else { unreachable!("checked above") };
        *expand = Some(m);
        layer.inputs[0] = pointwise.inputs[0];
        layer.kind = "conv+group_conv";
        k = k_now + 1;
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
/// applies one to its outputs as it writes them (an int8 layer's dequantization, an addition, an
/// fp32 convolution as its fused function, as `fusable_unary` fuses others); false otherwise.
fn take_fake_quant(exec: &mut Exec, scale: f32, zero: u8) -> bool {
    let function = Some(Unary::FakeQuant(FakeQuant { scale, zero }));
    match exec {
        Exec::MatMul(m) => match m.kernels.int8_mut() {
            Some(q) => q.dequant.fake_quant = Some((scale, zero)),
            None if m.post.is_none() && m.conv.is_some() => m.post = function,
            None => return false,
        },
        Exec::GroupConv { post: post @ None, .. } => *post = function,
        Exec::Add { fake_quant, .. } => *fake_quant = Some((scale, zero)),
        _ => return false,
    }
    true
}

/// The layer that gathers a strided convolution's input into phase images (`conv_plan`), and
/// their per-sample shape.
struct PhaseLayer {
    gather: Exec,
    shape: Vec<usize>,
}

/// A convolution's packed weights, and for a strided one whose stride-1 form on its input's phase
/// images (`phases`) needs no im2col (the direct kernel, or a 1x1 convolution) and times faster
/// on one sample, gather included (timed as the executor runs it), that form's gather layer. The
/// dense policy (the baseline of `--compare dense`) keeps every layer as written.
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
) -> Result<(Option<PhaseLayer>, MatMul)> {
    let geometry_as_written = Some(geometry(in_shape, out_shape, *window));
    let wanted = o.policy == KernelPolicy::Auto && o.phases != Some(false);
    let Some(phased) = phases::rewrite(weight, window, in_shape, out_shape).filter(|_| wanted) else {
        return Ok((None, pack(name, weight, bias, relu, geometry_as_written, o)?));
    };
    // Where the phase form can run, the two forms compete on the kernels that read an image
    // whole: AMX tiles (on im2col columns) had ResNet-50's strided 1x1 convolutions and its stem
    // run up to 2x slower than the phase form they displaced, though faster timed alone.
    let without_tiles = Options { amx: Amx::Off, ..o.clone() };
    let m = pack(name, &phased.weight, bias, relu, Some(geometry(&phased.phase_shape, out_shape, phased.window)), &without_tiles)?;
    // On phase images without im2col: the direct kernel (fp32 or int8), Winograd's products
    // (YOLOv5s's 6x6/2 stem, a dense 3x3 on 12 phase channels), or a 1x1 convolution reading
    // the image.
    let reads_image = |one_sample: bool| matches!(m.kernel(one_sample), Kernel::Direct | Kernel::Int8Direct | Kernel::Winograd);
    if !((reads_image(false) && reads_image(true)) || phased.window.is_pointwise()) {
        return Ok((None, pack(name, weight, bias, relu, geometry_as_written, o)?));
    }
    let strided = pack(name, weight, bias, relu, geometry_as_written, &without_tiles)?;
    let phase_len = phased.sources.len();
    let gather = Exec::gather(phased.sources);
    if o.phases == Some(true) {
        return Ok((Some(PhaseLayer { gather, shape: phased.phase_shape }), m));
    }
    let team = crate::team::Team::new(1).map_err(|e| EngineError::graph(name, format!("starting a timing thread: {e}")))?;
    let x = test_values(in_shape.iter().product());
    let (mut phase_x, mut y) = (LineAligned::zeroed(phase_len), LineAligned::zeroed(out_shape.iter().product()));
    let positions = out_shape[1] * out_shape[2];
    let scratch_len = [strided.scratch(o.isa, 1).bytes, m.scratch(o.isa, 1).bytes].map(|b| b.div_ceil(4));
    let mut scratch = LineAligned::zeroed((strided.cols * positions).max(x.len().div_ceil(4)).max(scratch_len[0]).max(scratch_len[1]));
    let mut bytes = Int8Buffers::for_one_sample(&[&strided, &m], positions);
    let mut conv = |m: &MatMul, x: &[f32], y: &mut [f32], scratch: &mut [f32]| {
        let g = m.conv.expect("a convolution");
        match (m.int8(), m.kernels.int8_kernel(true)) {
            // As the executor runs one sample, on the one-sample kernel.
            (Some(q), Some(k)) => int8_conv_rows(o.isa, q, k, &g, x, 0..g.out_hw[0], y, scratch, &mut bytes, &team),
            _ => crate::exec::conv(o.isa, m, g, 1, x, None, y, scratch, &team),
        }
    };
    let times = best_times_in_turns(2, &mut |i| {
        if i == 0 {
            conv(&strided, &x, &mut y, &mut scratch)
        } else {
            crate::exec::run_layer(o.isa, &gather, &[&x], &mut phase_x, 1, &team);
            conv(&m, &phase_x, &mut y, &mut scratch)
        }
    });
    Ok(if times[1] < times[0] { (Some(PhaseLayer { gather, shape: phased.phase_shape }), m) } else { (None, strided) })
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
        let shifts: Vec<_> = layers.iter().filter_map(|m| m.conv.zip(m.kernels.shift())).collect();
        Int8Buffers {
            columns: vec![0; layers.iter().map(|m| q8::quantized_len(m.cols, positions)).max().unwrap_or(0)],
            row: vec![0; shifts.iter().map(|(_, sc)| sc.wp + 3).max().unwrap_or(0)],
            shifted: vec![0; shifts.iter().map(|(g, sc)| sc.image_len(g, 1)).max().unwrap_or(0)],
        }
    }
}

/// Output rows `rows` of an int8 convolution on one thread, as the executor computes them, for
/// timing: the direct kernel on its regrouped weights (`y` holds the whole output), else im2col,
/// quantization and the grouped kernel or AMX tiles (`y` holds the band; `scratch`: the f32
/// columns or the quantized image).
#[allow(clippy::too_many_arguments)] // the layer, its input and output, and the buffers
fn int8_conv_rows(
    isa: Isa,
    q: &Int8Layer,
    kernel: &Int8Kernel,
    g: &Geometry,
    x: &[f32],
    rows: std::ops::Range<usize>,
    y: &mut [f32],
    scratch: &mut [f32],
    bufs: &mut Int8Buffers,
    team: &crate::team::Team,
) {
    if let Int8Kernel::Direct(sc) = kernel {
        let source = q8direct::Source::F32 { x, scale: q.input_scale, zero: q.input_zero };
        q8direct::shift_image(isa, g, sc, source, rows.clone(), &mut bufs.row, &mut bufs.shifted);
        return q8direct::conv_q8_direct(isa, sc, &q.dequant, g, &bufs.shifted, q8direct::Out::F32(y), 0..q.matrix.rows, rows);
    }
    let cols_w = rows.len() * g.out_hw[1] * g.w;
    crate::exec::quantized_im2col(isa, q, g, x, rows, scratch, &mut bufs.columns, team);
    let out = q8::Output::F32(&mut y[..q.matrix.rows * cols_w]);
    match kernel {
        Int8Kernel::Tiles(t) => q8amx::matmul_into(t, &bufs.columns, cols_w, out, 0..q.matrix.rows, &q.dequant),
        _ => q8::spmm_q8_into(isa, &q.matrix, &bufs.columns, cols_w, out, 0..q.matrix.rows, &q.dequant),
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
    let layer = |kernels| MatMul { rows, cols, bias: bias.to_vec(), relu, kernels, sparsity, conv, post: None, residual: None };
    if let Some(q) = weight.quant.as_ref().filter(|_| o.policy != KernelPolicy::Dense) {
        if q.scales.len() != rows {
            return Err(EngineError::graph(name, format!("{} weight scales for {rows} rows", q.scales.len())));
        }
        return Ok(layer(int8_kernels(weight, q, bias, relu, conv, o)));
    }
    let shape = Timed { rows, cols, bias, relu };
    // A linear layer whose one sample runs the CSR kernel streams every index once per sample:
    // 16-bit copies of them (the CSR kernels on wider tiles share the weights and ignore them).
    let one_sample_sparse = match o.policy {
        KernelPolicy::Dense => false,
        KernelPolicy::Sparse => true,
        KernelPolicy::Auto => sparse_streams_less(&shape, &csr, o),
    };
    let csr = Arc::new(if conv.is_none() && one_sample_sparse { csr.with_narrow_columns() } else { csr });
    let dense_weights = Arc::new(data.to_vec());
    let dense = || F32Kernel::Dense(dense_weights.clone());
    let sparse = F32Kernel::Sparse(csr.clone());
    let (one_sample, batched) = match o.policy {
        KernelPolicy::Dense => (dense(), dense()),
        KernelPolicy::Sparse => (sparse.clone(), sparse),
        KernelPolicy::Auto => {
            let mut candidates = vec![dense(), sparse];
            // Column blocks where there are at least two of them; for batched tiles of a
            // convolution's image, also unfolding its panels itself (on one sample a row of a small
            // image is a few values, and every thread unfolds every panel of its rows, where
            // im2col splits over the threads: ResNet-50's 7x7 layers ran a quarter slower
            // unfolded at batch 1, on two threads, though one thread timed them faster). Where
            // one sample's im2col is large, only unfolding (`unfolds_always`).
            let column_blocks = (cols > kblocked::DEFAULT_KC).then(|| Arc::new(KBlocked::from_csr(&csr, kblocked::DEFAULT_KC)));
            let unfolds = conv.filter(|g| !g.window.is_pointwise());
            let always = unfolds.is_some_and(|g| unfolds_always(&g, cols));
            candidates.extend(column_blocks.clone().map(|k| if always { F32Kernel::Unfolding(k) } else { F32Kernel::ColumnBlocked(k) }));
            let unfolding = column_blocks.filter(|_| unfolds.is_some() && !always).map(F32Kernel::Unfolding);
            // Blocks of 4 rows are a candidate where the weights fill them well (block-pruned or
            // dense weights), with AVX2 or AVX-512: on batched tiles, and on one sample of a
            // convolution (its columns are the image's positions).
            let blocked = (o.isa >= Isa::Avx2).then(|| Bcsr::from_dense(data, rows, cols)).filter(|b| b.fill(csr.nnz()) <= 1.5);
            let blocked = blocked.map(|b| F32Kernel::Blocked(Arc::new(b)));
            let wide: Vec<F32Kernel> = candidates.iter().cloned().chain(unfolding).chain(blocked.clone()).collect();
            candidates.extend(blocked.filter(|_| conv.is_some()));
            let mut batched = choose(&shape, &wide, conv, o.tile, o);
            // The direct kernel's taps, decoded once where some tile may run it.
            let direct = conv
                .filter(|g| direct::vectorized(o.isa, o.tile) || direct::takes(o.isa, 1, g))
                .map(|g| (g, DirectWeights::kernel(csr.clone(), &g)));
            if let Some((g, d)) = direct.as_ref().filter(|_| direct::vectorized(o.isa, o.tile))
                && direct_is_faster(&shape, *g, d, &batched, o.tile, o)
            {
                batched = direct_with_others(d, batched);
            }
            // One sample runs the direct kernel where it takes one (AVX-512, stride 1 along rows)
            // and times faster on one sample, whatever wider tiles run: ResNet-50's 28x28 and
            // 14x14 3x3 layers run it about 15% faster than im2col on one sample and not on 16
            // (BERT's row-wise layers, a 1x128 image each, ran it at 39 GFLOP/s where the CSR
            // kernel on the image ran at 116).
            let one = choose(&shape, &candidates, conv, 1, o);
            let one = match direct {
                Some((g, d)) if direct::takes(o.isa, 1, &g) && direct_is_faster(&shape, g, &d, &one, 1, o) => direct_with_others(&d, one),
                _ => one,
            };
            // A dense 3x3 convolution at stride 1: Winograd's products where they time faster.
            let one = match conv.filter(|g| winograd_may_win(o.isa, g, rows, sparsity)) {
                Some(g) => {
                    let wg = F32Kernel::Winograd(Arc::new(Winograd::new(data, rows, g.channels)), dense_weights.clone());
                    if winograd_is_faster(&shape, g, &wg, &one, o) { wg } else { one }
                }
                None => one,
            };
            (one, batched)
        }
    };
    Ok(layer(Kernels::F32 { one_sample, batched }))
}

/// The direct kernel `direct` with `others`, the kernel it beat, for the tiles it does not take.
fn direct_with_others(direct: &F32Kernel, others: F32Kernel) -> F32Kernel {
    let F32Kernel::Direct(d) = direct else { unreachable!("a direct kernel") };
    d.with_others(others)
}

/// One sample's im2col above which a convolution's column-blocked kernel always unfolds its
/// panels from the image itself: the compiler times a band of rows, whose im2col stays in cache,
/// where the executor makes the whole image's, and YOLOv5s's 3x3 layers spent longer on their
/// whole-image im2col than on the product (five times as long in about one process in four;
/// results/unfold-large.md). ResNet-50's 14x14 and 7x7 layers (1.8 and 0.9 MB) stay faster on
/// im2col split over the threads.
const UNFOLD_ALWAYS_BYTES: usize = 2 << 20;

/// Whether a convolution of `cols` unfolded rows per output position makes more than
/// `UNFOLD_ALWAYS_BYTES` of im2col for one sample.
fn unfolds_always(g: &Geometry, cols: usize) -> bool {
    unfolded_bytes(g, cols) > UNFOLD_ALWAYS_BYTES
}

/// Bytes of one sample's im2col (f32) for a convolution of `cols` unfolded rows per position.
fn unfolded_bytes(g: &Geometry, cols: usize) -> usize {
    cols.saturating_mul(g.out_hw[0]).saturating_mul(g.out_hw[1]).saturating_mul(4)
}

/// One sample's quantized im2col (bytes) above which an int8 convolution's batched tiles run no
/// kernel on unfolded columns where the direct kernel applies, and no width runs AMX tiles. The
/// timings run a band of output rows whose columns stay in cache, where the executor unfolds
/// whole images of a tile's samples and streams them from memory: at batch 16 ResNet-50's 56x56
/// and 28x28 3x3 layers (1.8 and 0.9 MB a sample) ran 1.8-2x slower on the grouped kernel than on
/// the direct one, and its 56x56 layers 20-130% slower on tiles than on the sparse kernels, each
/// after timing faster; its 14x14 and 7x7 layers (up to 451 KB) ran up to 1.9x faster on tiles.
const UNFOLD_TIMED_BYTES: usize = 512 << 10;

/// A quantized layer's kernels. A convolution's one-sample and batched tiles each run the fastest
/// of the grouped kernel on quantized im2col columns, the int8 direct kernel (where its weights
/// regroup for it) and the dense AMX tiles on the same columns (where the CPU has them), timed at
/// that width under the auto policy; under the sparse policy the direct kernel where it applies,
/// else the grouped one. A linear layer's batched tiles run on AMX tiles where they time faster
/// (or `ENGINE_AMX=on`), its single samples on the grouped kernel.
fn int8_kernels(weight: &Weight, q: &Quant, bias: &[f32], relu: bool, conv: Option<Geometry>, o: &Options) -> Kernels {
    let (rows, cols) = (weight.rows(), weight.cols());
    let values = weight.int8().expect("quantized weight");
    let int8 = int8_layer(weight, &values, q, bias, relu);
    let auto = o.policy == KernelPolicy::Auto;
    let tiles = (auto && o.amx != Amx::Off && q8amx::available(o.isa)).then(|| Arc::new(TileMatrix::from_int8(&values, rows, cols)));
    let Some(g) = conv else {
        let batched = match tiles {
            Some(t) if o.amx == Amx::Always || tiles_are_faster(&int8, &t, o) => Int8Kernel::Tiles(t),
            _ => Int8Kernel::Grouped,
        };
        return Kernels::Int8 { layer: Box::new(int8), one_sample: Int8Kernel::Grouped, batched };
    };
    let shift = Some(g)
        .filter(|_| q8direct::available(o.isa))
        .and_then(|g| ShiftConv::new(&values, rows, &g))
        .filter(|s| s.worthwhile(int8.matrix.stored_groups()))
        .map(Arc::new);
    let in_cache = unfolded_bytes(&g, cols) / 4 <= UNFOLD_TIMED_BYTES;
    // A 1x1 convolution over whole images reads its quantized image as its columns.
    let streams_columns = !in_cache && !g.window.is_pointwise();
    let direct = shift.map(Int8Kernel::Direct);
    let candidates: Vec<Int8Kernel> =
        [Some(Int8Kernel::Grouped), direct.clone(), tiles.filter(|_| in_cache).map(Int8Kernel::Tiles)].into_iter().flatten().collect();
    let choose = |tile: usize| match (candidates.last(), &direct) {
        (Some(tiles @ Int8Kernel::Tiles(_)), _) if o.amx == Amx::Always => tiles.clone(),
        (_, Some(direct)) if !auto || (tile > 1 && streams_columns) => direct.clone(),
        _ if auto && candidates.len() > 1 => candidates[fastest_int8_conv(&int8, &candidates, g, tile, o)].clone(),
        _ => Int8Kernel::Grouped,
    };
    let (one_sample, batched) = (choose(1), choose(o.tile));
    Kernels::Int8 { layer: Box::new(int8), one_sample, batched }
}

/// What the kernel timings need of a layer: its shape, bias and activation.
struct Timed<'a> {
    rows: usize,
    cols: usize,
    bias: &'a [f32],
    relu: bool,
}

/// Whether the CSR weights stream fewer bytes than dense ones (with `dense_bias` in dense's
/// favour): the cost of one sample, which reads every weight once (a timing loop would keep the
/// weights in cache and favour dense wrongly on large layers).
fn sparse_streams_less(m: &Timed, csr: &Csr, o: &Options) -> bool {
    let sparse_bytes = csr.nnz() * 8 + 4 * (m.rows + 1);
    (sparse_bytes as f64) < (4 * m.rows * m.cols) as f64 * (1.0 - o.dense_bias)
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
fn timing_columns(m: &Timed, w: usize) -> usize {
    let by_work = (TIMING_MACS / (m.rows * m.cols).max(1)).max(MIN_TIMING_COLUMNS);
    w.min(TIMING_BYTES / (4 * m.cols.max(1))).min(by_work).max(1)
}

/// Times the `candidates` (dense first, then CSR, then others) on tiles of `tile` samples
/// (single thread), as the layer runs: a `[cols, w]` input, or a convolution's band of output
/// rows (`ConvBand`, which charges im2col to the kernels that need it); returns the fastest,
/// with `dense_bias` in dense's favour. On one column, by the bytes streamed
/// (`sparse_streams_less`).
fn choose(m: &Timed, candidates: &[F32Kernel], conv: Option<Geometry>, tile: usize, o: &Options) -> F32Kernel {
    let [dense, sparse, others @ ..] = candidates else { unreachable!("dense and CSR are always candidates") };
    let positions = conv.map_or(1, |g| g.out_hw[0] * g.out_hw[1]);
    let w = timing_columns(m, positions * tile);
    if w == 1 {
        let csr = sparse.csr().expect("the CSR candidate");
        return if sparse_streams_less(m, csr, o) { sparse.clone() } else { dense.clone() };
    }
    let mut run: Box<dyn FnMut(&F32Kernel)> = match conv.filter(|g| !g.window.is_pointwise()) {
        Some(g) => {
            let (band, mut out) = ConvBand::new(m, g, tile);
            Box::new(move |k| band.run(m, k, o, &mut out))
        }
        None => {
            let x = test_values(m.cols * w);
            let mut y = LineAligned::zeroed(m.rows * w);
            let sums = spmm::Sums::new(spmm::Ld::packed(w), m.relu);
            Box::new(move |k| k.run_rows(o.isa, m.bias, m.cols, &x, w, &mut y, 0..m.rows, sums))
        }
    };
    let times = best_times_in_turns(candidates.len(), &mut |i| run(&candidates[i]));
    let t_dense = times[0];
    let mut best = (times[1], sparse);
    for (k, &t) in others.iter().zip(&times[2..]) {
        if t < best.0 {
            best = (t, k);
        }
    }
    if best.0 < t_dense * (1.0 - o.dense_bias) { best.1.clone() } else { dense.clone() }
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
/// Starting on a cache line, as every region of a session's arena does.
fn test_values(n: usize) -> LineAligned {
    LineAligned::from_fn(n, |i| ((i * 7919) % 13) as f32 * 0.1 - 0.6)
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

/// The best times of up to 15 runs of each of `n` candidates (`run(i)` runs candidate `i`), in
/// turns after one warm-up each, stopping after 50 ms per candidate: a slow phase of the machine
/// hits them all, where timing one and then the next had flipped ResNet-50's choices between
/// compiles.
fn best_times_in_turns(n: usize, run: &mut dyn FnMut(usize)) -> Vec<f64> {
    (0..n).for_each(&mut *run);
    let (mut best, mut spent) = (vec![f64::MAX; n], 0.0);
    for _ in 0..15 {
        for (i, best) in best.iter_mut().enumerate() {
            let t = elapsed(&mut || run(i));
            (*best, spent) = (best.min(t), spent + t);
        }
        if spent > 0.05 * n as f64 {
            break;
        }
    }
    best
}

/// Seconds one run of `f` takes.
fn elapsed(f: &mut dyn FnMut()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

/// Which of an int8 convolution's `candidates` runs fastest on one tile of `tile` samples
/// (single thread), as the executor runs each (im2col and quantization are part of the cost the
/// direct kernel saves), on a band of output rows from the middle of the image where the whole is
/// more than the timing budget, as `direct_is_faster` does.
fn fastest_int8_conv(q: &Int8Layer, candidates: &[Int8Kernel], g: Geometry, tile: usize, o: &Options) -> usize {
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
    let mut scratch = vec![0.0f32; (cols * cols_w).max(x.len().div_ceil(4)).max(q8conv::padded_len(&g).div_ceil(4))];
    let shift = candidates.iter().find_map(|k| match k {
        Int8Kernel::Direct(sc) => Some(sc),
        _ => None,
    });
    let mut bufs = Int8Buffers {
        columns: vec![0; q8::quantized_len(cols, cols_w)],
        row: vec![0; shift.map_or(0, |sc| (sc.wp + 3) * tile)],
        shifted: vec![0; shift.map_or(0, |sc| sc.image_len(&g, tile))],
    };
    let mut y = vec![0.0f32; rows * oh * ow * tile];
    // A team of one spawns no thread, so this does not fail.
    let Ok(team) = crate::team::Team::new(1) else { return 0 };
    let mut run = |i: usize| int8_conv_rows(o.isa, q, &candidates[i], &g, &x, out_rows.clone(), &mut y, &mut scratch, &mut bufs, &team);
    // A warm-up, then three runs in turns, so that a slow phase of the machine hits all: the
    // kernels differ by 2-5x where it matters (ResNet-50's int8 layers took 4 s to compile at
    // best_time's 15 runs each), and the tile unit runs slowly for a while after it starts.
    let mut best = vec![f64::MAX; candidates.len()];
    (0..candidates.len()).for_each(&mut run);
    for _ in 0..3 {
        for (i, t) in best.iter_mut().enumerate() {
            *t = t.min(elapsed(&mut || run(i)));
        }
    }
    (0..best.len()).min_by(|&a, &b| best[a].total_cmp(&best[b])).unwrap_or(0)
}

/// Times a convolution's direct kernel (`direct`) against the `other` kernel as it runs
/// (`ConvBand`: im2col's copy is part of the cost the direct kernel saves) on one tile of `tile`
/// samples (single thread).
fn direct_is_faster(m: &Timed, g: Geometry, direct: &F32Kernel, other: &F32Kernel, tile: usize, o: &Options) -> bool {
    let (band, mut out) = ConvBand::new(m, g, tile);
    let taps = direct.taps().expect("the direct kernel's taps");
    let mut y_direct = LineAligned::zeroed(out.y.len());
    let mut direct = || band.run_direct(m, taps, o, &mut y_direct);
    let times = best_times_in_turns(2, &mut |i| if i == 0 { band.run(m, other, o, &mut out) } else { direct() });
    times[1] < times[0]
}

/// Sparsity above which Winograd's products (dense, 16 per 36 of a direct convolution's
/// multiply-adds) are not timed against the sparse kernels: a 3x3 layer pruned 70% has fewer
/// non-zeros than they do multiply-adds.
const WINOGRAD_MAX_SPARSITY: f64 = 0.6;

/// Transformed weights (floats) above which Winograd is not a candidate: they bound what a file
/// can make the compiler allocate (ResNet's and VGG's largest 3x3 layers, 512 channels to 512,
/// transform to 4M).
const WINOGRAD_MAX_WEIGHTS: usize = 1 << 26;

/// Whether Winograd's F(2x2, 3x3) is a candidate for a convolution's one-sample tiles of `rows`
/// output channels: it applies (`winograd::applies`), AVX-512 (its products' only vectorised
/// form), weights dense enough and not too many.
fn winograd_may_win(isa: Isa, g: &Geometry, rows: usize, sparsity: f64) -> bool {
    let transformed = 16usize.saturating_mul(rows.next_multiple_of(8)).saturating_mul(g.channels);
    isa == Isa::Avx512 && winograd::applies(g) && sparsity <= WINOGRAD_MAX_SPARSITY && transformed <= WINOGRAD_MAX_WEIGHTS
}

/// Times a convolution's Winograd kernel against the `other` kernel chosen for one sample, as
/// each runs, per output row (single thread): `other` on `ConvBand`'s band of rows, Winograd on
/// an image of as many rows (whole tile rows) with the same padding, cut from the layer's.
fn winograd_is_faster(m: &Timed, g: Geometry, winograd: &F32Kernel, other: &F32Kernel, o: &Options) -> bool {
    let wg = winograd.winograd().expect("Winograd's weights");
    let (band, mut out) = ConvBand::new(m, g, 1);
    let rows = band.rows.len().next_multiple_of(2);
    let [top, bottom] = [g.window.pads[0], g.window.pads[2]];
    let cut = match (rows + 2).checked_sub(top + bottom) {
        Some(in_rows) if in_rows > 0 && rows < g.out_hw[0] => Geometry { in_hw: [in_rows, g.in_hw[1]], out_hw: [rows, g.out_hw[1]], ..g },
        _ => g,
    };
    let share = band.rows.len() as f64 / cut.out_hw[0] as f64;
    let x = test_values(cut.channels * cut.in_hw[0] * cut.in_hw[1]);
    let mut y = LineAligned::zeroed(m.rows * cut.out_hw[0] * cut.out_hw[1]);
    let mut scratch = LineAligned::zeroed(wg.scratch_len(o.isa, &cut, 1));
    let mut run_other = || match other.taps() {
        Some(taps) => band.run_direct(m, taps, o, &mut out.y),
        None => band.run(m, other, o, &mut out),
    };
    let mut run_winograd = || {
        winograd::conv_winograd(o.isa, wg, m.bias, &cut, &x, None, &mut y, m.relu, &mut scratch, 1, |job| job(0));
    };
    let times = best_times_in_turns(2, &mut |i| if i == 0 { run_other() } else { run_winograd() });
    times[1] * share < times[0]
}

/// A band of output rows of a convolution on one tile, to time its kernels as the executor runs
/// them: im2col, then the kernel; the column-blocked kernel unfolding the image itself; a 1x1
/// convolution reading the image as its im2col (in row bands, in place: the band's columns are
/// timed as the first `cols_w` of each channel, with no copy; charging one had the one-sample
/// direct kernel picked for ResNet-50's 256-to-128 1x1 layer, where it then ran at half the CSR
/// kernel's speed).
struct ConvBand {
    /// The window on the tile timed.
    image: Geometry,
    rows: std::ops::Range<usize>,
    x: LineAligned,
}

/// What a timed run of a `ConvBand` writes: im2col columns and the output.
struct ConvOut {
    cols: LineAligned,
    y: LineAligned,
}

impl ConvBand {
    /// The whole image, or a band of output rows from its middle (`timing_columns`); where one
    /// row of the tile is more than that (a row-wise linear layer's 128 positions), a narrower
    /// tile.
    fn new(m: &Timed, g: Geometry, tile: usize) -> (ConvBand, ConvOut) {
        let [oh, ow] = g.out_hw;
        let budget = timing_columns(m, oh * ow * tile);
        let tile = if ow * tile > budget { (budget / ow.max(1)).next_multiple_of(16).min(tile) } else { tile };
        let image = Geometry { w: tile, ..g };
        let band = (budget / (ow * tile).max(1)).clamp(1, oh);
        let rows = (oh - band) / 2..(oh - band) / 2 + band;
        let cols_w = band * ow * tile;
        let x = test_values(g.channels * g.in_hw[0] * g.in_hw[1] * tile);
        let cols = LineAligned::zeroed(if g.window.is_pointwise() { 0 } else { m.cols * cols_w });
        (ConvBand { image, rows, x }, ConvOut { cols, y: LineAligned::zeroed(m.rows * oh * ow * tile) })
    }

    /// The direct kernel on the band, from the image (no im2col), into `y`.
    fn run_direct(&self, m: &Timed, taps: &direct::Taps, o: &Options, y: &mut [f32]) {
        direct::conv_direct_decoded(o.isa, taps, m.bias, &self.image, &self.x, y, 0..m.rows, self.rows.clone(), m.relu, None)
    }

    fn run(&self, m: &Timed, k: &F32Kernel, o: &Options, out: &mut ConvOut) {
        let (ConvBand { image, rows, x }, ConvOut { cols, y }) = (self, out);
        let cols_w = rows.len() * image.out_hw[1] * image.w;
        let sums = spmm::Sums::new(spmm::Ld::packed(cols_w), m.relu);
        if image.window.is_pointwise() {
            return k.run_rows(o.isa, m.bias, m.cols, x, cols_w, y, 0..m.rows, sums);
        }
        if let Some(blocked) = k.unfolding() {
            let unfold = Unfold::new(image, x, rows.clone());
            return kblocked::spmm_kblocked_unfolded(o.isa, blocked, m.bias, &unfold, y, 0..m.rows, sums);
        }
        window::im2col_rows(image, x, rows.clone(), cols);
        k.run_rows(o.isa, m.bias, m.cols, cols, cols_w, y, 0..m.rows, sums)
    }
}

#[cfg(test)]
mod tests {
    use super::best_times_in_turns;

    /// Candidates run in turns (after one warm-up each), as often as each other, within the
    /// budget, and a slower candidate's best time is the larger.
    #[test]
    fn candidates_are_timed_in_turns() {
        let mut order = Vec::new();
        let times = best_times_in_turns(3, &mut |i| {
            order.push(i);
            if i == 1 {
                let start = std::time::Instant::now();
                while start.elapsed().as_secs_f64() < 0.002 {}
            }
        });
        assert_eq!(times.len(), 3);
        assert!(order.len() >= 6 && order.len() % 3 == 0, "{order:?}");
        assert!(order.iter().enumerate().all(|(k, &i)| i == k % 3), "not in turns: {order:?}");
        // 15 rounds at most, and candidate 1's 2 ms a run stop them once 150 ms are spent.
        assert!(order.len() <= 3 * 16, "{}", order.len());
        assert!(times[1] >= 0.002 && times[0] < times[1] && times[2] < times[1], "{times:?}");
    }
}
