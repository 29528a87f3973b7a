//! The user's own images for training: NumPy arrays, CIFAR binary batches and folders of
//! images, each read into the same `datasets::Dataset` the named datasets load into, with
//! per-channel normalisation constants measured on its training split.

mod cifar;
mod image_folder;
mod npy;

use std::path::{Path, PathBuf};

use anyhow::bail;
use datasets::{Dataset, Normalization, Source, Split};
use serde::Serialize;

/// The most classes a label (one byte) can name.
pub const MAX_CLASSES: usize = 256;

/// Where a recipe's images come from when they are not a named dataset (`[data] format`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "format", rename_all = "kebab-case")]
pub enum Files {
    /// Images `[N, C, H, W]`, `[N, H, W]` or features `[N, D]` (uint8 or float32) and integer
    /// labels `[N]`, in four `.npy` files.
    Npy { train_x: PathBuf, train_y: PathBuf, test_x: PathBuf, test_y: PathBuf },
    /// CIFAR-10's (`data_batch_1.bin` ... `data_batch_5.bin`, `test_batch.bin`) or CIFAR-100's
    /// (`train.bin`, `test.bin`, fine labels) binary version, in `path` or a folder inside it.
    Cifar { path: PathBuf },
    /// One sub-folder of PNG or JPEG images per class under `train` and under `test`, resized
    /// to `size x size` with `channels` 1 (grey) or 3 (RGB).
    ImageFolder { train: PathBuf, test: PathBuf, size: usize, channels: usize },
}

/// Reads `files` into a dataset called `name`: both splits checked to hold images of one shape
/// and labels below the number of classes; normalisation measured on the training split.
pub fn load(name: &str, files: &Files) -> anyhow::Result<Dataset> {
    let (train, test, classes, path) = match files {
        Files::Npy { train_x, train_y, test_x, test_y } => {
            let train = npy::split(train_x, train_y)?;
            let test = npy::split(test_x, test_y)?;
            let classes = train.labels.iter().chain(&test.labels).max().map_or(1, |&l| l as usize + 1);
            (train, test, classes, train_x.parent().unwrap_or(Path::new(".")).to_path_buf())
        }
        Files::Cifar { path } => {
            let (train, test, classes) = cifar::load(path)?;
            (train, test, classes, path.clone())
        }
        Files::ImageFolder { train, test, size, channels } => {
            let (train_split, test_split, classes) = image_folder::load(train, test, *size, *channels)?;
            (train_split, test_split, classes, train.clone())
        }
    };
    if train.is_empty() || test.is_empty() {
        bail!("{name}: the training and the test split each need at least one image ({} and {} found)", train.len(), test.len());
    }
    if train.shape() != test.shape() {
        bail!("{name}: training images are {:?} but test images are {:?} (channels, rows, columns)", train.shape(), test.shape());
    }
    if classes < 2 {
        bail!("{name}: the labels name {classes} class; classification needs at least 2");
    }
    Ok(Dataset {
        name: name.to_string(),
        source: Source::Dir { path, via: "recipe" },
        num_classes: classes,
        norm: Normalization::of(&train),
        train,
        test,
    })
}

/// Checks that `labels` (read from `path`) are class indices that fit a byte.
fn labels_from(path: &Path, values: impl Iterator<Item = f32>) -> anyhow::Result<Vec<u8>> {
    values
        .enumerate()
        .map(|(i, v)| {
            if v.fract() != 0.0 || v < 0.0 || v >= MAX_CLASSES as f32 {
                bail!("{}: label {v} at index {i} is not a class index 0..{}", path.display(), MAX_CLASSES - 1);
            }
            Ok(v as u8)
        })
        .collect()
}

/// A split of `shape` images, checked to have as many labels as images.
fn split_of(shape: [usize; 3], pixels: datasets::Pixels, labels: Vec<u8>, images: &Path, labels_path: &Path) -> anyhow::Result<Split> {
    let per_image: usize = shape.iter().product();
    let count = pixels.len().checked_div(per_image).unwrap_or(0);
    if count != labels.len() {
        bail!("{} has {count} images but {} has {} labels", images.display(), labels_path.display(), labels.len());
    }
    Ok(Split { channels: shape[0], rows: shape[1], cols: shape[2], pixels, labels })
}
