//! ONNX to the engine's graph: reads the operators PyTorch, SparseML and the peers' scripts write
//! for MLPs and CNNs (weights as dense initializers, zeros included) and maps each to an `Op`.
//! Bias adds after MatMul become the layer's bias; Identity and Dropout disappear; fusions happen
//! afterwards in `passes`.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use prost::Message;

use super::proto::{AttributeProto, ModelProto, NodeProto, TensorProto, data_type};
use crate::error::{EngineError, Result};
use crate::graph::{Activation, BinaryKind, Graph, Node, Op, Operand, Port, Ports, Quant, Unary, Weight, Window};

pub use super::registry::operators;

/// A constant tensor: dims and values (integers converted exactly to f32).
pub(super) struct Constant {
    pub(super) dims: Vec<usize>,
    pub(super) values: Vec<f32>,
    pub(super) data_type: i32,
    /// For the output of DequantizeLinear on int8 values with zero point 0: the scales and the
    /// axis they run along (one scale: per tensor).
    pub(super) int8_scales: Option<(Vec<f32>, usize)>,
    /// For a value that depends on the batch size (shape arithmetic, `fold`): its values with the
    /// batch taken as `fold::OTHER_BATCH` (`values` take it as `fold::BATCH`).
    pub(super) other_batch: Option<Vec<f32>>,
}

impl Constant {
    pub(super) fn new(dims: Vec<usize>, values: Vec<f32>, data_type: i32) -> Constant {
        Constant { dims, values, data_type, int8_scales: None, other_batch: None }
    }
    pub(super) fn floats(dims: Vec<usize>, values: Vec<f32>) -> Constant {
        Constant::new(dims, values, data_type::FLOAT)
    }
}

/// The output of QuantizeLinear (uint8) then DequantizeLinear on an activation: the activation it
/// quantizes, the scale and the zero point.
#[derive(Clone)]
pub(super) struct QuantizedActivation {
    pub(super) source: String,
    pub(super) scale: f32,
    pub(super) zero: u8,
}

/// Parses ONNX bytes; `path` names the file in errors. External data is refused (there is no
/// folder to read it from): `import_file` reads it.
pub fn import_bytes(bytes: &[u8], path: &str) -> Result<Graph> {
    import_with(bytes, path, None)
}

/// Parses the ONNX file `path` whose bytes are `bytes`, reading external data from its folder.
pub fn import_file(bytes: &[u8], path: &Path) -> Result<Graph> {
    let folder = path.parent().map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p });
    import_with(bytes, &path.display().to_string(), folder)
}

fn import_with(bytes: &[u8], path: &str, folder: Option<&Path>) -> Result<Graph> {
    match import_as(bytes, path, folder, false) {
        // A dynamic-batch file whose shape arithmetic mixes the batch into other axes (the index
        // tensors `transformers` builds for attention masks): its batch-1 graph, run per sample.
        Err(EngineError::Graph { reason, .. }) if reason.contains(BATCH_DEPENDENT) => import_as(bytes, path, folder, true),
        result => result,
    }
}

/// How a fold that depends on the batch size in a way the engine cannot follow is refused.
pub(super) const BATCH_DEPENDENT: &str = "whose shape depends on the batch size";

/// `as_batch_one`: read a dynamic batch as the batch of 1 that every sample runs in.
fn import_as(bytes: &[u8], path: &str, folder: Option<&Path>, as_batch_one: bool) -> Result<Graph> {
    let bad = |reason: String| EngineError::Onnx { path: path.to_string(), reason };
    let model = ModelProto::decode(bytes).map_err(|e| bad(format!("protobuf decoding failed: {e}")))?;
    let graph = model.graph.ok_or_else(|| bad("the model has no graph".into()))?;

    let mut constants: HashMap<String, Constant> = HashMap::new();
    for t in &graph.initializer {
        constants.insert(t.name.clone(), tensor_values(t, folder).map_err(|e| bad(format!("initializer '{}': {e}", t.name)))?);
    }
    let inputs: Vec<&super::proto::ValueInfoProto> = graph.input.iter().filter(|i| !constants.contains_key(&i.name)).collect();
    if inputs.is_empty() {
        return Err(bad("the graph has no non-constant input".into()));
    }
    let mut ports = Ports::default();
    let mut static_batch = None;
    for input in &inputs {
        let tensor = input.r#type.as_ref().and_then(|t| t.tensor_type.as_ref());
        let dims: Vec<Option<i64>> =
            tensor.and_then(|t| t.shape.as_ref()).map(|s| s.dim.iter().map(|d| d.dim_value).collect()).unwrap_or_default();
        if dims.len() < 2 || dims[1..].iter().any(|d| d.is_none_or(|v| v <= 0)) {
            return Err(bad(format!("input '{}' must have a batch dimension and known per-sample dimensions, found {dims:?}", input.name)));
        }
        static_batch = static_batch.or(if as_batch_one { Some(1) } else { dims[0] });
        let elem = tensor.map_or(data_type::FLOAT, |t| t.elem_type);
        let integer = match elem {
            data_type::FLOAT | data_type::DOUBLE => false,
            data_type::INT64 | data_type::INT32 | data_type::BOOL => true,
            other => return Err(bad(format!("input '{}' has data type {other}, which is not supported", input.name))),
        };
        let shape = dims[1..].iter().map(|d| d.unwrap() as usize).collect();
        ports.inputs.push(Port { name: input.name.clone(), shape, integer, rows: None });
    }
    let several = ports.inputs.len() > 1;
    let packed = if several { unused_name(&graph, "inputs") } else { ports.inputs[0].name.clone() };
    let input_shape = if several { vec![ports.inputs.iter().map(Port::elements).sum()] } else { ports.inputs[0].shape.clone() };
    let outputs: Vec<String> = graph.output.iter().map(|o| o.name.clone()).collect();
    if outputs.is_empty() {
        return Err(bad("the graph has no output".into()));
    }

    let nodes = super::layer_norm::fuse_decomposed(&graph.node, &outputs, &mut constants);
    refuse_unsupported(&nodes)?;
    let mut importer = Importer {
        constants,
        aliases: HashMap::new(),
        nodes: Vec::new(),
        quantized: HashMap::new(),
        dequantized: HashMap::new(),
        static_batch,
        input: (packed.clone(), input_shape.clone()),
        shapes: HashMap::from([(packed.clone(), input_shape.clone())]),
        shaped: 0,
        integral: ports.inputs.iter().filter(|p| p.integer).map(|p| p.name.clone()).collect(),
        merged: HashSet::new(),
        ports,
    };
    if several {
        importer.unpack_inputs(&packed);
    }
    for node in &nodes {
        importer.node(node)?;
    }
    let (output, ports) = if outputs.len() > 1 || several {
        let output = importer.pack_outputs(&outputs, unused_name(&graph, "outputs"))?;
        (output, Some(importer.ports))
    } else {
        (importer.resolve(&outputs[0]), None)
    };
    Ok(Graph { input: packed, input_shape, output, nodes: importer.nodes, ports })
}

