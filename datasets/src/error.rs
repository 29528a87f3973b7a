//! The one error type of the data layer: every variant names the file or URL it is about and
//! says what was expected and what was found, so a user can act on a single line.

use std::path::PathBuf;

/// Everything that can go wrong while finding, downloading or reading a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The I/O error's text is part of the line (not a `source`, which error chains would print
    /// a second time).
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },

    #[error("{path}: not a valid gzip stream ({reason})")]
    Gzip { path: PathBuf, reason: String },

    #[error("{path}: bad IDX magic number: expected {expected:#010x}, found {found:#010x}")]
    BadMagic { path: PathBuf, expected: u32, found: u32 },

    #[error("{path}: truncated IDX file: expected {expected} bytes, found {found}")]
    Truncated { path: PathBuf, expected: u64, found: u64 },

    #[error("{path}: IDX file has {extra} trailing bytes after the declared data")]
    TrailingBytes { path: PathBuf, extra: u64 },

    #[error("{path}: {what}: expected {expected}, found {found}")]
    Shape { path: PathBuf, what: String, expected: String, found: String },

    #[error("{images} has {n_images} images but {labels} has {n_labels} labels")]
    CountMismatch { images: PathBuf, n_images: usize, labels: PathBuf, n_labels: usize },

    #[error("{path}: label {label} at index {index} is outside the {classes} classes")]
    LabelOutOfRange { path: PathBuf, index: usize, label: u8, classes: usize },

    #[error("unknown dataset '{name}' (known: {known})")]
    UnknownDataset { name: String, known: String },

    #[error("dataset '{name}' not found in {dir}: missing {missing}")]
    MissingFiles { name: String, dir: PathBuf, missing: String },

    #[error(
        "dataset '{name}' not found (looked in {looked}); install Debian's dataset-{name}, run `datasets fetch {name}` or pass --data DIR{}",
        if *subset { format!(", or use the embedded 10,000/2,000-image subset knowingly: --allow-subset, or dataset \"{name}-subset\"") } else { String::new() }
    )]
    NotFound { name: String, looked: String, subset: bool },

    #[error("download of {url} failed: {reason}")]
    Download { url: String, reason: String },

    #[error("download of {url}: sha256 mismatch: expected {expected}, found {found}")]
    Checksum { url: String, expected: String, found: String },

    #[error("{0}")]
    Invalid(String),
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io { path: path.into(), error: source }
    }
}

pub type Result<T> = std::result::Result<T, DataError>;
