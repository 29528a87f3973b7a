//! The engine's error type: every variant says which file, node or tensor it is about; and
//! `try_zeros`, an allocation that fails with an error of this type instead of aborting.

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The I/O error's text is part of the line (not a `source`, which error chains would print
    /// a second time).
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("{path}: not a valid model file: {reason}")]
    Format { path: String, reason: String },
    #[error("{path}: not a valid ONNX file: {reason}")]
    Onnx { path: String, reason: String },
    #[error("unsupported ONNX operators: {ops}; the engine reads {supported}")]
    UnsupportedOps { ops: String, supported: String },
    #[error("node '{node}': {reason}")]
    Graph { node: String, reason: String },
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// Input values the engine refuses (NaN or infinite).
    #[error("{0}")]
    Input(String),
    /// A bad environment setting (`ENGINE_ISA`, `ENGINE_AMX`): the message names it.
    #[error("{0}")]
    Setting(String),
    #[error("{path}: not a valid .npy file: {reason}")]
    Npy { path: String, reason: String },
    /// A buffer too large for this machine (a batch size of millions, say).
    #[error("cannot allocate {what}: {} MB", bytes.div_ceil(1 << 20))]
    Memory { what: String, bytes: usize },
}

impl EngineError {
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        EngineError::Io { path: path.as_ref().display().to_string(), error: source }
    }
    pub fn graph(node: impl Into<String>, reason: impl Into<String>) -> Self {
        EngineError::Graph { node: node.into(), reason: reason.into() }
    }
}

pub type Result<T> = std::result::Result<T, EngineError>;

/// `len` zeros, or `EngineError::Memory` naming `what` where the allocation fails (or its size
/// overflows), instead of aborting the process.
pub fn try_zeros(len: Option<usize>, what: impl Fn() -> String) -> Result<Vec<f32>> {
    let fail = |bytes| EngineError::Memory { what: what(), bytes };
    let len = len.ok_or_else(|| fail(usize::MAX))?;
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| fail(len.saturating_mul(4)))?;
    v.resize(len, 0.0);
    Ok(v)
}