/// `base`, or `base` with a number, that no value of `graph` is named.
fn unused_name(graph: &super::proto::GraphProto, base: &str) -> String {
    let taken = |n: &str| {
        graph.input.iter().chain(&graph.output).any(|v| v.name == n) || graph.node.iter().any(|x| x.output.iter().any(|o| o == n))
    };
    (0..).map(|i| if i == 0 { base.to_string() } else { format!("{base}{i}") }).find(|n| !taken(n)).expect("a free name")
}

/// One error naming every operator type of `nodes` this importer does not read, with how many nodes
/// use it.
fn refuse_unsupported(nodes: &[NodeProto]) -> Result<()> {
    let mut missing: Vec<(String, usize)> = Vec::new();
    for n in nodes.iter().filter(|n| super::registry::reader(&n.op_type).is_none()) {
        match missing.iter_mut().find(|(op, _)| *op == n.op_type) {
            Some((_, count)) => *count += 1,
            None => missing.push((n.op_type.clone(), 1)),
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let ops = missing.iter().map(|(op, n)| format!("{op} ({n} node{})", if *n == 1 { "" } else { "s" })).collect::<Vec<_>>().join(", ");
    Err(EngineError::UnsupportedOps { ops, supported: operators().join(", ") })
}

fn tensor_values(t: &TensorProto, folder: Option<&Path>) -> std::result::Result<Constant, String> {
    let (dims, values) = super::tensor::decode(t, folder)?;
    Ok(Constant::new(dims, values, t.data_type))
}

fn attr<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}
pub(super) fn attr_i(node: &NodeProto, name: &str, default: i64) -> i64 {
    attr(node, name).map_or(default, |a| a.i)
}
pub(super) fn attr_f(node: &NodeProto, name: &str, default: f32) -> f32 {
    attr(node, name).map_or(default, |a| a.f)
}
/// A list of non-negative integers; a negative one is an error naming the attribute.
fn attr_ints(node: &NodeProto, name: &str) -> Result<Option<Vec<usize>>> {
    let Some(a) = attr(node, name) else { return Ok(None) };
    a.ints
        .iter()
        .map(|&v| usize::try_from(v).map_err(|_| EngineError::graph(node_name(node), format!("{name} holds {v}, which is negative"))))
        .collect::<Result<Vec<usize>>>()
        .map(Some)
}

/// What an operator's own file (`crate::ops`) reads from its ONNX node: attributes and constant
/// inputs.
pub(crate) struct OnnxNode<'a> {
    importer: &'a Importer,
    node: &'a NodeProto,
}

impl OnnxNode<'_> {
    /// A float attribute, or `default` where the node has none.
    pub(crate) fn float(&self, name: &str, default: f32) -> f32 {
        attr_f(self.node, name, default)
    }
    /// A string attribute, empty where the node has none.
    pub(crate) fn string(&self, name: &str) -> String {
        attr(self.node, name).map(|a| String::from_utf8_lossy(&a.s).into_owned()).unwrap_or_default()
    }
    /// Whether input `i` is given (present and not the empty name of an omitted input).
    pub(crate) fn has_input(&self, i: usize) -> bool {
        self.node.input.get(i).is_some_and(|s| !s.is_empty())
    }
    /// The values of input `i`, which must be a constant.
    pub(crate) fn constant_values(&self, i: usize) -> Result<&[f32]> {
        Ok(&self.importer.constant(self.node, i)?.values)
    }
}

