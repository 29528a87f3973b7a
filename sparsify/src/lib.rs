//! sparsify: recipe-driven gradual magnitude pruning on burn, what SparseML gives PyTorch users.
//! A recipe (`recipe`) names the model, data (a named dataset or the user's files, `data`),
//! optimizer and modifiers; `train` runs it with
//! masks (`mask`, `prune`), fake quantization (`quant`) and our optimizers (`optim`) over burn's autodiff (`step`), writing
//! checkpoints, metrics and run metadata; `export` writes the engine's model file or ONNX.

pub mod arch;
pub mod checkpoint;
pub mod data;
pub mod distill;
pub mod export;
pub mod mask;
pub mod model;
pub mod oneshot;
pub mod ops;
pub mod optim;
pub mod plot;
pub mod profile;
pub mod prune;
pub mod quant;
pub mod recipe;
pub mod run;
pub mod step;
pub mod targets;
pub mod train;
