//! The engine's native model file (see `engine/FORMAT.md`): a safetensors container whose
//! metadata holds the format name, its version and the graph as JSON, and whose tensors hold the
//! weights, each linear or convolution weight either dense or in CSR (values, column indices,
//! row offsets), whichever is smaller, so the file shrinks with sparsity.
//!
//! Loading trusts nothing: safetensors checks every offset and length against the file, and this
//! module checks dtypes, shapes, CSR offsets and indices before building the graph.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};
use crate::graph::{
    Activation, BinaryKind, Graph, MAX_WEIGHT_ELEMENTS, Node, Op, Operand, Ports, Quant, Unary, Weight, Window, checked_numel,
};

/// Value of the `format` metadata key.
pub const FORMAT_NAME: &str = "sparsify-engine";

/// Current version, the `format_version` metadata key. Readers reject other versions.
pub const FORMAT_VERSION: u32 = 1;

/// How a weight tensor is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// `NAME`: f32, the weight's full shape.
    Dense,
    /// `NAME.values` f32 `[nnz]`, `NAME.col_indices` u16 or u32 `[nnz]`, `NAME.row_offsets` u32
    /// `[rows + 1]`; rows are the first dimension, columns the rest flattened.
    Csr,
    /// Quantized weights only. `NAME`: i8, the weight's full shape.
    Int8,
    /// Quantized weights only. `NAME.values` i8 `[n]`, `NAME.col_gaps` u8 `[n]`, `NAME.row_offsets`
    /// u32 `[rows + 1]`: each entry's column is the previous entry's column (0 before a row's
    /// first entry) plus its gap; a gap longer than 255 is bridged with zero-valued entries.
    CsrInt8,
}