pub(super) struct Importer {
    pub(super) constants: HashMap<String, Constant>,
    pub(super) aliases: HashMap<String, String>,
    pub(super) nodes: Vec<Node>,
    /// Quantized activations (QuantizeLinear's and the QLinear operators' outputs, codes in the
    /// file), each with the value of its codes, and the DequantizeLinear outputs that read them.
    pub(super) quantized: HashMap<String, QuantizedActivation>,
    pub(super) dequantized: HashMap<String, QuantizedActivation>,
    /// The input's batch dimension where the file fixes it (PyTorch's exporter without dynamic
    /// axes writes 1), so that a Reshape to `[1, features]` is a flatten.
    pub(super) static_batch: Option<i64>,
    /// The graph's input and its per-sample shape.
    pub(super) input: (String, Vec<usize>),
    /// Per-sample shapes of the activations of `nodes[..shaped]` (`shape_of`).
    pub(super) shapes: HashMap<String, Vec<usize>>,
    pub(super) shaped: usize,
    /// The model's inputs (and, once packed, outputs), for a model with several.
    pub(super) ports: Ports,
    /// Activations known to hold integers (integer inputs, booleans), which a Cast to an integer
    /// type leaves as they are.
    pub(super) integral: HashSet<String>,
    /// Activations of a batch-1 file whose first axis holds the batch folded into another axis
    /// (`reshape`): their per-sample shape is the file's whole shape.
    pub(super) merged: HashSet<String>,
}

impl Importer {
    /// Each input port as a value of its own, picked from the packed input.
    fn unpack_inputs(&mut self, packed: &str) {
        for (range, port) in Ports::placed(&self.ports.inputs) {
            let op = Op::Pick { shape: port.shape.clone(), sources: range.collect() };
            let (name, output) = (format!("{}.unpack", port.name), port.name.clone());
            self.nodes.push(Node { name, op, inputs: vec![packed.to_string()], output });
        }
    }

    /// The outputs, flattened and joined into one value `packed`; records their ports.
    fn pack_outputs(&mut self, outputs: &[String], packed: String) -> Result<String> {
        let mut flat = Vec::new();
        for o in outputs {
            let value = self.resolve(o);
            if self.constants.contains_key(&value) {
                return Err(EngineError::graph(o, "a constant output is not supported"));
            }
            let shape = self.shape_of(&value, o)?;
            let len = shape.iter().product();
            self.ports.outputs.push(Port { name: o.clone(), shape, integer: self.integral.contains(&value), rows: None });
            let flattened = format!("{packed}.{o}");
            self.nodes.push(Node {
                name: flattened.clone(),
                op: Op::Reshape { shape: vec![len] },
                inputs: vec![value],
                output: flattened.clone(),
            });
            flat.push(flattened);
        }
        self.nodes.push(Node { name: packed.clone(), op: Op::Concat { axis: 0 }, inputs: flat, output: packed.clone() });
        Ok(packed)
    }

    pub(super) fn resolve(&self, name: &str) -> String {
        let mut n = name;
        while let Some(next) = self.aliases.get(n) {
            n = next;
        }
        n.to_string()
    }

    /// Input `i` of `node`, which must be a constant (an initializer, a `Constant` node, or either
    /// through Identity) that does not depend on the batch size.
    pub(super) fn constant(&self, node: &NodeProto, i: usize) -> Result<&Constant> {
        let c = self.shape_constant(node, i)?;
        if c.other_batch.is_some() {
            return Err(EngineError::graph(
                node_name(node),
                format!("input '{}' depends on the batch size, which is not supported here", node.input[i]),
            ));
        }
        Ok(c)
    }

    /// Input `i` of `node`, a constant that may depend on the batch size (a shape).
    pub(super) fn shape_constant(&self, node: &NodeProto, i: usize) -> Result<&Constant> {
        let name = node.input.get(i).ok_or_else(|| EngineError::graph(node_name(node), format!("missing input {i}")))?;
        self.constants
            .get(&self.resolve(name))
            .ok_or_else(|| EngineError::graph(node_name(node), format!("input '{name}' must be a constant (initializer)")))
    }

    fn push(&mut self, node: &NodeProto, op: Op, inputs: Vec<String>) {
        self.nodes.push(Node { name: node_name(node), op, inputs, output: node.output[0].clone() });
    }

    pub(super) fn node(&mut self, node: &NodeProto) -> Result<()> {
        let name = node_name(node);
        if node.output.is_empty() {
            return Err(EngineError::graph(&name, "has no output"));
        }
        let x = node.input.first().map(|i| self.resolve(i)).unwrap_or_default();
        if super::registry::is_qoperator(&node.op_type) {
            return self.qoperator(node);
        }
        let merged_inputs = node.input.iter().filter(|i| self.merged.contains(&self.resolve(i))).count();
        if merged_inputs > 0 && !matches!(node.op_type.as_str(), "Reshape" | "Transpose" | "Gather" | "Flatten") {
            let activations = node.input.iter().filter(|i| !i.is_empty() && !self.constants.contains_key(&self.resolve(i))).count();
            if merged_inputs != activations || !matches!(node.op_type.as_str(), "MatMul" | "Mul" | "Add" | "Sub" | "Div" | "Identity") {
                return Err(EngineError::graph(
                    &name,
                    format!("{} of a value whose batch axis was folded into another is not supported", node.op_type),
                ));
            }
            self.merged.insert(node.output[0].clone());
        }
        if matches!(node.op_type.as_str(), "MaxPool" | "Flatten" | "Reshape")
            && let Some(q) = self.quantized.get(&x).cloned()
        {
            return self.on_codes(node, q);
        }
        if super::registry::folds(&node.op_type) {
            let inputs = self.constant_inputs(node);
            let all_constant = node.input.iter().zip(&inputs).all(|(name, c)| name.is_empty() || c.is_some());
            let folded = match node.op_type.as_str() {
                "Shape" if !self.constants.contains_key(&x) => Some(super::fold::shape_of_value(node, &self.shape_of(&x, &name)?)?),
                _ if all_constant => Some(super::fold::fold(node, &inputs)?),
                _ => None,
            };
            if let Some(mut c) = folded {
                if self.static_batch == Some(1) {
                    c.other_batch = None; // The file's one batch size is the sample's.
                }
                self.constants.insert(node.output[0].clone(), c);
                return Ok(());
            }
        }
        let read =
            super::registry::reader(&node.op_type).ok_or_else(|| EngineError::graph(&name, "is not an operator the importer reads"))?;
        read(self, node, &name, x)
    }

