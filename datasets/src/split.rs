//! In-memory image classification data: a `Split` holds images (bytes or floats, `[C, H, W]`
//! each) and labels, a `Dataset` a train and a test split with where they came from and how to
//! normalise them. Loading validates counts, shapes and labels.

use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};
use crate::idx;

/// The values of a split's images, sample-major, each `[channels, rows, cols]` row-major.
#[derive(Debug, Clone, PartialEq)]
pub enum Pixels {
    /// Bytes 0-255, read as `byte / 255` before normalisation.
    Bytes(Vec<u8>),
    /// Values taken as they are before normalisation.
    Floats(Vec<f32>),
}

impl Pixels {
    pub fn len(&self) -> usize {
        match self {
            Pixels::Bytes(v) => v.len(),
            Pixels::Floats(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The bytes, for byte images.
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Pixels::Bytes(v) => Some(v),
            Pixels::Floats(_) => None,
        }
    }
    /// What a value of 1 is stored as: 255 for bytes, 1 for floats.
    pub fn unit(&self) -> f32 {
        match self {
            Pixels::Bytes(_) => 255.0,
            Pixels::Floats(_) => 1.0,
        }
    }
    /// Value `i` as stored (a byte as a float, not yet divided by `unit`).
    pub fn raw(&self, i: usize) -> f32 {
        match self {
            Pixels::Bytes(v) => v[i] as f32,
            Pixels::Floats(v) => v[i],
        }
    }
    /// The values `range` as stored, appended in order.
    pub fn extend_raw(&self, range: std::ops::Range<usize>, out: &mut Vec<f32>) {
        match self {
            Pixels::Bytes(v) => out.extend(v[range].iter().map(|&p| p as f32)),
            Pixels::Floats(v) => out.extend_from_slice(&v[range]),
        }
    }
    /// The values at `ranges`, in order, of the same kind.
    fn gather(&self, ranges: impl Iterator<Item = std::ops::Range<usize>>) -> Pixels {
        match self {
            Pixels::Bytes(v) => Pixels::Bytes(ranges.flat_map(|r| v[r].iter().copied()).collect()),
            Pixels::Floats(v) => Pixels::Floats(ranges.flat_map(|r| v[r].iter().copied()).collect()),
        }
    }
}

/// Images and their labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    pub channels: usize,
    pub rows: usize,
    pub cols: usize,
    /// `[len, channels, rows, cols]`, row-major.
    pub pixels: Pixels,
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
    /// Values per image.
    pub fn image_size(&self) -> usize {
        self.channels * self.rows * self.cols
    }
    /// `[channels, rows, cols]` of every image.
    pub fn shape(&self) -> [usize; 3] {
        [self.channels, self.rows, self.cols]
    }
    /// The positions of image `i`'s values in `pixels`.
    pub fn range(&self, i: usize) -> std::ops::Range<usize> {
        let n = self.image_size();
        i * n..(i + 1) * n
    }
    /// A new split with the images at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Split {
        Split {
            channels: self.channels,
            rows: self.rows,
            cols: self.cols,
            pixels: self.pixels.gather(indices.iter().map(|&i| self.range(i))),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
        }
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
        Ok(Split { channels: 1, rows: img.rows, cols: img.cols, pixels: Pixels::Bytes(img.pixels), labels: lab })
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
    /// How images become network inputs (per channel).
    pub norm: Normalization,
    pub train: Split,
    pub test: Split,
}

/// Per-channel standardisation: `(value - mean[c]) / std[c]` of values divided by their
/// `Pixels::unit` (bytes divided by 255).
#[derive(Debug, Clone, PartialEq)]
pub struct Normalization {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Normalization {
    /// The same mean and standard deviation for every one of `channels` channels.
    pub fn uniform(mean: f32, std: f32, channels: usize) -> Normalization {
        Normalization { mean: vec![mean; channels], std: vec![std; channels] }
    }

    /// Each channel's mean and standard deviation over `split` (a channel with no spread gets
    /// a standard deviation of 1, so its values are only centred).
    pub fn of(split: &Split) -> Normalization {
        let (c, plane) = (split.channels, split.rows * split.cols);
        let mut sums = vec![(0.0f64, 0.0f64); c];
        for i in 0..split.len() {
            let base = split.range(i).start;
            for (ch, (sum, squares)) in sums.iter_mut().enumerate() {
                for p in base + ch * plane..base + (ch + 1) * plane {
                    let v = (split.pixels.raw(p) / split.pixels.unit()) as f64;
                    *sum += v;
                    *squares += v * v;
                }
            }
        }
        let n = (split.len() * plane).max(1) as f64;
        let (mean, std) = sums
            .iter()
            .map(|&(sum, squares)| {
                let mean = sum / n;
                let std = (squares / n - mean * mean).max(0.0).sqrt();
                (mean as f32, if std > 1e-12 { std as f32 } else { 1.0 })
            })
            .unzip();
        Normalization { mean, std }
    }
}
