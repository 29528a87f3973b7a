//! A tiny sweep end to end: points train, export, evaluate and benchmark; the table, plots and
//! report are written, and the table's values are what they claim (speedup = dense / sparse time,
//! top-1 = `engine eval` on the point's model = burn's accuracy for fp32); running again reuses
//! every finished point.

use std::path::Path;
use std::process::Command;

use e2e_tests::{real_data, repo};
use experiments::point::PointResult;
use experiments::sweep::Sweep;

/// The `engine` binary of this build (built if this test runs alone).
fn engine_binary() -> std::path::PathBuf {
    let deps = std::env::current_exe().unwrap().parent().unwrap().to_path_buf();
    let bin = deps.parent().unwrap().join("engine");
    if !bin.exists() {
        let release = deps.parent().unwrap().ends_with("release");
        let mut build = Command::new(env!("CARGO"));
        build.args(["build", "-q", "-p", "engine", "--bin", "engine"]).current_dir(repo());
        if release {
            build.arg("--release");
        }
        assert!(build.status().unwrap().success(), "building the engine binary");
    }
    bin
}

/// Each row of `results.csv`: the speedup is the dense median over the sparse one (within the
/// table's four decimals), top-1 is what `engine eval` measures on the point's model, and for fp32
/// points what burn measured at the end of training.
fn check_table_values(csv: &str, sweep: &Sweep, sweep_dir: &Path, data: &Path, results: &[PointResult]) {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap_or_else(|| panic!("no column {name}"));
    for line in lines {
        assert!(!line.contains('"'), "unexpected quoting: {line}");
        let f: Vec<&str> = line.split(',').collect();
        let num = |name: &str| f[col(name)].parse::<f64>().unwrap_or_else(|_| panic!("{name}: '{}' in {line}", f[col(name)]));
        for b in &sweep.batches {
            let (sparse, dense, speedup) =
                (num(&format!("median_ms_b{b}")), num(&format!("dense_median_ms_b{b}")), num(&format!("speedup_b{b}")));
            // Each printed value is within 5e-5 of the measured one.
            let (lo, hi) = ((dense - 5e-5) / (sparse + 5e-5) - 5e-5, (dense + 5e-5) / (sparse - 5e-5).max(1e-9) + 5e-5);
            assert!(speedup >= lo && speedup <= hi, "batch {b}: speedup {speedup}, dense {dense} ms / sparse {sparse} ms: {line}");
        }
        let id = f[col("id")];
        let model = sweep_dir.join("points").join(id).join("model.sparse");
        let out = Command::new(engine_binary())
            .args(["eval", "--json", "--threads", "2", "--model"])
            .arg(&model)
            .arg("--data")
            .arg(data)
            .output()
            .unwrap();
        assert!(out.status.success(), "engine eval: {}", String::from_utf8_lossy(&out.stderr));
        let eval = String::from_utf8(out.stdout).unwrap();
        let accuracy: f64 = eval.split("\"accuracy\":").nth(1).and_then(|r| r.split([',', '}']).next()).unwrap().trim().parse().unwrap();
        assert_eq!(f[col("top1")], format!("{accuracy:.4}"), "{id}: the table's top-1 against engine eval ({eval})");
        let r = results.iter().find(|r| r.point.id == id).unwrap();
        if r.quantization == "none" {
            let burn = r.curve.last().unwrap().1;
            assert_eq!(f[col("top1")], format!("{burn:.4}"), "{id}: the table's top-1 against burn's test accuracy");
        }
    }
}

#[test]
fn tiny_sweep_runs_collects_and_reuses_points() {
    let dir = tempfile::tempdir().unwrap();
    let data = real_data(dir.path(), 600, 200);
    let sweep_file = dir.path().join("tiny.toml");
    let recipe = repo().join("recipes/gmp90.toml");
    std::fs::write(
        &sweep_file,
        format!(
            "version = 1\nname = \"tiny\"\nbatches = [1, 16]\nbench_seconds = 0.05\n\n[[study]]\nrecipe = \"{}\"\nset = {{ num_epochs = 1, pruning_start = 0, pruning_end = 1 }}\nsweep = {{ final_sparsity = [0.5, 0.9] }}\nquantize = [false, true]\n",
            recipe.display()
        ),
    )
    .unwrap();
    let sweep = Sweep::load(&sweep_file).unwrap();
    assert_eq!(sweep.points.len(), 4, "two sparsities, fp32 and int8");
    let results = dir.path().join("results");
    let sweep_dir = sweep.dir(&results);
    let first: Vec<_> = sweep
        .points
        .iter()
        .map(|p| experiments::point::run_point(&sweep, &sweep_dir, p, (Some(data.clone()), false), None, false).unwrap())
        .collect();
    assert!((first[2].measured_sparsity - 0.9).abs() < 1e-3);
    let quantized: Vec<&str> = first.iter().map(|r| r.quantization.as_str()).collect();
    assert_eq!(quantized, ["none", "int8", "none", "int8"]);
    assert!(first[1].file_bytes * 2 < first[0].file_bytes, "the int8 file is much smaller");
    assert!(first.iter().all(|r| r.timings.len() == 2 && r.timings.iter().all(|t| t.speedup > 0.0)));
    assert_eq!(experiments::collect(&sweep, "tiny.toml", &results, false).unwrap(), 4);
    let csv = std::fs::read_to_string(sweep_dir.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5, "{csv}");
    assert!(csv.contains(",int8,"), "{csv}");
    assert!(csv.lines().next().unwrap().contains("speedup_b16"));
    // Every row says where its images came from: the folder given, 600 / 200 images.
    assert!(csv.lines().next().unwrap().ends_with("data_source,train_images,test_images"), "{csv}");
    assert!(csv.lines().skip(1).all(|l| l.contains(&data.display().to_string()) && l.ends_with(",600,200")), "{csv}");
    assert!(first.iter().all(|r| r.train_images == 600 && r.test_images == 200));
    for plot in ["accuracy_vs_speedup", "accuracy_vs_sparsity", "latency_vs_batch", "layer_sparsity", "training_curves"] {
        for ext in ["png", "svg"] {
            let f = sweep_dir.join(format!("{plot}.{ext}"));
            assert!(std::fs::metadata(&f).map(|m| m.len() > 1000).unwrap_or(false), "{} missing", f.display());
        }
    }
    assert!(std::fs::read_to_string(sweep_dir.join("report.md")).unwrap().contains("![accuracy_vs_speedup]"));
    check_table_values(&csv, &sweep, &sweep_dir, &data, &first);
    // A second run reuses the finished points: same results, no retraining.
    let again = experiments::point::run_point(&sweep, &sweep_dir, &sweep.points[0], (Some(data.clone()), false), None, false).unwrap();
    assert_eq!(again, first[0]);
    // --rebench measures the finished training again: same accuracy, fresh timings.
    let rebench = experiments::point::run_point(&sweep, &sweep_dir, &sweep.points[0], (Some(data.clone()), false), None, true).unwrap();
    assert_eq!((rebench.top1, &rebench.curve), (first[0].top1, &first[0].curve));
    assert_ne!(rebench.timings, first[0].timings);
    // A missing point makes collect fail, naming it, unless --partial.
    let last = &sweep.points[3];
    std::fs::remove_file(experiments::point::point_dir(&sweep_dir, last).join("point.json")).unwrap();
    let err = experiments::collect(&sweep, "tiny.toml", &results, false).unwrap_err().to_string();
    assert!(err.contains("1 of 4 points are not finished") && err.contains(&last.label()), "{err}");
    assert_eq!(experiments::collect(&sweep, "tiny.toml", &results, true).unwrap(), 3);
}
