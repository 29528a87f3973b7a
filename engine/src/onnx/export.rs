//! The engine's graph to a standard ONNX file (opset 13, weights as dense initializers with their
//! zeros, as SparseML exports), which ONNX Runtime and DeepSparse load. Quantized layers are
//! written in QDQ form: QuantizeLinear/DequantizeLinear on the input (uint8), int8 weights with a
//! per-row DequantizeLinear (axis 0), and the fp32 Gemm or Conv between them.

use std::collections::HashMap;

use prost::Message;

use super::BatchNormState;
use super::proto::*;
use crate::graph::{Activation, Graph, Op, Weight, Window};

/// A tensor of `data_type` whose values are `raw_data` (little-endian).
fn raw_tensor(name: &str, dims: &[usize], data_type: i32, raw_data: Vec<u8>) -> TensorProto {
    TensorProto { dims: dims.iter().map(|&d| d as i64).collect(), data_type, name: name.to_string(), raw_data, ..Default::default() }
}

fn tensor(name: &str, dims: &[usize], values: &[f32]) -> TensorProto {
    raw_tensor(name, dims, data_type::FLOAT, values.iter().flat_map(|v| v.to_le_bytes()).collect())
}

fn int64_tensor(name: &str, dims: &[usize], values: &[i64]) -> TensorProto {
    raw_tensor(name, dims, data_type::INT64, values.iter().flat_map(|v| v.to_le_bytes()).collect())
}

/// An int8 (`signed`) or uint8 tensor.
fn bytes_tensor(name: &str, dims: &[usize], bytes: Vec<u8>, signed: bool) -> TensorProto {
    raw_tensor(name, dims, if signed { data_type::INT8 } else { data_type::UINT8 }, bytes)
}

fn ints(name: &str, v: &[usize]) -> AttributeProto {
    AttributeProto { name: name.into(), ints: v.iter().map(|&x| x as i64).collect(), r#type: attr_type::INTS, ..Default::default() }
}
fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto { name: name.into(), i: v, r#type: attr_type::INT, ..Default::default() }
}
pub(crate) fn float(name: &str, v: f32) -> AttributeProto {
    AttributeProto { name: name.into(), f: v, r#type: attr_type::FLOAT, ..Default::default() }
}
pub(crate) fn string(name: &str, v: &str) -> AttributeProto {
    AttributeProto { name: name.into(), s: v.as_bytes().to_vec(), r#type: attr_type::STRING, ..Default::default() }
}
fn window_attrs(w: &Window, with_dilation: bool) -> Vec<AttributeProto> {
    let mut a = vec![ints("kernel_shape", &w.kernel), ints("strides", &w.stride), ints("pads", &w.pads)];
    if with_dilation {
        a.push(ints("dilations", &w.dilation));
    }
    if w.ceil_mode {
        a.push(int("ceil_mode", 1));
    }
    a
}

fn value_info(name: &str, shape: &[usize]) -> ValueInfoProto {
    let mut dim = vec![DimensionProto { dim_value: None, dim_param: Some("N".into()) }];
    dim.extend(shape.iter().map(|&d| DimensionProto { dim_value: Some(d as i64), dim_param: None }));
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto { elem_type: data_type::FLOAT, shape: Some(TensorShapeProto { dim }) }),
        }),
    }
}

/// The ONNX nodes and initializers written so far.
pub(crate) struct Builder {
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
}