    /// Identity and Dropout: the output is another name of the input.
    pub(super) fn alias(&mut self, node: &NodeProto, _: &str, x: String) -> Result<()> {
        self.aliases.insert(node.output[0].clone(), x);
        Ok(())
    }

    /// An operator read only where its inputs are constants (it folds).
    pub(super) fn constants_only(&mut self, node: &NodeProto, name: &str, _: String) -> Result<()> {
        Err(EngineError::graph(name, format!("{} on these inputs is not supported", node.op_type)))
    }

    pub(super) fn constant_value(&mut self, node: &NodeProto, name: &str, _: String) -> Result<()> {
        let c = constant_node(node).map_err(|e| EngineError::graph(name, e))?;
        self.constants.insert(node.output[0].clone(), c);
        Ok(())
    }

    /// An element-wise function of one value (`crate::ops`); of a constant, a constant.
    pub(super) fn unary(&mut self, node: &NodeProto, name: &str, x: String) -> Result<()> {
        let view = OnnxNode { importer: self, node };
        let f = Unary::read(&node.op_type, &view).ok_or_else(|| EngineError::graph(name, "is not an element-wise function"))??;
        let out = node.output[0].clone();
        if f.is_boolean() {
            self.integral.insert(out.clone());
        }
        if let Some(c) = self.constants.get(&x) {
            let data_type = if f.is_boolean() { data_type::BOOL } else { data_type::FLOAT };
            let mut folded = Constant::new(c.dims.clone(), c.values.iter().map(|&v| f.value(v)).collect(), data_type);
            folded.other_batch = c.other_batch.as_ref().map(|values| values.iter().map(|&v| f.value(v)).collect());
            self.constants.insert(out, folded);
            return Ok(());
        }
        self.push(node, Op::Unary(f), vec![x]);
        Ok(())
    }

    pub(super) fn gemm(&mut self, node: &NodeProto, name: &str, x: String) -> Result<()> {
        if attr_i(node, "transA", 0) != 0 {
            return Err(EngineError::graph(name, "Gemm with transA=1 is not supported"));
        }
        let b = self.constant(node, 1)?;
        if b.dims.len() != 2 {
            return Err(EngineError::graph(name, format!("Gemm weight must be 2-D, found {:?}", b.dims)));
        }
        let alpha = attr_f(node, "alpha", 1.0);
        let trans_b = attr_i(node, "transB", 0) != 0;
        let scales = row_scales(b, if trans_b { 0 } else { 1 });
        let mut weight = if trans_b { dense(&b.dims, &b.values) } else { transpose(&b.dims, &b.values) };
        weight.data.iter_mut().for_each(|w| *w *= alpha);
        weight.quant = self.quant(node, scales.map(|s| s.iter().map(|v| v * alpha).collect()));
        let bias = self.bias(node, weight.rows(), attr_f(node, "beta", 1.0), name)?;
        self.push(node, Op::Linear { weight, bias, act: Activation::None }, vec![x]);
        Ok(())
    }

    /// MatMul by constant weights (a linear layer, or a 1x1 convolution over rows), or of two
    /// values (`matmul_values`).
    pub(super) fn matmul(&mut self, node: &NodeProto, name: &str, x: String) -> Result<()> {
        if !self.constants.contains_key(&self.resolve(node.input.get(1).map_or("", |b| b.as_str()))) {
            return self.matmul_values(node, name, x);
        }
        let dims = self.shape_of(&x, name)?;
        let b = self.constant(node, 1)?;
        if b.dims.len() != 2 {
            return Err(EngineError::graph(name, format!("MatMul weight must be 2-D, found {:?}", b.dims)));
        }
        let scales = row_scales(b, 1);
        let mut weight = transpose(&b.dims, &b.values);
        weight.quant = self.quant(node, scales);
        if dims.len() > 1 {
            self.row_linear(name, x, &dims, weight, node.output[0].clone());
            return Ok(());
        }
        let bias = vec![0.0; weight.rows()];
        self.push(node, Op::Linear { weight, bias, act: Activation::None }, vec![x]);
        Ok(())
    }

    pub(super) fn relu(&mut self, node: &NodeProto, _: &str, x: String) -> Result<()> {
        self.push(node, Op::Relu, vec![x]);
        Ok(())
    }

