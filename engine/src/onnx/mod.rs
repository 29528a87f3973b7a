//! ONNX in and out: `import` reads models from PyTorch, SparseML and others; `export` writes the
//! engine's graphs for ONNX Runtime and DeepSparse.

pub mod export;
mod fold;
pub mod import;
mod layer_norm;
mod layout;
pub mod proto;
mod qoperator;
mod sequence;
pub mod tensor;