/// How a weight is quantized (see `graph::Quant`); the scales are a tensor, f32 `[rows]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuantRef {
    scales: String,
    input_scale: f32,
    input_zero: u8,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightRef {
    tensor: String,
    shape: Vec<usize>,
    encoding: Encoding,
    /// Always `out_in`: output dimension first, then input (and kernel) dimensions.
    layout: String,
    /// Present for int8 weights (encodings `int8` and `csr_int8`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    quant: Option<QuantRef>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum FileOp {
    Linear {
        weight: WeightRef,
        bias: String,
        act: Activation,
    },
    Conv {
        weight: WeightRef,
        bias: String,
        window: Window,
        act: Activation,
    },
    Affine {
        scale: String,
        shift: String,
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
    Add {
        act: Activation,
    },
    Flatten,
    /// `masked`, `zero_nan`: absent where false.
    Softmax {
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        masked: bool,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        zero_nan: bool,
    },
    QuantDequant {
        scale: f32,
        zero: u8,
    },
    GroupConv {
        weight: WeightRef,
        bias: String,
        window: Window,
        groups: usize,
        act: Activation,
    },
    Unary {
        unary: Unary,
    },
    /// The constant operand's values are the tensor `constant`, its shape `constant_shape`.
    Binary {
        kind: BinaryKind,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        constant: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        constant_shape: Option<Vec<usize>>,
        #[serde(default)]
        constant_first: bool,
    },
    Concat {
        axis: usize,
    },
    Reshape {
        shape: Vec<usize>,
    },
    Transpose {
        perm: Vec<usize>,
    },
    Select {
        indices: Vec<Vec<usize>>,
    },
    /// `sources`: u32 `[n]`.
    Pick {
        shape: Vec<usize>,
        sources: String,
    },
    /// `table`: a dense weight `[rows, width]`.
    Embed {
        table: WeightRef,
    },
    /// `columns`: absent where false.
    LayerNorm {
        scale: String,
        bias: String,
        epsilon: f32,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        columns: bool,
    },
    /// `swap_a`, `swap_b`, `swap_y`: `Swapped` (absent where false).
    BatchMatMul {
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        swap_a: bool,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        swap_b: bool,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        swap_y: bool,
    },
    /// Each constant operand's values are a tensor, its shape beside it.
    Where {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        x: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        x_shape: Option<Vec<usize>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        y: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        y_shape: Option<Vec<usize>>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct FileNode {
    name: String,
    inputs: Vec<String>,
    output: String,
    op: FileOp,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileGraph {
    input: String,
    input_shape: Vec<usize>,
    output: String,
    nodes: Vec<FileNode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ports: Option<Ports>,
}

/// Tensors being written: name, dtype, shape, little-endian bytes.
struct Tensors(Vec<(String, Dtype, Vec<usize>, Vec<u8>)>);

impl Tensors {
    fn f32(&mut self, name: String, shape: Vec<usize>, v: &[f32]) -> String {
        self.bytes(name, Dtype::F32, shape, v.iter().flat_map(|x| x.to_le_bytes()).collect())
    }
    fn bytes(&mut self, name: String, dtype: Dtype, shape: Vec<usize>, bytes: Vec<u8>) -> String {
        self.0.push((name.clone(), dtype, shape, bytes));
        name
    }

    /// `NAME` as raw bytes `[n]`, or `NAME_deflate` (raw deflate) when that is smaller.
    fn maybe_deflated(&mut self, name: String, dtype: Dtype, bytes: Vec<u8>) {
        let deflated = deflate(&bytes);
        if deflated.len() < bytes.len() {
            self.bytes(format!("{name}_deflate"), Dtype::U8, vec![deflated.len()], deflated);
        } else {
            self.bytes(name, dtype, vec![bytes.len()], bytes);
        }
    }

    /// An int8 weight, dense or in gap-coded CSR, whichever is smaller.
    fn weight_int8(&mut self, name: &str, w: &Weight, q: &Quant) -> WeightRef {
        let (rows, cols) = (w.rows(), w.cols().max(1));
        let values = w.int8().expect("quantized weight");
        let tensor = format!("{name}.weight");
        let (mut entries, mut gaps, mut offsets) = (Vec::new(), Vec::new(), vec![0u32]);
        for row in values.chunks(cols) {
            let mut at = 0usize;
            for (c, &v) in row.iter().enumerate().filter(|(_, v)| **v != 0) {
                while c - at > 255 {
                    at += 255;
                    entries.push(0i8);
                    gaps.push(255u8);
                }
                gaps.push((c - at) as u8);
                entries.push(v);
                at = c;
            }
            offsets.push(entries.len() as u32);
        }
        let quant = Some(QuantRef {
            scales: self.f32(format!("{tensor}.scales"), vec![rows], &q.scales),
            input_scale: q.input_scale,
            input_zero: q.input_zero,
        });
        let as_bytes = |v: &[i8]| v.iter().map(|&b| b as u8).collect::<Vec<u8>>();
        if 2 * entries.len() + 4 * (rows + 1) >= values.len() {
            self.bytes(tensor.clone(), Dtype::I8, w.shape.clone(), as_bytes(&values));
            return WeightRef { tensor, shape: w.shape.clone(), encoding: Encoding::Int8, layout: "out_in".into(), quant };
        }
        let n = entries.len();
        // Gaps are small numbers with a skewed distribution: deflate stores them in about 5 bits
        // (the relative-index coding of Han et al.'s Deep Compression); values gain a little.
        self.maybe_deflated(format!("{tensor}.values"), Dtype::I8, as_bytes(&entries));
        self.maybe_deflated(format!("{tensor}.col_gaps"), Dtype::U8, gaps);
        debug_assert_eq!(n, entries.len());
        self.bytes(format!("{tensor}.row_offsets"), Dtype::U32, vec![rows + 1], offsets.iter().flat_map(|o| o.to_le_bytes()).collect());
        WeightRef { tensor, shape: w.shape.clone(), encoding: Encoding::CsrInt8, layout: "out_in".into(), quant }
    }

    fn weight(&mut self, name: &str, w: &Weight) -> WeightRef {
        if let Some(q) = &w.quant {
            return self.weight_int8(name, w, q);
        }
        let (rows, cols) = (w.rows(), w.cols());
        let nnz = w.data.iter().filter(|&&v| v != 0.0).count();
        let wide = cols > u16::MAX as usize + 1;
        let csr_bytes = nnz * if wide { 8 } else { 6 } + 4 * (rows + 1);
        let tensor = format!("{name}.weight");
        if csr_bytes >= 4 * w.data.len() {
            self.f32(tensor.clone(), w.shape.clone(), &w.data);
            return WeightRef { tensor, shape: w.shape.clone(), encoding: Encoding::Dense, layout: "out_in".into(), quant: None };
        }
        let (mut values, mut cols_idx, mut offsets) = (Vec::with_capacity(nnz), Vec::with_capacity(nnz), vec![0u32]);
        for row in w.data.chunks(cols.max(1)).take(rows) {
            for (c, &v) in row.iter().enumerate().filter(|(_, v)| **v != 0.0) {
                values.push(v);
                cols_idx.push(c as u32);
            }
            offsets.push(values.len() as u32);
        }
        self.f32(format!("{tensor}.values"), vec![nnz], &values);
        let (dtype, bytes): (Dtype, Vec<u8>) = if wide {
            (Dtype::U32, cols_idx.iter().flat_map(|c| c.to_le_bytes()).collect())
        } else {
            (Dtype::U16, cols_idx.iter().flat_map(|&c| (c as u16).to_le_bytes()).collect())
        };
        self.0.push((format!("{tensor}.col_indices"), dtype, vec![nnz], bytes));
        self.0.push((format!("{tensor}.row_offsets"), Dtype::U32, vec![rows + 1], offsets.iter().flat_map(|o| o.to_le_bytes()).collect()));
        WeightRef { tensor, shape: w.shape.clone(), encoding: Encoding::Csr, layout: "out_in".into(), quant: None }
    }
}

fn deflate(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut e, bytes).expect("writing to memory");
    e.finish().expect("writing to memory")
}

/// Serialises a graph into the native format.
pub fn to_bytes(graph: &Graph) -> Result<Vec<u8>> {
    let mut t = Tensors(Vec::new());
    let mut nodes = Vec::new();
    for n in &graph.nodes {
        let name = &n.name;
        let op = match &n.op {
            Op::Linear { weight, bias, act } => {
                FileOp::Linear { weight: t.weight(name, weight), bias: t.f32(format!("{name}.bias"), vec![bias.len()], bias), act: *act }
            }
            Op::Conv { weight, bias, window, act } => FileOp::Conv {
                weight: t.weight(name, weight),
                bias: t.f32(format!("{name}.bias"), vec![bias.len()], bias),
                window: *window,
                act: *act,
            },
            Op::Affine { scale, shift, act } => FileOp::Affine {
                scale: t.f32(format!("{name}.scale"), vec![scale.len()], scale),
                shift: t.f32(format!("{name}.shift"), vec![shift.len()], shift),
                act: *act,
            },
            Op::Relu => FileOp::Relu,
            Op::MaxPool { window } => FileOp::MaxPool { window: *window },
            Op::AvgPool { window, count_include_pad } => FileOp::AvgPool { window: *window, count_include_pad: *count_include_pad },
            Op::GlobalAvgPool => FileOp::GlobalAvgPool,
            Op::Add { act } => FileOp::Add { act: *act },
            Op::Flatten => FileOp::Flatten,
            Op::Softmax { masked, zero_nan } => FileOp::Softmax { masked: *masked, zero_nan: *zero_nan },
            Op::QuantDequant { scale, zero } => FileOp::QuantDequant { scale: *scale, zero: *zero },
            Op::GroupConv { weight, bias, window, groups, act } => FileOp::GroupConv {
                weight: t.weight(name, weight),
                bias: t.f32(format!("{name}.bias"), vec![bias.len()], bias),
                window: *window,
                groups: *groups,
                act: *act,
            },
            Op::Unary(unary) => FileOp::Unary { unary: *unary },
            Op::Binary { kind, constant, constant_first } => FileOp::Binary {
                kind: *kind,
                constant: constant.as_ref().map(|c| t.f32(format!("{name}.constant"), vec![c.values.len()], &c.values)),
                constant_shape: constant.as_ref().map(|c| c.shape.clone()),
                constant_first: *constant_first,
            },
            Op::Concat { axis } => FileOp::Concat { axis: *axis },
            Op::Reshape { shape } => FileOp::Reshape { shape: shape.clone() },
            Op::Transpose { perm } => FileOp::Transpose { perm: perm.clone() },
            Op::Select { indices } => FileOp::Select { indices: indices.clone() },
            Op::Pick { shape, sources } => {
                let bytes = sources.iter().flat_map(|&s| (s as u32).to_le_bytes()).collect();
                FileOp::Pick { shape: shape.clone(), sources: t.bytes(format!("{name}.sources"), Dtype::U32, vec![sources.len()], bytes) }
            }
            Op::Embed { table } => FileOp::Embed { table: t.weight(name, &Weight { quant: None, ..table.clone() }) },
            Op::LayerNorm { scale, bias, epsilon, columns } => FileOp::LayerNorm {
                scale: t.f32(format!("{name}.scale"), vec![scale.len()], scale),
                bias: t.f32(format!("{name}.bias"), vec![bias.len()], bias),
                epsilon: *epsilon,
                columns: *columns,
            },
            Op::BatchMatMul { swapped } => FileOp::BatchMatMul { swap_a: swapped.a, swap_b: swapped.b, swap_y: swapped.y },
            Op::Where { x, y } => {
                let mut operand = |c: &Option<Operand>, which: &str| {
                    c.as_ref().map(|c| (t.f32(format!("{name}.{which}"), vec![c.values.len()], &c.values), c.shape.clone())).unzip()
                };
                let ((x, x_shape), (y, y_shape)) = (operand(x, "x"), operand(y, "y"));
                FileOp::Where { x, x_shape, y, y_shape }
            }
        };
        nodes.push(FileNode { name: name.clone(), inputs: n.inputs.clone(), output: n.output.clone(), op });
    }
    let fg = FileGraph {
        input: graph.input.clone(),
        input_shape: graph.input_shape.clone(),
        output: graph.output.clone(),
        nodes,
        ports: graph.ports.clone(),
    };
    let meta: HashMap<String, String> = [
        ("format".to_string(), FORMAT_NAME.to_string()),
        ("format_version".to_string(), FORMAT_VERSION.to_string()),
        ("graph".to_string(), serde_json::to_string(&fg).expect("graph serialises")),
    ]
    .into();
    let views: Vec<(String, TensorView)> =
        t.0.iter()
            .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).expect("sizes are consistent by construction")))
            .collect();
    safetensors::serialize(views, &Some(meta)).map_err(|e| EngineError::Format { path: "<memory>".into(), reason: e.to_string() })
}