    /// An element-wise operation on two values (`crate::ops::binary`); Add also as a residual
    /// or a bias (`add`).
    pub(super) fn elementwise_binary(&mut self, node: &NodeProto, name: &str, x: String) -> Result<()> {
        let kind = BinaryKind::from_onnx(&node.op_type).ok_or_else(|| EngineError::graph(name, "is not an element-wise operation"))?;
        if kind.is_boolean() {
            self.integral.insert(node.output[0].clone());
        }
        if kind == BinaryKind::Add { self.add(node, name, x) } else { self.binary(node, name, kind) }
    }

    pub(super) fn concat(&mut self, node: &NodeProto, name: &str, x: String) -> Result<()> {
        let rank = self.shape_of(&x, name)?.len() + 1;
        let axis = attr_i(node, "axis", 1);
        let axis = if axis < 0 { axis + rank as i64 } else { axis };
        if axis < 1 || axis >= rank as i64 {
            return Err(EngineError::graph(
                name,
                format!("Concat along axis {axis} is not supported (only axes after the batch, counted from 0)"),
            ));
        }
        let inputs = node.input.iter().map(|i| self.resolve(i)).collect::<Vec<_>>();
        if inputs.iter().any(|i| self.constants.contains_key(i)) {
            return Err(EngineError::graph(name, "Concat of constants is not supported"));
        }
        self.push(node, Op::Concat { axis: axis as usize - 1 }, inputs);
        Ok(())
    }

    pub(super) fn softmax(&mut self, node: &NodeProto, name: &str, x: String) -> Result<()> {
        let axis = attr_i(node, "axis", -1);
        let dims = self.shape_of(&x, name)?;
        let a = super::fold::normalize(axis, dims.len() + 1).map_err(|e| EngineError::graph(name, e))?;
        // Axis 1 of a value whose other axes are 1 is its last axis in every opset.
        let over_last = a == dims.len() || (a == 1 && dims[..dims.len() - 1].iter().all(|&d| d == 1));
        if !over_last {
            return Err(EngineError::graph(
                name,
                format!("Softmax over axis {axis} of a {}-D value is not supported (only over the last axis)", dims.len() + 1),
            ));
        }
        self.push(node, Op::Softmax { masked: false, zero_nan: false }, vec![x]);
        Ok(())
    }

    pub(super) fn flatten(&mut self, node: &NodeProto, name: &str, x: String) -> Result<()> {
        if attr_i(node, "axis", 1) != 1 {
            if self.static_batch == Some(1) {
                return self.flatten_whole(node, name, x);
            }
            return Err(EngineError::graph(name, "Flatten is supported with axis=1 only"));
        }
        self.push(node, Op::Flatten, vec![x]);
        Ok(())
    }

    /// A Cast of an activation: to a float type or of integers to an integer type it changes
    /// nothing; to bool it is `ops::Bool`.
    pub(super) fn cast(&mut self, node: &NodeProto, name: &str, x: String) -> Result<()> {
        let to = attr_i(node, "to", data_type::FLOAT as i64) as i32;
        match to {
            data_type::FLOAT | data_type::DOUBLE => {
                self.aliases.insert(node.output[0].clone(), x);
            }
            data_type::BOOL => {
                self.integral.insert(node.output[0].clone());
                self.push(node, Op::Unary(Unary::Bool(crate::ops::Bool)), vec![x]);
            }
            data_type::INT64 | data_type::INT32 if self.integral.contains(&x) => {
                self.aliases.insert(node.output[0].clone(), x);
            }
            _ => return Err(EngineError::graph(name, format!("Cast of a float activation to data type {to} is not supported"))),
        }
        Ok(())
    }

    /// BatchNormalization in inference form: a per-channel scale and shift.
    pub(super) fn batch_norm(&mut self, node: &NodeProto, name: &str, x: String) -> Result<()> {
        let eps = attr_f(node, "epsilon", 1e-5);
        let (gamma, beta, mean, var) = (self.constant(node, 1)?, self.constant(node, 2)?, self.constant(node, 3)?, self.constant(node, 4)?);
        let scale: Vec<f32> = gamma.values.iter().zip(&var.values).map(|(g, v)| g / (v + eps).sqrt()).collect();
        let shift: Vec<f32> = beta.values.iter().zip(&mean.values).zip(&scale).map(|((b, m), s)| b - m * s).collect();
        if [gamma, beta, mean, var].iter().any(|c| c.values.len() != scale.len()) {
            return Err(EngineError::graph(name, "BatchNormalization parameters have different lengths"));
        }
        self.push(node, Op::Affine { scale, shift, act: Activation::None }, vec![x]);
        Ok(())
    }

    /// MaxPool and AveragePool.
    pub(super) fn pool(&mut self, node: &NodeProto, name: &str, x: String) -> Result<()> {
        let mut window = window(node, name, None)?;
        window.ceil_mode = attr_i(node, "ceil_mode", 0) != 0;
        if window.ceil_mode && node.op_type == "AveragePool" && attr_i(node, "count_include_pad", 0) != 0 {
            return Err(EngineError::graph(name, "AveragePool with ceil_mode=1 and count_include_pad=1 is not supported"));
        }
        let op = if node.op_type == "MaxPool" {
            Op::MaxPool { window }
        } else {
            Op::AvgPool { window, count_include_pad: attr_i(node, "count_include_pad", 0) != 0 }
        };
        self.push(node, op, vec![x]);
        Ok(())
    }

    pub(super) fn global_average_pool(&mut self, node: &NodeProto, _: &str, x: String) -> Result<()> {
        self.push(node, Op::GlobalAvgPool, vec![x]);
        Ok(())
    }

