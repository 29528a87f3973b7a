//! The ONNX operators the importer reads: one table, each operator's name with the function that
//! reads its node into the graph and whether it folds where its inputs are constants (`fold`).
//! The element-wise operators come from their own registries (`crate::ops`: every operation on
//! two values folds), the operators of ONNX Runtime's quantizer from `qoperator`.

use super::import::Importer;
use super::proto::NodeProto;
use crate::error::Result;
use crate::graph::{BinaryKind, Unary};

/// Reads one node of the operator: its name for errors and its first input, resolved.
pub(super) type Read = fn(&mut Importer, &NodeProto, &str, String) -> Result<()>;

struct Operator {
    name: &'static str,
    /// Folded into a constant where every input is one (`fold::fold`), before `read`.
    folds: bool,
    read: Read,
}

const fn read(name: &'static str, read: Read) -> Operator {
    Operator { name, folds: false, read }
}

const fn folded(name: &'static str, read: Read) -> Operator {
    Operator { name, folds: true, read }
}

const OPERATORS: &[Operator] = &[
    read("Gemm", Importer::gemm),
    read("MatMul", Importer::matmul),
    read("Conv", Importer::conv),
    read("BatchNormalization", Importer::batch_norm),
    read("Relu", Importer::relu),
    read("MaxPool", Importer::pool),
    read("AveragePool", Importer::pool),
    read("GlobalAveragePool", Importer::global_average_pool),
    read("ReduceMean", Importer::reduce_mean),
    read("Softmax", Importer::softmax),
    folded("Concat", Importer::concat),
    read("Flatten", Importer::flatten),
    folded("Reshape", Importer::reshape),
    folded("Squeeze", Importer::squeeze),
    folded("Unsqueeze", Importer::squeeze),
    folded("Transpose", Importer::transpose),
    folded("Slice", Importer::slice),
    read("Split", Importer::split),
    folded("Gather", Importer::gather),
    read("GatherND", Importer::gather_nd),
    folded("Expand", Importer::expand),
    read("LayerNormalization", Importer::layer_norm),
    folded("Where", |i, node, name, _| i.where_(node, name)),
    read("Resize", Importer::resize),
    read("Upsample", Importer::resize),
    folded("Shape", Importer::constants_only),
    folded("Cast", Importer::cast),
    read("Constant", Importer::constant_value),
    folded("ConstantOfShape", Importer::constants_only),
    folded("Range", Importer::constants_only),
    folded("Max", Importer::constants_only),
    folded("Min", Importer::constants_only),
    read("Identity", Importer::alias),
    read("Dropout", Importer::alias),
    read("QuantizeLinear", Importer::quantize_linear),
    read("DequantizeLinear", Importer::dequantize_linear),
];

/// The operators of ONNX Runtime's quantizer in its QOperator format, read by `qoperator` on
/// quantized activations; the last three are its dynamic quantization, refused with the reason.
const QOPERATORS: &[&str] = &[
    "QLinearConv",
    "QLinearMatMul",
    "QGemm",
    "QLinearAdd",
    "QLinearGlobalAveragePool",
    "QLinearConcat",
    "QLinearSigmoid",
    "QLinearLeakyRelu",
    "QLinearSoftmax",
    "QLinearAveragePool",
    "DynamicQuantizeLinear",
    "MatMulInteger",
    "ConvInteger",
];

/// Whether `op` is one of `QOPERATORS`.
pub(super) fn is_qoperator(op: &str) -> bool {
    QOPERATORS.contains(&op)
}

/// The function that reads a node of type `op`, if the importer reads it.
pub(super) fn reader(op: &str) -> Option<Read> {
    match OPERATORS.iter().find(|o| o.name == op) {
        Some(o) => Some(o.read),
        None if BinaryKind::from_onnx(op).is_some() => Some(Importer::elementwise_binary),
        None if Unary::onnx_operators().any(|name| name == op) => Some(Importer::unary),
        None if is_qoperator(op) => Some(|i, node, _, _| i.qoperator(node)),
        None => None,
    }
}

/// Whether a node of type `op` is folded into a constant where every input is one.
pub(super) fn folds(op: &str) -> bool {
    OPERATORS.iter().any(|o| o.name == op && o.folds) || BinaryKind::from_onnx(op).is_some()
}

/// The standard ONNX operators the importer reads: the table's, then the element-wise
/// operations' and functions' (the engine guide, engine/README.md, lists them in this order).
pub fn operators() -> Vec<&'static str> {
    let binary = BinaryKind::ALL.iter().map(|k| k.onnx());
    OPERATORS.iter().map(|o| o.name).chain(binary).chain(Unary::onnx_operators()).collect()
}
