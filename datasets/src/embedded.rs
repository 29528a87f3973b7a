//! A real subset of Fashion-MNIST compiled into the binary, so that every command works offline on
//! real images. `embedded/make_subset.py` regenerates it from the official files (1000 training
//! and 200 test images per class, the first of each class in file order) and checks its checksums.

use std::path::Path;

use crate::error::Result;
use crate::idx;
use crate::registry::FASHION_MNIST;
use crate::split::{Dataset, Normalization, Source, Split};

const TRAIN_IMAGES: &[u8] = include_bytes!("../embedded/fashion-mnist/train-images-idx3-ubyte.gz");
const TRAIN_LABELS: &[u8] = include_bytes!("../embedded/fashion-mnist/train-labels-idx1-ubyte.gz");
const TEST_IMAGES: &[u8] = include_bytes!("../embedded/fashion-mnist/t10k-images-idx3-ubyte.gz");
const TEST_LABELS: &[u8] = include_bytes!("../embedded/fashion-mnist/t10k-labels-idx1-ubyte.gz");

/// Whether a subset of the named dataset is embedded.
pub fn has_subset(name: &str) -> bool {
    name == FASHION_MNIST.name
}

/// The name that asks for the embedded subset itself (`fashion-mnist-subset`): the dataset it
/// is a subset of, if `name` is such a name.
pub fn subset_of(name: &str) -> Option<&str> {
    name.strip_suffix("-subset").filter(|base| has_subset(base))
}

fn split(images: &'static [u8], labels: &'static [u8], which: &str) -> Result<Split> {
    let img_name = Path::new("<embedded>").join(format!("{which}-images.gz"));
    let lab_name = Path::new("<embedded>").join(format!("{which}-labels.gz"));
    let img = idx::images_from_bytes(&img_name, images.to_vec())?;
    let lab = idx::labels_from_bytes(&lab_name, labels.to_vec())?;
    Split::check(img, &img_name, lab, &lab_name, FASHION_MNIST.num_classes())
}

/// Loads the embedded Fashion-MNIST subset.
pub fn load() -> Result<Dataset> {
    Ok(Dataset {
        name: FASHION_MNIST.name.to_string(),
        source: Source::Embedded,
        num_classes: FASHION_MNIST.num_classes(),
        norm: Normalization::uniform(FASHION_MNIST.mean, FASHION_MNIST.std, 1),
        train: split(TRAIN_IMAGES, TRAIN_LABELS, "train")?,
        test: split(TEST_IMAGES, TEST_LABELS, "test")?,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn embedded_subset_is_balanced_real_data() {
        let d = super::load().unwrap();
        assert_eq!(d.train.len(), 10_000);
        assert_eq!(d.test.len(), 2_000);
        assert_eq!(d.train.histogram(10), vec![1000; 10]);
        assert_eq!(d.test.histogram(10), vec![200; 10]);
        assert_eq!((d.train.rows, d.train.cols), (28, 28));
    }
}