    /// The quantization of a weighted layer: its input must come through QuantizeLinear and
    /// DequantizeLinear and its weight through DequantizeLinear of int8 values; otherwise it runs
    /// in fp32 on the dequantized values.
    fn quant(&self, node: &NodeProto, scales: Option<Vec<f32>>) -> Option<Quant> {
        let input = self.dequantized.get(node.input.first()?)?;
        Some(Quant { scales: scales?, input_scale: input.scale, input_zero: input.zero })
    }

    /// A scalar scale and zero point (inputs 1 and 2 of a QuantizeLinear or DequantizeLinear).
    /// An activation's scalar scale and uint8 (or shifted int8) zero point, at inputs `i` and
    /// `i + 1` of `node` (QuantizeLinear, DequantizeLinear and the QLinear operators).
    pub(super) fn activation_qparams(&self, node: &NodeProto, i: usize, name: &str) -> Result<(f32, u8)> {
        let scale = self.constant(node, i)?;
        if scale.values.len() != 1 || !(scale.values[0] > 0.0 && scale.values[0].is_finite()) {
            return Err(EngineError::graph(name, "activation quantization needs one positive scale (per tensor)"));
        }
        let zero = if node.input.get(i + 1).is_some_and(|z| !z.is_empty()) { Some(self.constant(node, i + 1)?) } else { None };
        Ok((scale.values[0], activation_zero(zero, name)?))
    }

    pub(super) fn quantize_linear(&mut self, node: &NodeProto, name: &str, x: String) -> Result<()> {
        if self.constants.contains_key(&x) {
            return Err(EngineError::graph(name, "QuantizeLinear of a constant is not supported; store the weights as int8"));
        }
        let (scale, zero) = self.activation_qparams(node, 1, name)?;
        if attr_i(node, "saturate", 1) != 1 || attr(node, "output_dtype").is_some() {
            return Err(EngineError::graph(name, "QuantizeLinear is supported with its default saturate and output type"));
        }
        // The codes' value, rounded and clamped as QuantizeLinear does (a quantizer drops the
        // ReLU a zero point of 0 makes redundant); it disappears where only int8 layers that
        // quantize their input alike read it (`passes`).
        let value = format!("{}:dequantized", node.output[0]);
        self.nodes.push(Node { name: name.to_string(), op: Op::QuantDequant { scale, zero }, inputs: vec![x], output: value.clone() });
        self.quantized.insert(node.output[0].clone(), QuantizedActivation { source: value, scale, zero });
        Ok(())
    }

    pub(super) fn dequantize_linear(&mut self, node: &NodeProto, name: &str, x: String) -> Result<()> {
        let out = node.output[0].clone();
        if let Some(q) = self.quantized.get(&x).cloned() {
            let (scale, zero) = self.activation_qparams(node, 1, name)?;
            if scale != q.scale || zero != q.zero {
                return Err(EngineError::graph(name, "DequantizeLinear must use the scale and zero point of the QuantizeLinear before it"));
            }
            self.aliases.insert(out.clone(), q.source.clone());
            self.dequantized.insert(out, q);
            return Ok(());
        }
        let dequantized = self.dequantize(node, [0, 1, 2], attr_i(node, "axis", 1), name)?;
        self.constants.insert(out, dequantized);
        Ok(())
    }

    /// The constant at input `at[0]` dequantized with the scales at `at[1]` and zero points at
    /// `at[2]` (optional) along `axis`; int8 values with zero points of 0 keep their scales, so
    /// the layer that reads them can run in int8.
    pub(super) fn dequantize(&self, node: &NodeProto, at: [usize; 3], axis: i64, name: &str) -> Result<Constant> {
        let c = self.constant(node, at[0])?;
        let scale = self.constant(node, at[1])?;
        let zero = if node.input.get(at[2]).is_some_and(|z| !z.is_empty()) { Some(self.constant(node, at[2])?) } else { None };
        if scale.values.is_empty() || zero.is_some_and(|z| z.values.is_empty()) {
            return Err(EngineError::graph(name, "dequantization needs at least one scale and zero point"));
        }
        let rank = c.dims.len();
        let axis = if axis < 0 { axis + rank as i64 } else { axis };
        let per_axis = scale.values.len() > 1;
        if per_axis && (axis < 0 || axis as usize >= rank || c.dims[axis as usize] != scale.values.len()) {
            return Err(EngineError::graph(name, format!("{} scales do not match axis {axis} of {:?}", scale.values.len(), c.dims)));
        }
        let axis = axis.max(0) as usize;
        let inner: usize = c.dims.get(axis + 1..).map_or(1, |d| d.iter().product());
        let along = |i: usize| if per_axis { (i / inner) % scale.values.len() } else { 0 };
        let zeros = zero.map_or(vec![0.0], |z| z.values.clone());
        if zeros.len() != 1 && zeros.len() != scale.values.len() {
            return Err(EngineError::graph(name, "zero points do not match the scales"));
        }
        let zero_of = |i: usize| if zeros.len() == 1 { zeros[0] } else { zeros[along(i)] };
        let values = c.values.iter().enumerate().map(|(i, v)| (v - zero_of(i)) * scale.values[along(i)]).collect();
        let int8_weight = c.data_type == data_type::INT8 && zeros.iter().all(|&z| z == 0.0);
        Ok(Constant {
            int8_scales: int8_weight.then(|| (scale.values.clone(), axis)),
            ..Constant::new(c.dims.clone(), values, data_type::FLOAT)
        })
    }

