//! The `sparsify` command as a user meets it: recipe mistakes name the file, line and field;
//! every error is one line and a non-zero exit, never a panic; a small run trains and exports.

use std::process::Command;

fn sparsify(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sparsify")).args(args).env("SPARSIFY_OFFLINE", "1").output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn fails_cleanly(args: &[&str], expected: &str) {
    let (ok, _, err) = sparsify(args);
    assert!(!ok, "{args:?} should fail");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.starts_with("note:")).collect();
    assert_eq!(lines.len(), 1, "{args:?}: expected one error line, got {err}");
    assert!(lines[0].starts_with("error: ") && lines[0].contains(expected), "{args:?}: {err}");
}

fn recipes() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes")
}

#[test]
fn recipe_mistakes_name_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(recipes().join("gmp90.toml")).unwrap();
    let write = |name: &str, text: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let p = write("typo.toml", good.replace("nesterov = true", "nesterov = true\nnesterow = true"));
    fails_cleanly(&["recipe", "check", &p], "nesterow");
    let p = write("range.toml", good.replace("final_sparsity = 0.9", "final_sparsity = 1.5"));
    fails_cleanly(&["recipe", "check", &p], "range.toml:45: final_sparsity: sparsity must be in [0, 1)");
    let p = write("params.toml", good.replace("params = \"__ALL_PRUNABLE__\"", "params = [\"conv9.weight\"]"));
    fails_cleanly(&["recipe", "check", &p], "params.toml:43: params: 'conv9.weight' matches no parameter");
    let g = recipes().join("gmp90.toml");
    let g = g.to_str().unwrap();
    fails_cleanly(&["recipe", "check", g, "--set", "nope=1"], "--set overrides a variable the recipe does not define");
    fails_cleanly(&["recipe", "check", g, "--set", "final_sparsity"], "expected NAME=VALUE");
    fails_cleanly(&["recipe", "check", "no/such/recipe.toml"], "no/such/recipe.toml");
    fails_cleanly(
        &["train", "--recipe", g, "--data", dir.path().join("nodata").to_str().unwrap(), "--out", dir.path().join("r").to_str().unwrap()],
        "not found in",
    );
    fails_cleanly(
        &["export", "--run", dir.path().to_str().unwrap(), "--out", dir.path().join("m.sparse").to_str().unwrap()],
        "has no checkpoints",
    );
}

#[test]
fn recipe_show_prints_the_schedule() {
    let (ok, out, err) = sparsify(&["recipe", "show", recipes().join("gmp90.toml").to_str().unwrap(), "--set", "final_sparsity=0.95"]);
    assert!(ok, "{err}");
    assert!(out.contains("final_sparsity = 0.95") && out.contains("# schedule at the start of each epoch"), "{out}");
    let last = out.lines().last().unwrap();
    assert!(last.trim_start().starts_with("30") && last.ends_with("0.9500"), "{last}");
}

#[test]
fn trains_on_the_embedded_subset_and_exports() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let r = recipes().join("gmp90.toml");
    let (ok, out, err) = sparsify(&[
        "train",
        "--recipe",
        r.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--quiet",
        "--data",
        &embedded_dir(dir.path()),
        "--set",
        "num_epochs=2",
        "--set",
        "pruning_start=0",
        "--set",
        "pruning_end=1",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("sparsity 0.9000"), "{out}");
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert!(csv.starts_with("epoch,lr,train_loss,train_accuracy,val_accuracy,test_accuracy,sparsity"), "{csv}");
    let (ok, out, err) = sparsify(&["export", "--run", run.to_str().unwrap(), "--out", dir.path().join("m.onnx").to_str().unwrap()]);
    assert!(ok && out.contains("Onnx"), "{out}{err}");
}

/// Writes the embedded Fashion-MNIST subset as IDX files, a small real dataset on disk.
fn embedded_dir(root: &std::path::Path) -> String {
    use datasets::idx::{IdxImages, encode_images, encode_labels, gzip};
    let d = datasets::embedded::load().unwrap();
    let dir = root.join("fashion-mnist");
    std::fs::create_dir_all(&dir).unwrap();
    let small = |s: &datasets::Split, n: usize| s.select(&(0..n).map(|i| i * (s.len() / n)).collect::<Vec<_>>());
    for (split, prefix, n) in [(&d.train, "train", 2000), (&d.test, "t10k", 500)] {
        let s = small(split, n);
        let images = IdxImages { count: s.len(), rows: 28, cols: 28, pixels: s.pixels.bytes().expect("byte images").to_vec() };
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte.gz")), gzip(&encode_images(&images))).unwrap();
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte.gz")), gzip(&encode_labels(&s.labels))).unwrap();
    }
    dir.to_str().unwrap().to_string()
}

/// A run folder has one writer and a fixed history: a second writer, a folder of someone else's
/// files and a resume with another recipe are refused with one line; a kill between an epoch's
/// metrics row and its checkpoint resumes to the same rows; temporaries of killed writers go.
#[test]
fn run_folders_have_one_writer_and_a_fixed_history() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let data = embedded_dir(dir.path());
    let r = recipes().join("gmp90.toml");
    let train = |out: &std::path::Path, extra: &[&str]| {
        let mut args = vec!["train", "--recipe", r.to_str().unwrap(), "--out", out.to_str().unwrap(), "--quiet", "--data", &data];
        args.extend(["--set", "num_epochs=2", "--set", "pruning_start=0", "--set", "pruning_end=1"]);
        args.extend(extra);
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let run_args = |a: Vec<String>| sparsify(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let (ok, _, err) = run_args(train(&run, &[]));
    assert!(ok, "{err}");
    let rows = |csv: &str| csv.lines().map(|l| l.split(',').take(7).collect::<Vec<_>>().join(",")).collect::<Vec<_>>();
    let before = rows(&std::fs::read_to_string(run.join("metrics.csv")).unwrap());

    let fails = |a: Vec<String>, expected: &str| fails_cleanly(&a.iter().map(String::as_str).collect::<Vec<_>>(), expected);
    fails(train(&run, &[]), "already holds a run; pass --resume");
    let mut changed = train(&run, &["--resume"]);
    let at = changed.iter().position(|a| a == "num_epochs=2").unwrap();
    changed[at] = "num_epochs=3".into();
    fails(changed, "differs from the one this run started with");
    let theirs = dir.path().join("theirs");
    std::fs::create_dir_all(&theirs).unwrap();
    std::fs::write(theirs.join("notes.txt"), "mine").unwrap();
    fails(train(&theirs, &[]), "is not a sparsify run folder");
    assert_eq!(std::fs::read_to_string(theirs.join("notes.txt")).unwrap(), "mine");
    let held = engine::fsutil::DirLock::acquire(&run).unwrap();
    fails(train(&run, &["--resume"]), "in use by another process (pid");
    drop(held);

    // Killed after epoch 2's metrics row and before its checkpoint, with a temporary left over.
    std::fs::remove_file(run.join("checkpoints/epoch-002.safetensors")).unwrap();
    std::fs::write(run.join(".metrics.csv.4242.0.tmp"), "half").unwrap();
    let (ok, _, err) = run_args(train(&run, &["--resume"]));
    assert!(ok, "{err}");
    assert_eq!(rows(&std::fs::read_to_string(run.join("metrics.csv")).unwrap()), before, "the resumed run's rows");
    assert!(!run.join(".metrics.csv.4242.0.tmp").exists(), "stale temporaries are removed");
    let info: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap()).unwrap();
    let revision = info["git_revision"].as_str().unwrap();
    assert!(revision.len() >= 12 || revision == "unknown", "the build's own revision: {revision}");
}