/// Writes a graph to `path` atomically (temporary file, then rename).
pub fn save(graph: &Graph, path: &Path) -> Result<()> {
    crate::fsutil::write_atomic(path, &to_bytes(graph)?)
}

/// Parses the native format; `path` names the file in errors.
pub fn from_bytes(bytes: &[u8], path: &str) -> Result<Graph> {
    let bad = |reason: String| EngineError::Format { path: path.to_string(), reason };
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| bad(format!("safetensors header: {e}")))?;
    let meta = header.metadata().clone().ok_or_else(|| bad("no metadata (is this a plain safetensors file?)".into()))?;
    if meta.get("format").map(String::as_str) != Some(FORMAT_NAME) {
        return Err(bad(format!("metadata 'format' is {:?}, expected \"{FORMAT_NAME}\"", meta.get("format"))));
    }
    let version = meta.get("format_version").cloned().unwrap_or_default();
    if version != FORMAT_VERSION.to_string() {
        return Err(bad(format!("format_version {version:?} is not supported (this engine reads version {FORMAT_VERSION})")));
    }
    let fg: FileGraph = serde_json::from_str(meta.get("graph").ok_or_else(|| bad("metadata has no 'graph'".into()))?)
        .map_err(|e| bad(format!("graph metadata: {e}")))?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| bad(format!("safetensors: {e}")))?;
    let reader = Reader { st: &st, path };
    let mut nodes = Vec::new();
    for n in fg.nodes {
        let op = match n.op {
            FileOp::Linear { weight, bias, act } => {
                let weight = reader.weight(&weight)?;
                Op::Linear { bias: reader.f32(&bias, Some(weight.rows()))?, weight, act }
            }
            FileOp::Conv { weight, bias, window, act } => {
                let weight = reader.weight(&weight)?;
                Op::Conv { bias: reader.f32(&bias, Some(weight.rows()))?, weight, window, act }
            }
            FileOp::Affine { scale, shift, act } => {
                let scale = reader.f32(&scale, None)?;
                Op::Affine { shift: reader.f32(&shift, Some(scale.len()))?, scale, act }
            }
            FileOp::Relu => Op::Relu,
            FileOp::MaxPool { window } => Op::MaxPool { window },
            FileOp::AvgPool { window, count_include_pad } => Op::AvgPool { window, count_include_pad },
            FileOp::GlobalAvgPool => Op::GlobalAvgPool,
            FileOp::Add { act } => Op::Add { act },
            FileOp::Flatten => Op::Flatten,
            FileOp::Softmax { masked, zero_nan } => Op::Softmax { masked, zero_nan },
            FileOp::QuantDequant { scale, zero } => Op::QuantDequant { scale, zero },
            FileOp::GroupConv { weight, bias, window, groups, act } => {
                let weight = reader.weight(&weight)?;
                Op::GroupConv { bias: reader.f32(&bias, Some(weight.rows()))?, weight, window, groups, act }
            }
            FileOp::Unary { unary } => Op::Unary(unary),
            FileOp::Binary { kind, constant, constant_shape, constant_first } => {
                let constant = match (constant, constant_shape) {
                    (Some(tensor), Some(shape)) => Some(Operand { values: reader.f32(&tensor, None)?, shape }),
                    (None, None) => None,
                    _ => return Err(bad(format!("node '{}': a constant operand needs both its tensor and its shape", n.name))),
                };
                Op::Binary { kind, constant, constant_first }
            }
            FileOp::Concat { axis } => Op::Concat { axis },
            FileOp::Reshape { shape } => Op::Reshape { shape },
            FileOp::Transpose { perm } => Op::Transpose { perm },
            FileOp::Select { indices } => Op::Select { indices },
            FileOp::Pick { shape, sources } => {
                Op::Pick { shape, sources: reader.u32s(&sources)?.into_iter().map(|s| s as usize).collect() }
            }
            FileOp::Embed { table } => Op::Embed { table: reader.weight(&table)? },
            FileOp::LayerNorm { scale, bias, epsilon, columns } => {
                let scale = reader.f32(&scale, None)?;
                Op::LayerNorm { bias: reader.f32(&bias, Some(scale.len()))?, scale, epsilon, columns }
            }
            FileOp::BatchMatMul { swap_a, swap_b, swap_y } => {
                Op::BatchMatMul { swapped: crate::graph::Swapped { a: swap_a, b: swap_b, y: swap_y } }
            }
            FileOp::Where { x, x_shape, y, y_shape } => {
                let operand = |tensor: Option<String>, shape: Option<Vec<usize>>| match (tensor, shape) {
                    (Some(tensor), Some(shape)) => Ok(Some(Operand { values: reader.f32(&tensor, None)?, shape })),
                    (None, None) => Ok(None),
                    _ => Err(bad(format!("node '{}': a constant operand needs both its tensor and its shape", n.name))),
                };
                Op::Where { x: operand(x, x_shape)?, y: operand(y, y_shape)? }
            }
        };
        nodes.push(Node { name: n.name, op, inputs: n.inputs, output: n.output });
    }
    let graph = Graph { input: fg.input, input_shape: fg.input_shape, output: fg.output, nodes, ports: fg.ports };
    if let Some(ports) = &graph.ports {
        ports.check(&graph.input_shape).map_err(bad)?;
    }
    graph.infer_shapes().map_err(|e| bad(e.to_string()))?;
    Ok(graph)
}