    /// Add of two values of one shape (a residual), a bias add folded into the linear layer
    /// before it, or a broadcast `binary`.
    pub(super) fn add(&mut self, node: &NodeProto, name: &str, _: String) -> Result<()> {
        if node.input.len() != 2 {
            return Err(EngineError::graph(name, "Add needs two inputs"));
        }
        let (a, b) = (self.resolve(&node.input[0]), self.resolve(&node.input[1]));
        let (value, constant) = match (self.constants.contains_key(&a), self.constants.contains_key(&b)) {
            (false, false) if self.shape_of(&a, name)? == self.shape_of(&b, name)? => {
                self.push(node, Op::Add { act: Activation::None }, vec![a, b]);
                return Ok(());
            }
            (false, false) => return self.binary(node, name, BinaryKind::Add),
            (false, true) => (a, b),
            (true, false) => (b, a),
            (true, true) => return Err(EngineError::graph(name, "Add of two constants is not supported")),
        };
        let c = &self.constants[&constant];
        // A bias add right after a linear layer folds into its bias.
        if let Some(producer) = self.nodes.iter_mut().rev().find(|n| n.output == value)
            && let Op::Linear { bias, act: Activation::None, .. } = &mut producer.op
            && let Ok(add) = broadcast_bias(c, bias.len(), 1.0, name)
        {
            bias.iter_mut().zip(add).for_each(|(b, a)| *b += a);
            producer.output = node.output[0].clone();
            return Ok(());
        }
        self.binary(node, name, BinaryKind::Add)
    }

    /// `a op b` of two values, or of a value and a constant (either side), broadcast.
    pub(super) fn binary(&mut self, node: &NodeProto, name: &str, kind: BinaryKind) -> Result<()> {
        if node.input.len() != 2 {
            return Err(EngineError::graph(name, format!("{} needs two inputs", node.op_type)));
        }
        let (a, b) = (self.resolve(&node.input[0]), self.resolve(&node.input[1]));
        let operand = |c: &Constant| Operand { shape: c.dims.clone(), values: c.values.clone() };
        let (value, constant, constant_first) = match (self.constants.get(&a), self.constants.get(&b)) {
            (None, None) => {
                self.push(node, Op::Binary { kind, constant: None, constant_first: false }, vec![a, b]);
                return Ok(());
            }
            (None, Some(c)) => (a.clone(), operand(c), false),
            (Some(c), None) => (b.clone(), operand(c), true),
            (Some(_), Some(_)) => return Err(EngineError::graph(name, format!("{} of two constants is not supported", node.op_type))),
        };
        self.push(node, Op::Binary { kind, constant: Some(constant), constant_first }, vec![value]);
        Ok(())
    }

    /// The mean over the spatial axes of a `[N, C, H, W]` value (opset 18 writes global average
    /// pooling so): with `keepdims`, global average pooling; without, that and a flatten.
    pub(super) fn reduce_mean(&mut self, node: &NodeProto, name: &str, x: String) -> Result<()> {
        let axes: Vec<i64> = match node.input.get(1).filter(|a| !a.is_empty()) {
            Some(_) => self.constant(node, 1)?.values.iter().map(|&v| v as i64).collect(),
            None => attr(node, "axes").map(|a| a.ints.clone()).unwrap_or_default(),
        };
        let mut spatial: Vec<i64> = axes.iter().map(|&a| if a < 0 { a + 4 } else { a }).collect();
        spatial.sort_unstable();
        if spatial != [2, 3] {
            return Err(EngineError::graph(
                name,
                format!("ReduceMean over axes {axes:?} is not supported (only the spatial axes of an image)"),
            ));
        }
        if attr_i(node, "keepdims", 1) != 0 {
            self.push(node, Op::GlobalAvgPool, vec![x]);
        } else {
            let pooled = format!("{}.pooled", node.output[0]);
            self.nodes.push(Node { name: format!("{name}.pool"), op: Op::GlobalAvgPool, inputs: vec![x], output: pooled.clone() });
            self.push(node, Op::Flatten, vec![pooled]);
        }
        Ok(())
    }

    /// The bias at input 2 of a Gemm or Conv, times `beta`, for `out` outputs; zeros without one.
    fn bias(&self, node: &NodeProto, out: usize, beta: f32, name: &str) -> Result<Vec<f32>> {
        match node.input.get(2).filter(|s| !s.is_empty()) {
            Some(_) => broadcast_bias(self.constant(node, 2)?, out, beta, name),
            None => Ok(vec![0.0; out]),
        }
    }

    pub(super) fn conv(&mut self, node: &NodeProto, name: &str, x: String) -> Result<()> {
        let groups = usize::try_from(attr_i(node, "group", 1)).ok().filter(|&g| g > 0);
        let groups = groups.ok_or_else(|| EngineError::graph(name, "group must be at least 1"))?;
        let w = self.constant(node, 1)?;
        if w.dims.len() != 4 {
            return Err(EngineError::graph(name, format!("Conv weight must be 4-D [out, in, kh, kw], found {:?}", w.dims)));
        }
        let scales = row_scales(w, 0);
        let mut weight = dense(&w.dims, &w.values);
        weight.quant = self.quant(node, scales);
        let window = window(node, name, Some([w.dims[2], w.dims[3]]))?;
        let bias = self.bias(node, weight.rows(), 1.0, name)?;
        if groups > 1 {
            weight.quant = None; // Grouped convolutions run in fp32, on the dequantized weights.
            self.push(node, Op::GroupConv { weight, bias, window, groups, act: Activation::None }, vec![x]);
        } else {
            self.push(node, Op::Conv { weight, bias, window, act: Activation::None }, vec![x]);
        }
        Ok(())
    }
}

