//! Distillation as a user runs it: a dense run is the teacher of a pruned one (a recipe with a
//! `distillation` modifier naming the run folder); the pruned run trains, differs from the same
//! recipe without the teacher, and a teacher that does not fit the student is one error line.

use std::path::Path;
use std::process::Command;

use e2e_tests::{binary, real_data, repo};

fn train(dir: &Path, recipe: &Path, sets: &[&str], data: &Path, out: &str) -> (bool, String) {
    let sets: Vec<&str> = sets.iter().flat_map(|s| ["--set", s]).collect();
    let o = Command::new(binary("sparsify"))
        .args(["train", "--recipe"])
        .arg(recipe)
        .args(sets)
        .arg("--data")
        .arg(data)
        .args(["--out", out, "--quiet"])
        .current_dir(dir)
        .env("SPARSIFY_OFFLINE", "1")
        .output()
        .unwrap();
    (o.status.success(), String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn a_dense_run_teaches_a_pruned_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = real_data(d, 600, 200);
    let gmp = std::fs::read_to_string(repo().join("recipes/gmp90.toml")).unwrap();
    let pruned = ["num_epochs=2", "pruning_start=0", "pruning_end=1"];
    let (ok, err) = train(d, &repo().join("recipes/dense.toml"), &["num_epochs=2"], &data, "teacher");
    assert!(ok, "{err}");
    let with = |teacher: &str| {
        let path = d.join(format!("distill-{}.toml", teacher.len()));
        std::fs::write(
            &path,
            format!("{gmp}\n[[modifiers]]\ntype = \"distillation\"\nteacher = \"{teacher}\"\ntemperature = 4\nhardness = 0.7\n"),
        )
        .unwrap();
        path
    };
    let (ok, err) = train(d, &with("teacher"), &pruned, &data, "student");
    assert!(ok, "{err}");
    let (ok, err) = train(d, &repo().join("recipes/gmp90.toml"), &pruned, &data, "alone");
    assert!(ok, "{err}");
    let metrics = |run: &str| std::fs::read_to_string(d.join(run).join("metrics.csv")).unwrap();
    assert_eq!(metrics("student").lines().count(), 3, "two epochs");
    assert_ne!(metrics("student"), metrics("alone"), "the teacher changes training");
    // A teacher that takes another input: one error line naming it.
    let other = repo().join("engine/tests/corpus/mlp_s90.onnx");
    let (ok, err) = train(d, &with(other.to_str().unwrap()), &pruned, &data, "mismatch");
    assert!(!ok && err.trim_end().lines().count() == 1 && err.contains("the teacher") && err.contains("[64]"), "{err}");
}