struct Reader<'a> {
    st: &'a SafeTensors<'a>,
    path: &'a str,
}

impl Reader<'_> {
    fn bad(&self, reason: String) -> EngineError {
        EngineError::Format { path: self.path.to_string(), reason }
    }

    fn view(&self, name: &str, dtypes: &[Dtype]) -> Result<TensorView<'_>> {
        let v = self.st.tensor(name).map_err(|e| self.bad(format!("tensor '{name}': {e}")))?;
        if !dtypes.contains(&v.dtype()) {
            return Err(self.bad(format!("tensor '{name}' has dtype {:?}, expected one of {dtypes:?}", v.dtype())));
        }
        Ok(v)
    }

    fn f32(&self, name: &str, len: Option<usize>) -> Result<Vec<f32>> {
        let v = self.view(name, &[Dtype::F32])?;
        let out: Vec<f32> = v.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        match len {
            Some(l) if l != out.len() => Err(self.bad(format!("tensor '{name}' has {} values, expected {l}", out.len()))),
            _ => Ok(out),
        }
    }

    /// CSR row offsets: `rows + 1` of them, from 0, never decreasing, ending at the number of
    /// values, which matches the number of column entries.
    fn check_offsets(&self, tensor: &str, offsets: &[u32], rows: usize, values: usize, columns: usize) -> Result<()> {
        let ok = offsets.len() == rows + 1
            && offsets[0] == 0
            && offsets.windows(2).all(|w| w[0] <= w[1])
            && offsets[rows] as usize == values
            && columns == values;
        if ok { Ok(()) } else { Err(self.bad(format!("weight '{tensor}': inconsistent CSR offsets or lengths"))) }
    }

    /// The bytes of `name` (`dtype`, `[n]`), stored raw or as `name_deflate`.
    fn maybe_deflated(&self, name: &str, dtype: Dtype, n: usize) -> Result<Vec<u8>> {
        let deflated = format!("{name}_deflate");
        let raw = if self.st.names().iter().all(|t| **t != deflated) {
            self.view(name, &[dtype])?.data().to_vec()
        } else {
            let bytes = self.view(&deflated, &[Dtype::U8])?.data();
            // Read at most one byte more than expected, so a hostile stream cannot make us allocate.
            let mut out = Vec::with_capacity(n.min(MAX_WEIGHT_ELEMENTS));
            let limited = std::io::Read::take(flate2::read::DeflateDecoder::new(bytes), n as u64 + 1);
            std::io::Read::read_to_end(&mut { limited }, &mut out).map_err(|e| self.bad(format!("tensor '{deflated}': {e}")))?;
            out
        };
        if raw.len() != n {
            return Err(self.bad(format!("tensor '{name}' holds {} values, expected {n}", raw.len())));
        }
        Ok(raw)
    }

    fn u32s(&self, name: &str) -> Result<Vec<u32>> {
        let v = self.view(name, &[Dtype::U16, Dtype::U32])?;
        Ok(match v.dtype() {
            Dtype::U16 => v.data().chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as u32).collect(),
            _ => v.data().chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        })
    }

    fn weight(&self, r: &WeightRef) -> Result<Weight> {
        if r.layout != "out_in" {
            return Err(self.bad(format!("weight '{}' has layout '{}', expected 'out_in'", r.tensor, r.layout)));
        }
        if r.shape.len() < 2 || r.shape.contains(&0) {
            return Err(self.bad(format!("weight '{}' has shape {:?}", r.tensor, r.shape)));
        }
        let numel = checked_numel(&r.shape, MAX_WEIGHT_ELEMENTS);
        let numel = numel.ok_or_else(|| self.bad(format!("weight '{}' shape {:?} is too large", r.tensor, r.shape)))?;
        let (rows, cols) = (r.shape[0], numel / r.shape[0]);
        let quant = match (&r.quant, r.encoding) {
            (Some(q), Encoding::Int8 | Encoding::CsrInt8) => {
                let scales = self.f32(&q.scales, Some(rows))?;
                if !(q.input_scale.is_finite() && q.input_scale > 0.0) || scales.iter().any(|s| !s.is_finite()) {
                    return Err(self.bad(format!("weight '{}': scales must be finite and the input scale positive", r.tensor)));
                }
                Some(Quant { scales, input_scale: q.input_scale, input_zero: q.input_zero })
            }
            (None, Encoding::Dense | Encoding::Csr) => None,
            _ => return Err(self.bad(format!("weight '{}': int8 encodings need quantization parameters, and only they", r.tensor))),
        };
        let data = match r.encoding {
            Encoding::Dense => {
                let v = self.view(&r.tensor, &[Dtype::F32])?;
                if v.shape() != r.shape.as_slice() {
                    return Err(self.bad(format!("tensor '{}' has shape {:?}, the graph says {:?}", r.tensor, v.shape(), r.shape)));
                }
                self.f32(&r.tensor, Some(numel))?
            }
            Encoding::Csr => {
                let values = self.f32(&format!("{}.values", r.tensor), None)?;
                let cols_idx = self.u32s(&format!("{}.col_indices", r.tensor))?;
                let offsets = self.u32s(&format!("{}.row_offsets", r.tensor))?;
                self.check_offsets(&r.tensor, &offsets, rows, values.len(), cols_idx.len())?;
                let mut data = vec![0.0f32; numel];
                for row in 0..rows {
                    for j in offsets[row] as usize..offsets[row + 1] as usize {
                        let c = cols_idx[j] as usize;
                        if c >= cols {
                            return Err(self.bad(format!("weight '{}': column index {c} out of range ({cols} columns)", r.tensor)));
                        }
                        data[row * cols + c] = values[j];
                    }
                }
                data
            }
            Encoding::Int8 => {
                let v = self.view(&r.tensor, &[Dtype::I8])?;
                if v.shape() != r.shape.as_slice() {
                    return Err(self.bad(format!("tensor '{}' has shape {:?}, the graph says {:?}", r.tensor, v.shape(), r.shape)));
                }
                let scales = &quant.as_ref().expect("checked above").scales;
                v.data().iter().enumerate().map(|(i, &b)| b as i8 as f32 * scales[i / cols]).collect()
            }
            Encoding::CsrInt8 => {
                let offsets = self.u32s(&format!("{}.row_offsets", r.tensor))?;
                if offsets.len() != rows + 1 || offsets[rows] as usize > numel.saturating_mul(2) {
                    return Err(self.bad(format!("weight '{}': inconsistent CSR offsets or lengths", r.tensor)));
                }
                let n = offsets[rows] as usize;
                let values = self.maybe_deflated(&format!("{}.values", r.tensor), Dtype::I8, n)?;
                let gaps = self.maybe_deflated(&format!("{}.col_gaps", r.tensor), Dtype::U8, n)?;
                self.check_offsets(&r.tensor, &offsets, rows, values.len(), gaps.len())?;
                let scales = &quant.as_ref().expect("checked above").scales;
                let mut data = vec![0.0f32; numel];
                for row in 0..rows {
                    let mut c = 0usize;
                    for j in offsets[row] as usize..offsets[row + 1] as usize {
                        c += gaps[j] as usize;
                        if c >= cols {
                            return Err(self.bad(format!("weight '{}': column {c} out of range ({cols} columns)", r.tensor)));
                        }
                        data[row * cols + c] = values[j] as i8 as f32 * scales[row];
                    }
                }
                data
            }
        };
        Ok(Weight { shape: r.shape.clone(), data, quant })
    }
}