impl Builder {
    pub(crate) fn node(&mut self, op: &str, name: &str, inputs: Vec<String>, output: &str, attribute: Vec<AttributeProto>) {
        self.nodes.push(NodeProto {
            input: inputs,
            output: vec![output.into()],
            name: name.into(),
            op_type: op.into(),
            attribute,
            domain: String::new(),
        });
    }
    pub(crate) fn init(&mut self, name: String, dims: &[usize], values: &[f32]) -> String {
        self.inits.push(tensor(&name, dims, values));
        name
    }
    /// A QuantizeLinear (uint8 codes) then DequantizeLinear of `x` into `out`.
    pub(crate) fn quantize_dequantize(&mut self, name: &str, x: String, out: &str, scale: f32, zero: u8) {
        let s = self.init(format!("{name}.scale"), &[], &[scale]);
        let z = format!("{name}.zero_point");
        self.inits.push(bytes_tensor(&z, &[], vec![zero], false));
        let codes = format!("{name}.codes");
        self.node("QuantizeLinear", &format!("{name}.q"), vec![x, s.clone(), z.clone()], &codes, vec![]);
        self.node("DequantizeLinear", name, vec![codes, s, z], out, vec![]);
    }
    fn init_int64(&mut self, name: String, values: &[i64]) -> String {
        self.inits.push(int64_tensor(&name, &[values.len()], values));
        name
    }
    /// `x` cast to `to`, written to `out`; returns `out`.
    pub(crate) fn cast(&mut self, x: String, out: &str, to: i32) -> String {
        self.node("Cast", &format!("{out}.cast"), vec![x], out, vec![int("to", to as i64)]);
        out.to_string()
    }
    /// Emits `op` then, if `act` is ReLU, a Relu node writing `output`.
    fn with_act(&mut self, op: &str, name: &str, inputs: Vec<String>, output: &str, attrs: Vec<AttributeProto>, act: Activation) {
        if act == Activation::Relu {
            let pre = format!("{output}.pre_relu");
            self.node(op, name, inputs, &pre, attrs);
            self.node("Relu", &format!("{name}.relu"), vec![pre], output, vec![]);
        } else {
            self.node(op, name, inputs, output, attrs);
        }
    }
    /// The layer's weight and bias inputs; for a quantized layer, the weight as DequantizeLinear of
    /// its int8 values.
    fn weight(&mut self, node: &str, w: &Weight, bias: &[f32]) -> [String; 2] {
        let bias = self.init(format!("{node}.bias"), &[bias.len()], bias);
        let (Some(q), Some(values)) = (&w.quant, w.int8()) else {
            return [self.init(format!("{node}.weight"), &w.shape, &w.data), bias];
        };
        let rows = w.rows();
        let int8 = format!("{node}.weight_int8");
        self.inits.push(bytes_tensor(&int8, &w.shape, values.iter().map(|&v| v as u8).collect(), true));
        let scales = self.init(format!("{node}.weight_scale"), &[rows], &q.scales);
        let zeros = format!("{node}.weight_zero_point");
        self.inits.push(bytes_tensor(&zeros, &[rows], vec![0; rows], true));
        let out = format!("{node}.weight");
        self.node("DequantizeLinear", &format!("{node}.weight_dq"), vec![int8, scales, zeros], &out, vec![int("axis", 0)]);
        [out, bias]
    }

    /// For a quantized layer, QuantizeLinear then DequantizeLinear on its input; returns the name
    /// the layer reads.
    fn quantized_input(&mut self, node: &str, w: &Weight, x: &str) -> String {
        let Some(q) = &w.quant else { return x.to_string() };
        let scale = self.init(format!("{node}.input_scale"), &[], &[q.input_scale]);
        let zero = format!("{node}.input_zero_point");
        self.inits.push(bytes_tensor(&zero, &[], vec![q.input_zero], false));
        let (quantized, dequantized) = (format!("{node}.input_quantized"), format!("{node}.input_dq"));
        self.node("QuantizeLinear", &format!("{node}.input_q"), vec![x.to_string(), scale.clone(), zero.clone()], &quantized, vec![]);
        self.node("DequantizeLinear", &format!("{node}.input_dq"), vec![quantized, scale, zero], &dequantized, vec![]);
        dequantized
    }
}

/// Serialises `graph` as an ONNX model.
pub fn export(graph: &Graph, output_shape: &[usize]) -> Vec<u8> {
    export_with_batch_norms(graph, output_shape, &HashMap::new())
}

