//! ONNX in and out: `import` reads models from PyTorch, SparseML and others; `export` writes the
//! engine's graphs for ONNX Runtime and DeepSparse.

pub mod export;
mod fold;
pub mod import;
mod layer_norm;
mod layout;
pub mod proto;
mod qoperator;
mod registry;
mod sequence;
pub mod tensor;
pub mod training;

/// A BatchNormalization's own parameters (the engine's graph keeps only the per-channel scale
/// and shift they make): what training needs to go on from a file.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchNormState {
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
    pub epsilon: f32,
}
