//! A recipe's `[data]` table resolved: a named dataset or the user's files, batching, subsets,
//! normalisation and augmentation, each field checked against the format it belongs to.

use std::path::PathBuf;

use serde::Serialize;

use super::schema::{DataFormat, Num, RawData};
use super::{MAX_BATCH, RecipeError, Resolver};
use crate::data::Files;

/// Largest image side `image-folder` resizes to.
pub const MAX_IMAGE_SIDE: usize = 4096;
/// Largest crop padding of the augmentation.
pub const MAX_CROP_PADDING: usize = 1024;

/// Data settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Data {
    /// The named dataset, or a label for the user's files.
    pub dataset: String,
    /// The user's files (`format` and its paths), if not a named dataset.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub files: Option<Files>,
    pub batch_size: usize,
    pub validation: f64,
    pub train_subset: usize,
    pub test_subset: usize,
    /// Per-channel normalisation set in the recipe (else the dataset's own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean: Option<Vec<f32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub std: Option<Vec<f32>>,
    /// Zero padding of the random crop applied to training images (0: none).
    pub random_crop: usize,
    /// Random horizontal flips of training images.
    pub flip: bool,
}

impl Data {
    /// The input `[channels, rows, cols]` and classes the model is built for before the data are
    /// read: exact for named datasets; for CIFAR and image folders the image shape and nominal
    /// 10 classes; for `.npy` files nominal 28x28 greyscale images. For structure-only uses
    /// (parameter names, recipe checks); training builds the model for the data it reads.
    pub fn nominal(&self) -> ([usize; 3], usize) {
        match &self.files {
            None => ([1, 28, 28], datasets::registry::spec(&self.dataset).map_or(10, |s| s.num_classes())),
            Some(Files::Cifar { .. }) => ([3, 32, 32], 10),
            Some(Files::ImageFolder { size, channels, .. }) => ([*channels, *size, *size], 10),
            Some(Files::Npy { .. }) => ([1, 28, 28], 10),
        }
    }

    /// The augmentation of training images.
    pub fn augment(&self) -> datasets::batch::Augment {
        datasets::batch::Augment { crop_padding: self.random_crop, flip: self.flip }
    }

    /// The recipe's normalisation for `channels` channels (one value stands for every channel),
    /// or `default`.
    pub fn normalization(&self, default: datasets::Normalization, channels: usize) -> Result<datasets::Normalization, String> {
        let per_channel = |field: &str, values: &Option<Vec<f32>>, default: Vec<f32>| match values {
            None => Ok(default),
            Some(v) if v.len() == 1 => Ok(vec![v[0]; channels]),
            Some(v) if v.len() == channels => Ok(v.clone()),
            Some(v) => Err(format!("[data] {field}: {} values for images of {channels} channels (give 1 or {channels})", v.len())),
        };
        Ok(datasets::Normalization {
            mean: per_channel("mean", &self.mean, default.mean)?,
            std: per_channel("std", &self.std, default.std)?,
        })
    }
}

