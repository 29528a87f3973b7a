//! Shared helpers of the end-to-end tests: a small real dataset on disk and tiny recipes.

use std::path::{Path, PathBuf};

use datasets::idx::{IdxImages, encode_images, encode_labels, gzip};

/// Writes `train` and `test` images of the embedded Fashion-MNIST subset (real images, evenly
/// spread over the classes) as IDX files under `root/fashion-mnist`, and returns `root`.
pub fn real_data(root: &Path, train: usize, test: usize) -> PathBuf {
    let d = datasets::embedded::load().expect("embedded subset");
    let dir = root.join("fashion-mnist");
    std::fs::create_dir_all(&dir).unwrap();
    let pick = |s: &datasets::Split, n: usize| s.select(&(0..n).map(|i| i * (s.len() / n)).collect::<Vec<_>>());
    for (split, prefix, n) in [(&d.train, "train", train), (&d.test, "t10k", test)] {
        let s = pick(split, n);
        let images = IdxImages { count: s.len(), rows: s.rows, cols: s.cols, pixels: s.pixels.bytes().expect("byte images").to_vec() };
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte.gz")), gzip(&encode_images(&images))).unwrap();
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte.gz")), gzip(&encode_labels(&s.labels))).unwrap();
    }
    root.to_path_buf()
}

/// The repository's root folder.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A binary of this build (`engine`, `experiments`, `sparsify`), built if this test runs alone.
pub fn binary(name: &str) -> std::path::PathBuf {
    let deps = std::env::current_exe().unwrap().parent().unwrap().to_path_buf();
    let bin = deps.parent().unwrap().join(name);
    if !bin.exists() {
        let release = deps.parent().unwrap().ends_with("release");
        let mut build = std::process::Command::new(env!("CARGO"));
        build.args(["build", "-q", "-p", name, "--bin", name]).current_dir(repo());
        if release {
            build.arg("--release");
        }
        assert!(build.status().unwrap().success(), "building the {name} binary");
    }
    bin
}
