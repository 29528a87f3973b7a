//! Folders of images, one sub-folder per class (torchvision's `ImageFolder` layout): PNG and
//! JPEG files decoded, converted to grey or RGB and resized (bilinear) to a square.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use datasets::{Pixels, Split};
use image::imageops::FilterType;
use rayon::prelude::*;

/// The training and test splits and the number of classes: the classes are the training
/// folder's sub-folders in name order; the test folder's must be among them.
pub fn load(train: &Path, test: &Path, size: usize, channels: usize) -> anyhow::Result<(Split, Split, usize)> {
    let classes = class_folders(train)?;
    if classes.len() > super::MAX_CLASSES {
        bail!("{}: {} class folders; at most {} classes are supported", train.display(), classes.len(), super::MAX_CLASSES);
    }
    let test_classes = class_folders(test)?;
    if let Some(extra) = test_classes.iter().find(|c| !classes.contains(c)) {
        bail!("{}: class folder '{extra}' has no counterpart in {}", test.display(), train.display());
    }
    let train_split = read(train, &classes, size, channels)?;
    let test_split = read(test, &classes, size, channels)?;
    Ok((train_split, test_split, classes.len()))
}

/// The names of the sub-folders of `dir`, sorted.
fn class_folders(dir: &Path) -> anyhow::Result<Vec<String>> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading the image folder {}", dir.display()))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        if entry.path().is_dir() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    if names.is_empty() {
        bail!("{}: no class folders (one sub-folder of images per class)", dir.display());
    }
    Ok(names)
}

fn is_image(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| ["png", "jpg", "jpeg"].contains(&e.to_ascii_lowercase().as_str()))
}

/// Every image under `root/<class>` for the classes present, in class then file-name order.
fn read(root: &Path, classes: &[String], size: usize, channels: usize) -> anyhow::Result<Split> {
    let mut files: Vec<(PathBuf, u8)> = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let dir = root.join(class);
        if !dir.is_dir() {
            continue;
        }
        let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && is_image(p))
            .collect();
        if found.is_empty() {
            bail!("{}: no PNG or JPEG images in this class folder", dir.display());
        }
        found.sort();
        files.extend(found.into_iter().map(|p| (p, label as u8)));
    }
    let images: Vec<Vec<u8>> = files.par_iter().map(|(path, _)| decode(path, size, channels)).collect::<anyhow::Result<_>>()?;
    let labels = files.iter().map(|&(_, l)| l).collect();
    Ok(Split { channels, rows: size, cols: size, pixels: Pixels::Bytes(images.concat()), labels })
}

/// One image as `[channels, size, size]` bytes.
fn decode(path: &Path, size: usize, channels: usize) -> anyhow::Result<Vec<u8>> {
    let img = image::open(path).with_context(|| format!("{}: not a readable PNG or JPEG image", path.display()))?;
    let side = u32::try_from(size).expect("size is checked by the recipe");
    let img = img.resize_exact(side, side, FilterType::Triangle);
    let interleaved = if channels == 1 { img.to_luma8().into_raw() } else { img.to_rgb8().into_raw() };
    // Channel-major, as the network reads it.
    let plane = size * size;
    Ok((0..channels).flat_map(|c| (0..plane).map(move |p| (c, p))).map(|(c, p)| interleaved[p * channels + c]).collect())
}