/// An activation's zero point as a uint8 code: uint8 as is, int8 shifted by 128 (the codes shift
/// alike, so the dequantized values are the same); none is 0 (uint8).
pub(super) fn activation_zero(zero: Option<&Constant>, name: &str) -> Result<u8> {
    match zero {
        None => Ok(0),
        Some(z) if z.values.len() != 1 => Err(EngineError::graph(name, "activations need one zero point (per tensor)")),
        Some(z) if z.data_type == data_type::UINT8 => Ok(z.values[0] as u8),
        Some(z) if z.data_type == data_type::INT8 => Ok((z.values[0] as i32 + 128) as u8),
        Some(_) => Err(EngineError::graph(name, "activations must be quantized to uint8 or int8")),
    }
}

/// The value of a `Constant` node: a tensor, or one or several floats or integers.
pub(super) fn constant_node(node: &NodeProto) -> std::result::Result<Constant, String> {
    let a = node.attribute.first().ok_or("a Constant node needs a value")?;
    let list = |values: Vec<f32>, data_type| Constant::new(vec![values.len()], values, data_type);
    match a.name.as_str() {
        "value" => tensor_values(a.t.as_ref().ok_or("value holds no tensor")?, None),
        "value_float" => Ok(Constant::new(vec![], vec![a.f], data_type::FLOAT)),
        "value_int" => Ok(Constant::new(vec![], vec![a.i as f32], data_type::INT64)),
        "value_floats" => Ok(list(a.floats.clone(), data_type::FLOAT)),
        "value_ints" => Ok(list(a.ints.iter().map(|&v| v as f32).collect(), data_type::INT64)),
        other => Err(format!("a Constant with {other} is not supported")),
    }
}

pub(super) fn node_name(node: &NodeProto) -> String {
    if node.name.is_empty() {
        format!("{}:{}", node.op_type, node.output.first().map(String::as_str).unwrap_or("?"))
    } else {
        node.name.clone()
    }
}

fn window(node: &NodeProto, name: &str, kernel: Option<[usize; 2]>) -> Result<Window> {
    let ks =
        attr_ints(node, "kernel_shape")?.or(kernel.map(|k| k.to_vec())).ok_or_else(|| EngineError::graph(name, "missing kernel_shape"))?;
    if ks.len() != 2 {
        return Err(EngineError::graph(name, format!("only 2-D windows are supported, found kernel_shape {ks:?}")));
    }
    let two = |attr: &str| -> Result<[usize; 2]> {
        match attr_ints(node, attr)? {
            None => Ok([1, 1]),
            Some(v) if v.len() == 2 => Ok([v[0], v[1]]),
            Some(v) => Err(EngineError::graph(name, format!("{attr} must have 2 values, found {v:?}"))),
        }
    };
    let pads = match attr_ints(node, "pads")? {
        None => [0; 4],
        Some(p) if p.len() == 4 => [p[0], p[1], p[2], p[3]],
        Some(p) => return Err(EngineError::graph(name, format!("pads must have 4 values, found {p:?}"))),
    };
    let auto_pad = attr(node, "auto_pad").map(|a| String::from_utf8_lossy(&a.s).into_owned()).unwrap_or_default();
    if !matches!(auto_pad.as_str(), "" | "NOTSET" | "VALID") {
        return Err(EngineError::graph(name, format!("auto_pad={auto_pad} is not supported; export with explicit pads")));
    }
    Ok(Window { kernel: [ks[0], ks[1]], stride: two("strides")?, pads, dilation: two("dilations")?, ceil_mode: false })
}

/// One scale per row of the weight when its rows run along `axis` of the constant (or the
/// constant has one scale for all); `None` if it is not an int8 weight.
fn row_scales(c: &Constant, axis: usize) -> Option<Vec<f32>> {
    let (scales, along) = c.int8_scales.as_ref()?;
    let rows = *c.dims.get(axis)?;
    match scales.len() {
        1 => Some(vec![scales[0]; rows]),
        n if n == rows && *along == axis => Some(scales.clone()),
        _ => None,
    }
}

fn dense(dims: &[usize], values: &[f32]) -> Weight {
    Weight::dense(dims.to_vec(), values.to_vec())
}

/// `[k, n]` row-major to `[n, k]` row-major.
fn transpose(dims: &[usize], values: &[f32]) -> Weight {
    let (k, n) = (dims[0], dims[1]);
    let mut data = vec![0.0; k * n];
    for i in 0..k {
        for j in 0..n {
            data[j * k + i] = values[i * n + j];
        }
    }
    Weight::dense(vec![n, k], data)
}

fn broadcast_bias(c: &Constant, out: usize, beta: f32, name: &str) -> Result<Vec<f32>> {
    match c.values.len() {
        1 => Ok(vec![c.values[0] * beta; out]),
        n if n == out => Ok(c.values.iter().map(|v| v * beta).collect()),
        n => Err(EngineError::graph(name, format!("bias of {n} values for {out} outputs"))),
    }
}
