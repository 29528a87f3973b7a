//! The data layer of the toolkit: IDX readers, named datasets and where to find them, downloads
//! with checksums, an embedded real subset of Fashion-MNIST, batching and a synthetic generator.
//!
//! ```no_run
//! let data = datasets::Resolver::new(None, false).load("fashion-mnist")?;
//! println!("{} training images from {}", data.train.len(), data.source);
//! # Ok::<(), datasets::DataError>(())
//! ```

pub mod batch;
pub mod cli;
pub mod download;
pub mod embedded;
pub mod error;
pub mod idx;
pub mod registry;
pub mod resolve;
pub mod split;
pub mod synthetic;

pub use error::{DataError, Result};
pub use registry::DEFAULT_DATASET;
pub use resolve::Resolver;
pub use split::{Dataset, Normalization, Pixels, Source, Split};
