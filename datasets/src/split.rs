//! In-memory image classification data: a `Split` holds images and labels, a `Dataset` a train
//! and a test split with where they came from. Loading validates counts, shapes and labels.

use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};
use crate::idx;

/// Images and their labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    pub rows: usize,
    pub cols: usize,
    /// `[len, rows, cols]` row-major greyscale bytes.
    pub pixels: Vec<u8>,
    /// One class index per image.
    pub labels: Vec<u8>,
}

impl Split {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// Pixels per image.
    pub fn image_size(&self) -> usize {
        self.rows * self.cols
    }
    /// The bytes of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_size();
        &self.pixels[i * n..(i + 1) * n]
    }
    /// A new split with the images at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Split {
        let mut pixels = Vec::with_capacity(indices.len() * self.image_size());
        for &i in indices {
            pixels.extend_from_slice(self.image(i));
        }
        Split { rows: self.rows, cols: self.cols, pixels, labels: indices.iter().map(|&i| self.labels[i]).collect() }
    }
    /// Number of images per class, for `classes` classes.
    pub fn histogram(&self, classes: usize) -> Vec<usize> {
        let mut h = vec![0; classes];
        for &l in &self.labels {
            if (l as usize) < classes {
                h[l as usize] += 1;
            }
        }
        h
    }

    /// Reads an image file and a label file and checks that they belong together.
    pub fn read(images: &Path, labels: &Path, classes: usize) -> Result<Split> {
        let img = idx::read_images(images)?;
        let lab = idx::read_labels(labels)?;
        Split::check(img, images, lab, labels, classes)
    }

    /// Builds a split from IDX images and labels, checking counts and label range.
    pub fn check(img: idx::IdxImages, images: &Path, lab: Vec<u8>, labels: &Path, classes: usize) -> Result<Split> {
        if img.count != lab.len() {
            return Err(DataError::CountMismatch {
                images: images.into(),
                n_images: img.count,
                labels: labels.into(),
                n_labels: lab.len(),
            });
        }
        if let Some((index, &label)) = lab.iter().enumerate().find(|&(_, &l)| l as usize >= classes) {
            return Err(DataError::LabelOutOfRange { path: labels.into(), index, label, classes });
        }
        Ok(Split { rows: img.rows, cols: img.cols, pixels: img.pixels, labels: lab })
    }
}

/// Where a dataset's files were found.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A folder on disk, with the reason it was chosen (`--data`, `./data`, system, cache).
    Dir { path: PathBuf, via: &'static str },
    /// The subset compiled into the binary.
    Embedded,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Dir { path, via } => write!(f, "{} ({via})", path.display()),
            Source::Embedded => write!(f, "embedded subset (a real but small part of the test and training sets)"),
        }
    }
}

/// A train and a test split of a named dataset.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub name: String,
    pub source: Source,
    pub num_classes: usize,
    /// Normalisation constants of the full training set.
    pub mean: f32,
    pub std: f32,
    pub train: Split,
    pub test: Split,
}
