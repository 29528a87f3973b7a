//! The named datasets the toolkit knows: their files, upstream addresses, checksums, classes and
//! normalisation constants. `fashion-mnist` is the default everywhere.

use crate::error::{DataError, Result};

/// One file of a dataset as published upstream.
#[derive(Debug, Clone, Copy)]
pub struct RemoteFile {
    /// File name, identical upstream and on disk.
    pub name: &'static str,
    /// SHA-256 of the file exactly as published (gzip-compressed).
    pub sha256: &'static str,
}

/// A dataset of 28x28 greyscale images in four IDX files.
#[derive(Debug, Clone, Copy)]
pub struct DatasetSpec {
    pub name: &'static str,
    /// Base URL the four files are downloaded from.
    pub url: &'static str,
    pub train_images: RemoteFile,
    pub train_labels: RemoteFile,
    pub test_images: RemoteFile,
    pub test_labels: RemoteFile,
    pub class_names: &'static [&'static str],
    /// Mean and standard deviation of the training pixels scaled to [0, 1].
    pub mean: f32,
    pub std: f32,
}

impl DatasetSpec {
    pub fn files(&self) -> [RemoteFile; 4] {
        [self.train_images, self.train_labels, self.test_images, self.test_labels]
    }
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }
}

/// The dataset used when none is named.
pub const DEFAULT_DATASET: &str = "fashion-mnist";

pub const FASHION_MNIST: DatasetSpec = DatasetSpec {
    name: "fashion-mnist",
    url: "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    train_images: RemoteFile {
        name: "train-images-idx3-ubyte.gz",
        sha256: "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    },
    train_labels: RemoteFile {
        name: "train-labels-idx1-ubyte.gz",
        sha256: "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    },
    test_images: RemoteFile {
        name: "t10k-images-idx3-ubyte.gz",
        sha256: "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    },
    test_labels: RemoteFile {
        name: "t10k-labels-idx1-ubyte.gz",
        sha256: "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    },
    class_names: &["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
    mean: 0.2860,
    std: 0.3530,
};

pub const MNIST: DatasetSpec = DatasetSpec {
    name: "mnist",
    url: "https://ossci-datasets.s3.amazonaws.com/mnist/",
    train_images: RemoteFile {
        name: "train-images-idx3-ubyte.gz",
        sha256: "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    },
    train_labels: RemoteFile {
        name: "train-labels-idx1-ubyte.gz",
        sha256: "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    },
    test_images: RemoteFile {
        name: "t10k-images-idx3-ubyte.gz",
        sha256: "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    },
    test_labels: RemoteFile {
        name: "t10k-labels-idx1-ubyte.gz",
        sha256: "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    },
    class_names: &["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
    mean: 0.1307,
    std: 0.3081,
};

/// Every named dataset.
pub const ALL: [DatasetSpec; 2] = [FASHION_MNIST, MNIST];

/// Looks a dataset up by name (`fashion-mnist-subset`, the embedded subset, has the full set's
/// spec).
pub fn spec(name: &str) -> Result<DatasetSpec> {
    let base = crate::embedded::subset_of(name).unwrap_or(name);
    ALL.iter().copied().find(|s| s.name == base).ok_or_else(|| DataError::UnknownDataset {
        name: name.to_string(),
        known: ALL.iter().map(|s| s.name).collect::<Vec<_>>().join(", "),
    })
}
