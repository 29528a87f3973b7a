//! CIFAR-10 and CIFAR-100 in their binary versions (from files the user has): records of one
//! label byte (CIFAR-100: a coarse then a fine label byte) and 3x32x32 bytes, channel-major.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use datasets::{Pixels, Split};

const IMAGE_BYTES: usize = 3 * 32 * 32;

/// The two versions: their files, label bytes per record and classes.
struct Version {
    train: &'static [&'static str],
    test: &'static str,
    label_bytes: usize,
    classes: usize,
    folder: &'static str,
}

const CIFAR10: Version = Version {
    train: &["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"],
    test: "test_batch.bin",
    label_bytes: 1,
    classes: 10,
    folder: "cifar-10-batches-bin",
};

const CIFAR100: Version = Version { train: &["train.bin"], test: "test.bin", label_bytes: 2, classes: 100, folder: "cifar-100-binary" };

/// The training and test splits and the number of classes, from `path` or the folder the
/// archive unpacks to inside it.
pub fn load(path: &Path) -> anyhow::Result<(Split, Split, usize)> {
    for version in [CIFAR10, CIFAR100] {
        for dir in [path.to_path_buf(), path.join(version.folder)] {
            if dir.join(version.test).is_file() {
                let train = read(&version.train.iter().map(|f| dir.join(f)).collect::<Vec<_>>(), &version)?;
                let test = read(&[dir.join(version.test)], &version)?;
                return Ok((train, test, version.classes));
            }
        }
    }
    bail!(
        "{}: no CIFAR binary batches here (CIFAR-10: data_batch_1.bin ... data_batch_5.bin and test_batch.bin; CIFAR-100: train.bin and test.bin; or their folders cifar-10-batches-bin, cifar-100-binary)",
        path.display()
    )
}

/// The records of `files`, in order.
fn read(files: &[PathBuf], version: &Version) -> anyhow::Result<Split> {
    let record = version.label_bytes + IMAGE_BYTES;
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for file in files {
        let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        if bytes.is_empty() || bytes.len() % record != 0 {
            bail!("{}: {} bytes is not a whole number of {record}-byte CIFAR records", file.display(), bytes.len());
        }
        for (i, r) in bytes.chunks_exact(record).enumerate() {
            let label = r[version.label_bytes - 1];
            if label as usize >= version.classes {
                bail!("{}: label {label} of record {i} is outside the {} classes", file.display(), version.classes);
            }
            labels.push(label);
            pixels.extend_from_slice(&r[version.label_bytes..]);
        }
    }
    Ok(Split { channels: 3, rows: 32, cols: 32, pixels: Pixels::Bytes(pixels), labels })
}
