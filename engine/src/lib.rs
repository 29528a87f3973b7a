//! A sparse CPU inference runtime. It loads its own model file (`format`, written by
//! `sparsify export`) or ONNX, compiles the graph by choosing a dense or sparse kernel per layer
//! from timings on the layer's real shape, and runs batches in feature-major tiles.
//!
//! ```no_run
//! let graph = engine::load(std::path::Path::new("model.sparse"))?;
//! let model = engine::compile::compile(graph, engine::compile::Options::new(Default::default())?)?;
//! let mut session = engine::exec::Session::new(&model, 2)?;
//! let logits = session.run(&vec![0.0; 784], 1)?;
//! # Ok::<(), engine::EngineError>(())
//! ```

pub mod catalogue;
pub mod compile;
pub mod error;
pub mod exec;
pub mod format;
pub mod fsutil;
pub mod graph;
pub mod kernels;
pub mod layout;
pub mod npy;
pub mod onnx;
pub mod ops;
pub mod passes;
pub mod phases;
pub mod report;
pub mod row_passes;
pub mod schedule;
pub mod sequence;
pub mod stats;
pub mod team;
pub mod testing;
pub mod top1;

use std::path::Path;

pub use error::{EngineError, Result};

/// Which kind of file a model is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Native,
    Onnx,
}

/// Tells a native file (safetensors: an 8-byte header length then `{`) from ONNX (protobuf).
pub fn sniff(bytes: &[u8]) -> FileKind {
    if bytes.len() > 8 && bytes[8] == b'{' { FileKind::Native } else { FileKind::Onnx }
}

/// Loads a model file of either kind (an ONNX file's external data from its folder).
pub fn load(path: &Path) -> Result<graph::Graph> {
    let bytes = std::fs::read(path).map_err(|e| EngineError::io(path, e))?;
    if sniff(&bytes) == FileKind::Native {
        return format::from_bytes(&bytes, &path.display().to_string());
    }
    let g = onnx::import::import_file(&bytes, path)?;
    g.infer_shapes()?;
    Ok(g)
}

/// Parses a model file's bytes of either kind and validates the graph (`Graph::infer_shapes`);
/// `name` names the file in errors.
pub fn load_bytes(bytes: &[u8], name: &str) -> Result<graph::Graph> {
    match sniff(bytes) {
        FileKind::Native => format::from_bytes(bytes, name),
        FileKind::Onnx => {
            let g = onnx::import::import_bytes(bytes, name)?;
            g.infer_shapes()?;
            Ok(g)
        }
    }
}
