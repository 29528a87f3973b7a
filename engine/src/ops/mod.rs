//! Element-wise operators, each whole in one file (its ONNX name and attributes, its definition
//! on one value, its loop over a tile, how it is written back to ONNX), listed in one registry
//! per kind: functions of one value (`unary`) and operations on two (`binary`).

pub mod binary;
pub mod unary;

pub use binary::BinaryKind;
pub use unary::*;
