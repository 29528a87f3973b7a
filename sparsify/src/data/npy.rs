//! Images and labels from NumPy `.npy` files (the engine's reader): images uint8 (0-255) or
//! float32/float64 (taken as they are), labels integers.

use std::path::Path;

use anyhow::bail;
use datasets::{Pixels, Split};

/// The split in `images` and `labels`.
pub fn split(images: &Path, labels: &Path) -> anyhow::Result<Split> {
    let (x, x_type) = engine::npy::read_typed(images)?;
    let shape = match x.shape[..] {
        [_, c, h, w] => [c, h, w],
        [_, h, w] => [1, h, w],
        [_, d] => [1, 1, d],
        _ => bail!("{}: images must be [N, C, H, W], [N, H, W] or features [N, D], found shape {:?}", images.display(), x.shape),
    };
    if shape.contains(&0) {
        bail!("{}: images of shape {:?} hold no values", images.display(), x.shape);
    }
    let pixels = match x_type.as_str() {
        "|u1" => Pixels::Bytes(x.data.iter().map(|&v| v as u8).collect()),
        "<f4" | "<f8" => {
            if let Some(i) = x.data.iter().position(|v| !v.is_finite()) {
                bail!("{}: value {} at index {i} is not finite", images.display(), x.data[i]);
            }
            Pixels::Floats(x.data)
        }
        other => bail!("{}: images must be uint8 or float32, found dtype '{other}'", images.display()),
    };
    let (y, y_type) = engine::npy::read_typed(labels)?;
    if !matches!(y_type.as_str(), "<i8" | "<i4" | "|u1") || !matches!(y.shape[..], [_] | [_, 1]) {
        bail!("{}: labels must be integers of shape [N], found dtype '{y_type}' and shape {:?}", labels.display(), y.shape);
    }
    let labels_read = super::labels_from(labels, y.data.into_iter())?;
    super::split_of(shape, pixels, labels_read, images, labels)
}