/// As `export`, with the `Affine` nodes named in `states` written as BatchNormalization with
/// those parameters (the same function) instead of their scale and shift.
pub fn export_with_batch_norms(graph: &Graph, output_shape: &[usize], states: &HashMap<String, BatchNormState>) -> Vec<u8> {
    let mut b = Builder { nodes: Vec::new(), inits: Vec::new() };
    // Per-sample shapes, for the operators that flatten their input (the graph was checked).
    let shapes = graph.infer_shapes().unwrap_or_default();
    let in_shape = |v: &str| shapes.iter().rev().find(|(n, _)| n == v).map(|(_, s)| s.clone()).unwrap_or_default();
    for n in &graph.nodes {
        let (name, out, x) = (n.name.as_str(), n.output.as_str(), n.inputs.clone());
        match &n.op {
            Op::Linear { weight, bias, act } => {
                let input = b.quantized_input(name, weight, &x[0]);
                let [w, bias] = b.weight(name, weight, bias);
                b.with_act("Gemm", name, vec![input, w, bias], out, vec![int("transB", 1)], *act);
            }
            Op::Conv { weight, bias, window, act } => {
                let input = b.quantized_input(name, weight, &x[0]);
                let [w, bias] = b.weight(name, weight, bias);
                b.with_act("Conv", name, vec![input, w, bias], out, window_attrs(window, true), *act);
            }
            Op::Affine { scale, shift, act } => {
                let c = scale.len();
                let folded = BatchNormState {
                    gamma: scale.clone(),
                    beta: shift.clone(),
                    mean: vec![0.0; c],
                    var: vec![1.0 - 1e-5; c],
                    epsilon: 1e-5,
                };
                let s = states.get(name).unwrap_or(&folded);
                let eps = s.epsilon;
                let ins = vec![
                    x[0].clone(),
                    b.init(format!("{name}.scale"), &[c], &s.gamma),
                    b.init(format!("{name}.shift"), &[c], &s.beta),
                    b.init(format!("{name}.mean"), &[c], &s.mean),
                    b.init(format!("{name}.var"), &[c], &s.var),
                ];
                b.with_act("BatchNormalization", name, ins, out, vec![float("epsilon", eps)], *act);
            }
            Op::Relu => b.node("Relu", name, x, out, vec![]),
            Op::MaxPool { window } => b.node("MaxPool", name, x, out, window_attrs(window, false)),
            Op::AvgPool { window, count_include_pad } => {
                let mut a = window_attrs(window, false);
                a.push(int("count_include_pad", *count_include_pad as i64));
                b.node("AveragePool", name, x, out, a)
            }
            Op::GlobalAvgPool => b.node("GlobalAveragePool", name, x, out, vec![]),
            Op::Add { act } => b.with_act("Add", name, x, out, vec![], *act),
            Op::Flatten => b.node("Flatten", name, x, out, vec![int("axis", 1)]),
            Op::Softmax { masked, zero_nan } => {
                // The mask's Add before it and ZeroNaN's IsNaN and Where after it, as imported.
                let scores = if *masked {
                    let sum = format!("{name}.masked");
                    b.node("Add", &sum, x.clone(), &sum, vec![]);
                    sum
                } else {
                    x[0].clone()
                };
                if *zero_nan {
                    let probabilities = format!("{name}.probabilities");
                    b.node("Softmax", &probabilities, vec![scores], &probabilities, vec![int("axis", -1)]);
                    crate::graph::Unary::ZeroNaN(crate::ops::ZeroNaN).write(&mut b, name, probabilities, out);
                } else {
                    b.node("Softmax", name, vec![scores], out, vec![int("axis", -1)]);
                }
            }
            Op::Pick { shape, sources } => {
                let flat = b.init_int64(format!("{name}.flat"), &[-1, in_shape(&x[0]).iter().product::<usize>() as i64]);
                let flattened = format!("{name}.flattened");
                b.node("Reshape", &format!("{name}.flatten"), vec![x[0].clone(), flat], &flattened, vec![]);
                let ix: Vec<i64> = sources.iter().map(|&i| i as i64).collect();
                let ix = b.init_int64(format!("{name}.sources"), &ix);
                let picked = format!("{name}.picked");
                b.node("Gather", name, vec![flattened, ix], &picked, vec![int("axis", 1)]);
                let dims: Vec<i64> = [-1].into_iter().chain(shape.iter().map(|&d| d as i64)).collect();
                let dims = b.init_int64(format!("{name}.shape"), &dims);
                b.node("Reshape", &format!("{name}.reshape"), vec![picked, dims], out, vec![]);
            }
            Op::Embed { table } => {
                let t = b.init(format!("{name}.table"), &table.shape, &table.data);
                let ix = b.cast(x[0].clone(), &format!("{name}.indices"), data_type::INT64);
                b.node("Gather", name, vec![t, ix], out, vec![int("axis", 0)]);
            }
            Op::LayerNorm { scale, bias, epsilon, columns } => {
                let s = b.init(format!("{name}.scale"), &[scale.len()], scale);
                let bias = b.init(format!("{name}.bias"), &[bias.len()], bias);
                let attributes = vec![int("axis", -1), float("epsilon", *epsilon)];
                if *columns {
                    // The features' axis (the first after the batch) moved last and back.
                    let rank = in_shape(&x[0]).len() + 1;
                    let last: Vec<usize> = [0].into_iter().chain(2..rank).chain([1]).collect();
                    let back: Vec<usize> = [0, rank - 1].into_iter().chain(1..rank - 1).collect();
                    let (rows, normalized) = (format!("{name}.rows"), format!("{name}.normalized"));
                    b.node("Transpose", &rows, vec![x[0].clone()], &rows, vec![ints("perm", &last)]);
                    b.node("LayerNormalization", &normalized, vec![rows, s, bias], &normalized, attributes);
                    b.node("Transpose", name, vec![normalized], out, vec![ints("perm", &back)]);
                } else {
                    b.node("LayerNormalization", name, vec![x[0].clone(), s, bias], out, attributes);
                }
            }
            Op::BatchMatMul { swapped } => {
                // A swapped matrix through a Transpose of its last two axes (batch axis first).
                let perm = |rank: usize| -> Vec<usize> { (0..rank - 2).chain([rank - 1, rank - 2]).collect() };
                let mut operands = x.clone();
                for (k, swap) in [swapped.a, swapped.b].into_iter().enumerate() {
                    if swap {
                        let rank = in_shape(&x[k]).len() + 1;
                        let t = format!("{name}.operand{k}");
                        b.node("Transpose", &t, vec![x[k].clone()], &t, vec![ints("perm", &perm(rank))]);
                        operands[k] = t;
                    }
                }
                if swapped.y {
                    let rank = in_shape(out).len() + 1;
                    let product = format!("{name}.product");
                    b.node("MatMul", &product, operands, &product, vec![]);
                    b.node("Transpose", name, vec![product], out, vec![ints("perm", &perm(rank))]);
                } else {
                    b.node("MatMul", name, operands, out, vec![]);
                }
            }
            Op::Where { x: on, y: off } => {
                let mut rest = x[1..].iter().cloned();
                let mut operand = |c: &Option<crate::graph::Operand>, which: &str| match c {
                    Some(c) => b.init(format!("{name}.{which}"), &c.shape, &c.values),
                    None => rest.next().expect("an input per missing constant"),
                };
                let (on, off) = (operand(on, "x"), operand(off, "y"));
                let cond = b.cast(x[0].clone(), &format!("{name}.condition"), data_type::BOOL);
                b.node("Where", name, vec![cond, on, off], out, vec![]);
            }
            Op::GroupConv { weight, bias, window, groups, act } => {
                let [w, bias] = b.weight(name, weight, bias);
                let mut attrs = window_attrs(window, true);
                attrs.push(int("group", *groups as i64));
                b.with_act("Conv", name, vec![x[0].clone(), w, bias], out, attrs, *act);
            }
            Op::Unary(f) => f.write(&mut b, name, x[0].clone(), out),
            Op::Binary { kind, constant, constant_first } => {
                let mut ins = x.clone();
                if let Some(c) = constant {
                    let operand = b.init(format!("{name}.constant"), &c.shape, &c.values);
                    ins.insert(if *constant_first { 0 } else { 1 }, operand);
                }
                if kind.is_boolean() {
                    // Logical operators read booleans; comparisons write them, held as 0 and 1.
                    if kind.reads_booleans() {
                        ins = ins.into_iter().enumerate().map(|(k, v)| b.cast(v, &format!("{name}.bool{k}"), data_type::BOOL)).collect();
                    }
                    let t = format!("{name}.result");
                    b.node(kind.onnx(), name, ins, &t, vec![]);
                    b.cast(t, out, data_type::FLOAT);
                } else {
                    b.node(kind.onnx(), name, ins, out, vec![]);
                }
            }
            Op::Concat { axis } => b.node("Concat", name, x, out, vec![int("axis", *axis as i64 + 1)]),
            Op::Reshape { shape } => {
                let dims: Vec<i64> = [-1].into_iter().chain(shape.iter().map(|&d| d as i64)).collect();
                let shape = b.init_int64(format!("{name}.shape"), &dims);
                b.node("Reshape", name, vec![x[0].clone(), shape], out, vec![]);
            }
            Op::Transpose { perm } => {
                let perm: Vec<usize> = [0].into_iter().chain(perm.iter().map(|a| a + 1)).collect();
                b.node("Transpose", name, x, out, vec![ints("perm", &perm)]);
            }
            Op::Select { indices } => {
                // One Gather per axis that is not read whole and in order.
                let dims = in_shape(&x[0]);
                let whole = |a: usize| indices[a].len() == dims[a] && indices[a].iter().enumerate().all(|(i, &j)| i == j);
                let moved: Vec<usize> = (0..indices.len()).filter(|&a| !whole(a)).collect();
                let mut value = x[0].clone();
                for (k, &a) in moved.iter().enumerate() {
                    let ix: Vec<i64> = indices[a].iter().map(|&i| i as i64).collect();
                    let ix = b.init_int64(format!("{name}.indices{a}"), &ix);
                    let target = if k + 1 == moved.len() { out.to_string() } else { format!("{name}.axis{a}") };
                    b.node("Gather", &format!("{name}.gather{a}"), vec![value, ix], &target, vec![int("axis", a as i64 + 1)]);
                    value = target;
                }
                if moved.is_empty() {
                    b.node("Identity", name, vec![value], out, vec![]);
                }
            }
            Op::QuantDequant { scale, zero } => b.quantize_dequantize(name, x[0].clone(), out, *scale, *zero),
        }
    }
    // Opset 13 (what DeepSparse 1.8 reads) unless an operator needs a later one.
    let unary_opset = graph.nodes.iter().filter_map(|n| if let Op::Unary(f) = n.op { Some(f.opset()) } else { None }).max();
    let layer_norm_opset = graph.nodes.iter().any(|n| matches!(n.op, Op::LayerNorm { .. })).then_some(17);
    let opset = unary_opset.into_iter().chain(layer_norm_opset).fold(13, i64::max);
    let model = ModelProto {
        ir_version: if opset >= 19 { 9 } else { 8 },
        producer_name: "sparsify".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(GraphProto {
            node: b.nodes,
            name: "model".into(),
            initializer: b.inits,
            input: vec![value_info(&graph.input, &graph.input_shape)],
            output: vec![value_info(&graph.output, output_shape)],
        }),
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: opset }],
    };
    model.encode_to_vec()
}
