//! The `datasets` command's error paths: an unknown dataset, a folder without it (downloads off),
//! files that are not gzip or are truncated IDX. Each gets one error line naming the dataset or
//! file and a non-zero exit, never a panic.

use std::path::Path;
use std::process::Command;

fn fails_with(dir: &Path, args: &[&str], expected: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_datasets"))
        .args(args)
        .current_dir(dir)
        .env("SPARSIFY_OFFLINE", "1")
        .env_remove("SPARSIFY_DATA")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: one error line, got:\n{err}");
    assert!(err.starts_with("error: ") && !err.contains("panicked"), "{args:?}: {err}");
    for e in expected {
        assert!(err.contains(e), "{args:?}: '{e}' not in: {err}");
    }
}

const FILES: [&str; 4] = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"];

#[test]
fn mistakes_get_one_line_and_a_failing_exit() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fails_with(d, &["info", "imagenet"], &["unknown dataset 'imagenet'", "fashion-mnist, mnist"]);
    fails_with(d, &["info", "--data", "nowhere", "--offline"], &["not found in nowhere", "train-images-idx3-ubyte.gz"]);
    let set = d.join("bad/fashion-mnist");
    std::fs::create_dir_all(&set).unwrap();
    for f in FILES {
        std::fs::write(set.join(format!("{f}.gz")), b"not gzip").unwrap();
    }
    fails_with(d, &["info", "--data", "bad", "--offline"], &["train-images-idx3-ubyte.gz", "not a valid gzip stream"]);
    // A valid gzip of an IDX header cut short.
    let header = datasets::idx::gzip(&[0, 0, 8, 3, 0, 0, 0, 5]);
    for f in FILES {
        std::fs::write(set.join(format!("{f}.gz")), &header).unwrap();
    }
    fails_with(d, &["info", "--data", "bad", "--offline"], &["train-images-idx3-ubyte.gz", "truncated IDX file"]);
}