impl Resolver<'_> {
    /// Resolves and checks `[data]`.
    pub(super) fn data(&self, d: &RawData) -> Result<Data, RecipeError> {
        let files = match d.format {
            None => None,
            Some(format) => Some(self.files(format, d)?),
        };
        self.only_for(d, files.as_ref())?;
        let dataset = match (&d.dataset, &d.format) {
            (Some(name), _) => name.clone(),
            (None, None) => datasets::DEFAULT_DATASET.to_string(),
            (None, Some(DataFormat::Npy)) => "npy".into(),
            (None, Some(DataFormat::Cifar)) => "cifar".into(),
            (None, Some(DataFormat::ImageFolder)) => "image-folder".into(),
        };
        if files.is_none() {
            datasets::registry::spec(&dataset).map_err(|e| self.err("dataset", e))?;
        }
        let data = Data {
            dataset,
            files,
            batch_size: self.count("batch_size", &d.batch_size)?,
            validation: self.num("validation", &d.validation)?,
            train_subset: self.count("train_subset", &d.train_subset)?,
            test_subset: self.count("test_subset", &d.test_subset)?,
            mean: self.constants("mean", &d.mean, f64::NEG_INFINITY)?,
            std: self.constants("std", &d.std, 0.0)?,
            random_crop: self.count("random_crop", d.random_crop.as_ref().unwrap_or(&Num::Value(0.0)))?,
            flip: d.flip,
        };
        if data.batch_size == 0 || data.batch_size > MAX_BATCH {
            return Err(self.err("batch_size", format!("must be 1..={MAX_BATCH}, found {}", data.batch_size)));
        }
        if !(0.0..1.0).contains(&data.validation) {
            return Err(self.err("validation", "must be in [0, 1)"));
        }
        if data.random_crop > MAX_CROP_PADDING {
            return Err(self.err("random_crop", format!("must be at most {MAX_CROP_PADDING}, found {}", data.random_crop)));
        }
        Ok(data)
    }

    /// The paths and sizes the format needs.
    fn files(&self, format: DataFormat, d: &RawData) -> Result<Files, RecipeError> {
        let path = |field: &str, value: &Option<String>| -> Result<PathBuf, RecipeError> {
            match value {
                Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
                _ => Err(self.err(field, format!("format = \"{}\" needs {field}", format_name(format)))),
            }
        };
        Ok(match format {
            DataFormat::Npy => Files::Npy {
                train_x: path("train_x", &d.train_x)?,
                train_y: path("train_y", &d.train_y)?,
                test_x: path("test_x", &d.test_x)?,
                test_y: path("test_y", &d.test_y)?,
            },
            DataFormat::Cifar => Files::Cifar { path: path("path", &d.path)? },
            DataFormat::ImageFolder => {
                let size = self.count("size", d.size.as_ref().unwrap_or(&Num::Value(32.0)))?;
                if !(1..=MAX_IMAGE_SIDE).contains(&size) {
                    return Err(self.err("size", format!("must be 1..={MAX_IMAGE_SIDE}, found {size}")));
                }
                let channels = self.count("channels", d.channels.as_ref().unwrap_or(&Num::Value(3.0)))?;
                if channels != 1 && channels != 3 {
                    return Err(self.err("channels", format!("must be 1 (grey) or 3 (RGB), found {channels}")));
                }
                Files::ImageFolder { train: path("train", &d.train)?, test: path("test", &d.test)?, size, channels }
            }
        })
    }

    /// Refuses a field that belongs to another format than the recipe's.
    fn only_for(&self, d: &RawData, files: Option<&Files>) -> Result<(), RecipeError> {
        let format = match files {
            None => "a named dataset (no format)",
            Some(Files::Npy { .. }) => "format = \"npy\"",
            Some(Files::Cifar { .. }) => "format = \"cifar\"",
            Some(Files::ImageFolder { .. }) => "format = \"image-folder\"",
        };
        let npy = matches!(files, Some(Files::Npy { .. }));
        let cifar = matches!(files, Some(Files::Cifar { .. }));
        let folder = matches!(files, Some(Files::ImageFolder { .. }));
        let fields: [(&str, bool, bool); 9] = [
            ("train_x", d.train_x.is_some(), npy),
            ("train_y", d.train_y.is_some(), npy),
            ("test_x", d.test_x.is_some(), npy),
            ("test_y", d.test_y.is_some(), npy),
            ("path", d.path.is_some(), cifar),
            ("train", d.train.is_some(), folder),
            ("test", d.test.is_some(), folder),
            ("size", d.size.is_some(), folder),
            ("channels", d.channels.is_some(), folder),
        ];
        match fields.iter().find(|&&(_, given, allowed)| given && !allowed) {
            Some((field, ..)) => Err(self.err(field, format!("is not a setting of {format}"))),
            None => Ok(()),
        }
    }

    /// Normalisation constants: finite and above `above`.
    fn constants(&self, field: &str, values: &Option<Vec<f64>>, above: f64) -> Result<Option<Vec<f32>>, RecipeError> {
        let Some(values) = values else { return Ok(None) };
        if values.is_empty() || values.iter().any(|v| !v.is_finite() || *v <= above) {
            let what = if above == 0.0 { "positive numbers" } else { "finite numbers" };
            return Err(self.err(field, format!("must be one or more {what} (one per channel), found {values:?}")));
        }
        Ok(Some(values.iter().map(|&v| v as f32).collect()))
    }
}

fn format_name(format: DataFormat) -> &'static str {
    match format {
        DataFormat::Npy => "npy",
        DataFormat::Cifar => "cifar",
        DataFormat::ImageFolder => "image-folder",
    }
}
