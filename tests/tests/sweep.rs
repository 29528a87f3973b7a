//! A tiny sweep end to end: points train, export, evaluate and benchmark; the table, plots and
//! report are written, and the table's values are what they claim (speedup = dense / sparse time,
//! top-1 = `engine eval` on the point's model = burn's accuracy for fp32); running again reuses
//! every finished point.

use std::path::Path;
use std::process::Command;

use e2e_tests::{binary, real_data, repo};
use experiments::point::PointResult;
use experiments::sweep::Sweep;
use experiments::timing::{ATTEMPTS, doubt};

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
        let out = Command::new(binary("engine"))
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

/// Rewrites a finished point's `point.json` with every timing flagged doubtful for `why`, or
/// clean (measured once, no doubt); returns the result as stored.
fn mark_timings(sweep_dir: &Path, p: &experiments::sweep::Point, why: Option<&str>) -> PointResult {
    let file = experiments::point::point_dir(sweep_dir, p).join("point.json");
    let mut r: PointResult = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    for t in &mut r.timings {
        t.suspect = why.map(String::from);
        t.attempts = 1;
    }
    std::fs::write(&file, serde_json::to_string(&r).unwrap()).unwrap();
    r
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
    // The arithmetic's bound on the speedup: all multiply-adds over the non-zero ones (the
    // classifier is pruned too), 16x more for int8 kernels.
    for r in &first {
        let model = engine::compile::compile(
            engine::load(&experiments::point::point_dir(&sweep_dir, &r.point).join("model.sparse")).unwrap(),
            engine::compile::Options::new(engine::compile::KernelPolicy::Auto).unwrap(),
        )
        .unwrap();
        let expected = 1.0 / (1.0 - r.measured_sparsity) * if r.quantization == "int8" { 16.0 } else { 1.0 };
        let bound = experiments::timing::speedup_bound(&model);
        assert!((bound / expected - 1.0).abs() < 0.05, "{}: bound {bound}, expected {expected}", r.point.label());
    }
    // Every timing carries its spread, and its flag agrees with the checks.
    for t in first.iter().flat_map(|r| &r.timings) {
        assert!(t.p10_ms <= t.median_ms && t.median_ms <= t.p90_ms && t.dense_p10_ms <= t.dense_p90_ms, "{t:?}");
        assert!(t.speedup_p10 > 0.0 && t.speedup_p10 <= t.speedup_p90 && (1..=ATTEMPTS).contains(&t.attempts), "{t:?}");
        // Clean after the checks, or flagged only once every measurement was doubtful.
        assert!(t.suspect.as_ref().map_or(doubt(t, f64::INFINITY).is_none(), |_| t.attempts == ATTEMPTS), "{t:?}");
    }
    assert_eq!(experiments::collect(&sweep, "tiny.toml", &results, false).unwrap(), 4);
    let csv = std::fs::read_to_string(sweep_dir.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5, "{csv}");
    assert!(csv.contains(",int8,"), "{csv}");
    assert!(
        ["speedup_b16", "speedup_p10_b16", "speedup_p90_b1", "p10_ms_b1", "suspect_b16"].iter().all(|c| csv
            .lines()
            .next()
            .unwrap()
            .contains(c))
    );
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
    // A second run reuses a finished point whose timings passed the checks: same results...
    let run = |p: &experiments::sweep::Point| {
        experiments::point::run_point(&sweep, &sweep_dir, p, (Some(data.clone()), false), None, false).unwrap()
    };
    let clean = mark_timings(&sweep_dir, &sweep.points[0], None);
    assert_eq!(run(&sweep.points[0]), clean);
    // ...and measures again one whose timing stayed doubtful, reusing its training.
    let doubtful = mark_timings(&sweep_dir, &sweep.points[2], Some("a test's doubt"));
    let remeasured = run(&sweep.points[2]);
    assert_eq!((remeasured.top1, &remeasured.curve), (doubtful.top1, &doubtful.curve));
    assert!(remeasured.timings.iter().all(|t| t.suspect.as_deref() != Some("a test's doubt")));
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

/// The planned jobs of a sweep run as a user would run them without Slurm: planned in one folder,
/// run from another by `xargs -P 2`, one staged binary, a log per point in the results folder,
/// then collected. The Slurm script refuses to run outside an array.
#[test]
fn planned_shell_jobs_run_anywhere_under_xargs() {
    let dir = tempfile::tempdir().unwrap();
    let data = real_data(dir.path(), 300, 100);
    let (plan_dir, run_dir) = (dir.path().join("plan"), dir.path().join("elsewhere"));
    std::fs::create_dir_all(&plan_dir).unwrap();
    std::fs::create_dir_all(&run_dir).unwrap();
    std::fs::write(
        plan_dir.join("tiny.toml"),
        format!(
            "version = 1\nname = \"tiny\"\nbatches = [1]\nbench_seconds = 0.02\n\n[[study]]\nrecipe = \"{}\"\nset = {{ num_epochs = 1, pruning_start = 0, pruning_end = 1 }}\nsweep = {{ final_sparsity = [0.5, 0.9] }}\n",
            repo().join("recipes/gmp90.toml").display()
        ),
    )
    .unwrap();
    let experiments = binary("experiments");
    let plan = |emit: &str| {
        let out = Command::new(&experiments)
            .args(["plan", "tiny.toml", "--emit", emit, "--results", "res", "--data"])
            .arg(&data)
            .current_dir(&plan_dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let jobs = plan("shell");
    assert_eq!(jobs.lines().count(), 2, "{jobs}");
    let staged: Vec<_> = std::fs::read_dir(plan_dir.join("res/tiny/bin")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(staged.len(), 1, "one staged binary");
    assert!(jobs.lines().all(|l| l.contains(&format!("'{}'", staged[0].display())) && l.contains("/res/tiny/logs/")), "{jobs}");
    let mut xargs = Command::new("xargs")
        .args(["-d", "\\n", "-P", "2", "-I", "{}", "sh", "-c", "{}"])
        .current_dir(&run_dir)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut xargs.stdin.take().unwrap(), jobs.as_bytes()).unwrap();
    assert!(xargs.wait().unwrap().success(), "the planned jobs");
    let logs: Vec<_> = std::fs::read_dir(plan_dir.join("res/tiny/logs")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(logs.len(), 2, "{logs:?}");
    assert!(logs.iter().all(|l| std::fs::read_to_string(l).unwrap().contains("top-1")), "{logs:?}");
    let collect = Command::new(&experiments).args(["collect", "tiny.toml", "--results", "res"]).current_dir(&plan_dir).output().unwrap();
    assert!(collect.status.success(), "{}", String::from_utf8_lossy(&collect.stderr));
    assert_eq!(std::fs::read_to_string(plan_dir.join("res/tiny/results.csv")).unwrap().lines().count(), 3);
    // The array script, run by hand, refuses: one error line, a failing exit.
    let script = plan("slurm");
    assert!(
        script.contains("#SBATCH --cpus-per-task=2")
            && script.contains(&format!("#SBATCH --chdir={}", plan_dir.canonicalize().unwrap().display()))
    );
    let out = Command::new("bash").arg("-c").arg(&script).current_dir(&run_dir).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("submit it with sbatch"));
}

/// A one-shot study: a trained model pruned by two methods to two sparsities, no training; each
/// point evaluated and timed like a trained one, collected into the same table.
#[test]
fn oneshot_studies_prune_a_trained_model_without_training() {
    let dir = tempfile::tempdir().unwrap();
    let data = real_data(dir.path(), 600, 200);
    let dense = repo().join("recipes/dense.toml");
    let write = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let base = "version = 1\nbatches = [1, 8]\nbench_seconds = 0.02\n";
    let trained = write(
        "trained.toml",
        format!("{base}name = \"trained\"\n[[study]]\nrecipe = \"{}\"\nset = {{ num_epochs = 1 }}\n", dense.display()),
    );
    let results = dir.path().join("results");
    let sweep = Sweep::load(&trained).unwrap();
    let teacher =
        experiments::point::run_point(&sweep, &sweep.dir(&results), &sweep.points[0], (Some(data.clone()), false), None, false).unwrap();
    let model = experiments::point::point_dir(&sweep.dir(&results), &teacher.point).join("model.onnx");
    let oneshot = write(
        "oneshot.toml",
        format!(
            "{base}name = \"oneshot\"\n[[study]]\noneshot = {{ model = \"{}\", methods = [\"magnitude\", \"obs\"], samples = 64 }}\nsweep = {{ sparsity = [0.5, 0.8] }}\n",
            model.display()
        ),
    );
    let sweep = Sweep::load(&oneshot).unwrap();
    assert_eq!(sweep.points.len(), 4);
    let rows: Vec<PointResult> = sweep
        .points
        .iter()
        .map(|p| experiments::point::run_point(&sweep, &sweep.dir(&results), p, (Some(data.clone()), false), None, false).unwrap())
        .collect();
    for r in &rows {
        let o = r.point.oneshot.as_ref().unwrap();
        assert!((r.measured_sparsity - o.sparsity).abs() < 0.01, "{}: {}", r.point.label(), r.measured_sparsity);
        assert!(r.top1 > 0.1 && r.timings.len() == 2 && r.curve.is_empty(), "{r:?}");
        assert!(r.model.contains("one-shot"), "{}", r.model);
    }
    assert_eq!(experiments::collect(&sweep, "oneshot.toml", &results, false).unwrap(), 4);
    // A changed model file is a new point.
    let again = std::fs::read(&model).unwrap();
    std::fs::write(&model, [again.as_slice(), &[0u8]].concat()).unwrap();
    let changed = Sweep::load(&oneshot).unwrap();
    assert!(changed.points.iter().zip(&sweep.points).all(|(a, b)| a.id != b.id));
    // A oneshot study sweeps sparsity only.
    let bad = write(
        "bad.toml",
        format!("{base}name = \"bad\"\n[[study]]\noneshot = {{ model = \"{}\" }}\nsweep = {{ lr = [0.1] }}\n", model.display()),
    );
    assert!(Sweep::load(&bad).unwrap_err().to_string().contains("sweeps `sparsity` only"));
}

/// An allocation study: recipes made by `sparsify allocate` from a sensitivity table for each
/// target speedup, trained as points of the sweep.
#[test]
fn allocation_studies_train_allocated_recipes() {
    use sparsify::oneshot::sensitivity::{Row, write_csv};
    let dir = tempfile::tempdir().unwrap();
    let data = real_data(dir.path(), 600, 200);
    // LeNet-300-100's layers: fc1 takes most of the time and loses little when pruned.
    let row = |layer: &str, rows, cols, level: f64, ms: f64, dense_ms: f64, loss: f64| Row {
        layer: layer.into(),
        rows,
        cols,
        level,
        sparsity: level,
        loss,
        loss_increase: loss,
        top1: 0.0,
        top1_change: 0.0,
        batch: 64,
        ms,
        dense_ms,
        model_ms: 1.0,
    };
    let table = dir.path().join("sens.csv");
    write_csv(
        &table,
        &[
            row("fc1", 300, 784, 0.5, 0.45, 0.8, 0.01),
            row("fc1", 300, 784, 0.9, 0.1, 0.8, 0.05),
            row("fc2", 100, 300, 0.5, 0.08, 0.15, 0.01),
            row("fc2", 100, 300, 0.9, 0.02, 0.15, 0.2),
            row("logits", 10, 100, 0.5, 0.01, 0.02, 0.3),
            row("logits", 10, 100, 0.9, 0.005, 0.02, 0.9),
        ],
    )
    .unwrap();
    let sweep_file = dir.path().join("alloc.toml");
    std::fs::write(
        &sweep_file,
        format!(
            "version = 1\nname = \"alloc\"\nbatches = [1]\nbench_seconds = 0.02\n[[study]]\nallocate = {{ sensitivity = \"{}\", recipe = \"{}\", speedups = [1.5, 4.0] }}\nset = {{ num_epochs = 1, pruning_start = 0, pruning_end = 1 }}\n",
            table.display(),
            repo().join("recipes/gmp90.toml").display()
        ),
    )
    .unwrap();
    let sweep = Sweep::load(&sweep_file).unwrap();
    assert_eq!(sweep.points.len(), 2);
    // 1.5x: save a third of the time, fc1 at 50%; 4x: fc1 at 90% and fc2 at 50%.
    assert!(
        sweep.points[0].recipe_text.contains(r#"final_sparsity = { "fc1.weight" = 0.5, "fc2.weight" = 0, "fc3.weight" = 0 }"#),
        "{}",
        sweep.points[0].recipe_text
    );
    assert!(sweep.points[1].recipe_text.contains(r#""fc1.weight" = 0.9, "fc2.weight" = 0.5"#), "{}", sweep.points[1].recipe_text);
    let r =
        experiments::point::run_point(&sweep, &sweep.dir(&dir.path().join("results")), &sweep.points[1], (Some(data), false), None, false)
            .unwrap();
    let fc1 = r.layers.iter().find(|(n, _)| n == "fc1.weight").unwrap().1;
    assert!((fc1 - 0.9).abs() < 1e-3, "{:?}", r.layers);
    assert!(r.point.label().contains("gmp90-allocated-4x"), "{}", r.point.label());
}
