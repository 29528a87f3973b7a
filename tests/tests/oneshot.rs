//! `sparsify oneshot` as a user runs it: a trained run folder pruned without training by
//! magnitude and by SparseGPT's obs, each layer to the sparsity asked, obs changing every
//! layer's output on the calibration data less than magnitude does; N:M masks kept; the written
//! file loads in the engine; the sensitivity table and the allocation made from it; mistakes get
//! one error line.

use std::path::Path;
use std::process::Command;

use e2e_tests::{binary, real_data, repo};

fn sparsify(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(binary("sparsify")).args(args).current_dir(dir).env("SPARSIFY_OFFLINE", "1").output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The per-layer `relative_error` values of a `<out>.oneshot.json`.
fn errors(report: &Path) -> Vec<f64> {
    let text = std::fs::read_to_string(report).unwrap();
    text.split("\"relative_error\":").skip(1).map(|r| r.split([',', '}']).next().unwrap().trim().parse().unwrap()).collect()
}

#[test]
fn a_trained_run_is_pruned_one_shot() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = real_data(d, 600, 100);
    let recipe = repo().join("recipes/lenet5-dense.toml");
    let data_arg = data.display().to_string();
    let (ok, _, err) = sparsify(
        d,
        &["train", "--recipe", recipe.to_str().unwrap(), "--set", "num_epochs=1", "--data", &data_arg, "--out", "run", "--quiet"],
    );
    assert!(ok, "{err}");
    let prune = |method: &str, mask: &str, out: &str| {
        let (ok, stdout, err) = sparsify(
            d,
            &[
                "oneshot",
                "--model",
                "run",
                "--sparsity",
                "0.7",
                "--method",
                method,
                "--mask",
                mask,
                "--data",
                &data_arg,
                "--samples",
                "64",
                "--out",
                out,
            ],
        );
        assert!(ok, "{method} {mask}: {err}");
        assert!(stdout.contains("layers pruned"), "{stdout}");
    };
    prune("magnitude", "unstructured", "magnitude.onnx");
    prune("obs", "unstructured", "obs.onnx");
    prune("obs", "2:4", "obs24.sparse");
    // Every layer at 70% (exactly: a weight count times 0.7, rounded), the file loads and runs.
    let graph = engine::load(&d.join("obs.onnx")).unwrap();
    let mut layers = 0;
    for node in &graph.nodes {
        if let engine::graph::Op::Linear { weight, .. } | engine::graph::Op::Conv { weight, .. } = &node.op {
            let zeros = weight.data.iter().filter(|v| **v == 0.0).count();
            assert_eq!(zeros, (weight.data.len() as f64 * 0.7).round() as usize, "{}", node.name);
            layers += 1;
        }
    }
    assert_eq!(layers, 5, "LeNet-5: two convolutions, three linear layers");
    let (e_mag, e_obs) = (errors(&d.join("magnitude.onnx.oneshot.json")), errors(&d.join("obs.onnx.oneshot.json")));
    assert_eq!(e_mag.len(), 5);
    for (l, (m, o)) in e_mag.iter().zip(&e_obs).enumerate() {
        assert!(o < m, "layer {l}: obs changed the output by {o}, magnitude by {m}");
    }
    // 2:4: at least two zeros in every group of four inputs of every output.
    let graph = engine::load(&d.join("obs24.sparse")).unwrap();
    for node in &graph.nodes {
        if let engine::graph::Op::Linear { weight, .. } | engine::graph::Op::Conv { weight, .. } = &node.op {
            for row in weight.data.chunks(weight.cols()) {
                assert!(row.chunks(4).all(|g| g.iter().filter(|v| **v == 0.0).count() >= g.len() / 2), "{}", node.name);
            }
        }
    }
    let eval =
        Command::new(binary("engine")).args(["eval", "--model"]).arg(d.join("obs.onnx")).args(["--data", &data_arg]).output().unwrap();
    assert!(eval.status.success(), "{}", String::from_utf8_lossy(&eval.stderr));

    // A recipe's per-layer targets: lenet5-gmp90's conv1 50%, conv2 80%, fc1 92%, fc2 90%, fc3 80%.
    let per_layer = repo().join("recipes/lenet5-gmp90.toml");
    let (ok, _, err) = sparsify(
        d,
        &[
            "oneshot",
            "--model",
            "run",
            "--recipe",
            per_layer.to_str().unwrap(),
            "--data",
            &data_arg,
            "--samples",
            "64",
            "--out",
            "recipe.onnx",
        ],
    );
    assert!(ok, "{err}");
    let graph = engine::load(&d.join("recipe.onnx")).unwrap();
    let levels: Vec<f64> = graph
        .nodes
        .iter()
        .filter_map(|n| match &n.op {
            engine::graph::Op::Linear { weight, .. } | engine::graph::Op::Conv { weight, .. } => {
                Some(weight.data.iter().filter(|v| **v == 0.0).count() as f64 / weight.data.len() as f64)
            }
            _ => None,
        })
        .collect();
    for (got, want) in levels.iter().zip([0.5, 0.8, 0.92, 0.9, 0.8]) {
        assert!((got - want).abs() < 0.01, "{levels:?}");
    }
    let mlp_recipe = repo().join("recipes/gmp90.toml");
    let (ok, _, err) =
        sparsify(d, &["oneshot", "--model", "run", "--recipe", mlp_recipe.to_str().unwrap(), "--data", &data_arg, "--out", "x.onnx"]);
    assert!(!ok && err.contains("3 prunable weights; this model has 5"), "{err}");

    // Sensitivity: every layer alone at each level and batch size, a table and a plot.
    let (ok, _, err) = sparsify(
        d,
        &[
            "sensitivity",
            "--model",
            "run",
            "--method",
            "magnitude",
            "--levels",
            "0.5,0.9",
            "--batch",
            "1,4",
            "--samples",
            "64",
            "--eval-samples",
            "100",
            "--iters",
            "3",
            "--data",
            &data_arg,
            "--out",
            "sens.csv",
        ],
    );
    assert!(ok, "{err}");
    let rows = sparsify::oneshot::sensitivity::read_csv(&d.join("sens.csv")).unwrap();
    assert_eq!(rows.len(), 5 * 2 * 2, "5 layers x 2 levels x 2 batch sizes");
    assert!(rows.iter().all(|r| r.ms > 0.0 && r.dense_ms > 0.0 && r.model_ms >= r.dense_ms && (r.sparsity - r.level).abs() < 0.01));
    assert!(d.join("sens.png").exists() && d.join("sens.svg").exists());
    // Allocation for half the time the levels can save at batch 4: a recipe whose targets are
    // measured levels, estimated within the target.
    let at4: Vec<_> = rows.iter().filter(|r| r.batch == 4).collect();
    let mut most = std::collections::BTreeMap::new();
    for r in &at4 {
        let e = most.entry(r.layer.clone()).or_insert(0.0f64);
        *e = e.max(r.dense_ms - r.ms);
    }
    let target = at4[0].model_ms - 0.5 * most.values().sum::<f64>();
    let base = repo().join("recipes/lenet5-gmp90.toml");
    let allocate = |flag: &str, target: &str, recipe: &str, out: &str| {
        sparsify(d, &["allocate", "--sensitivity", "sens.csv", flag, target, "--batch", "4", "--recipe", recipe, "--out", out])
    };
    let (ok, stdout, err) = allocate("--target-latency-ms", &target.to_string(), base.to_str().unwrap(), "allocated.toml");
    assert!(ok, "{err}");
    let estimated: f64 = stdout.split("estimated ").nth(1).unwrap().split(" ms").next().unwrap().parse().unwrap();
    // Printed to 4 decimals: within half of the last digit.
    assert!(estimated <= target + 5e-5, "{stdout}");
    let recipe = sparsify::recipe::Recipe::load(&d.join("allocated.toml"), &[]).unwrap();
    let targets: Vec<f64> =
        ["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight", "fc3.weight"].iter().map(|p| recipe.pruning[0].final_for(p)).collect();
    assert!(targets.iter().all(|t| [0.0, 0.5, 0.9].contains(t)) && targets.iter().any(|t| *t > 0.0), "{targets:?}");
    let (ok, _, err) = allocate("--target-speedup", "1000", base.to_str().unwrap(), "x.toml");
    assert!(!ok && err.contains("out of reach"), "{err}");
    // A recipe that prunes only the convolutions: only they get targets, the linear layers' time
    // stays in the model's, so half of what the convolutions alone can save is the target.
    let convs_only = std::fs::read_to_string(&base).unwrap().replace("params = \"__ALL_PRUNABLE__\"", "params = \"re:^conv.*weight$\"");
    std::fs::write(d.join("convs.toml"), convs_only.replace(
        "final_sparsity = { \"conv1.weight\" = 0.5, \"conv2.weight\" = 0.8, \"fc1.weight\" = 0.92, \"fc2.weight\" = 0.9, \"fc3.weight\" = 0.8 }",
        "final_sparsity = 0.9",
    ))
    .unwrap();
    let convs_most: f64 = most.iter().filter(|(l, _)| l.starts_with("conv")).map(|(_, m)| m).sum();
    let target = at4[0].model_ms - 0.5 * convs_most;
    let (ok, _, err) = allocate("--target-latency-ms", &target.to_string(), "convs.toml", "c.toml");
    assert!(ok, "{err}");
    let text = std::fs::read_to_string(d.join("c.toml")).unwrap();
    assert!(text.contains("\"conv2.weight\" = ") && !text.contains("fc1.weight"), "{text}");
    let recipe = sparsify::recipe::Recipe::load(&d.join("c.toml"), &[]).unwrap();
    assert!(["conv1.weight", "conv2.weight"].iter().any(|p| recipe.pruning[0].final_for(p) > 0.0));

    // Mistakes: one line, a failing exit.
    let corpus = repo().join("engine/tests/corpus");
    let fails = |args: &[&str], expected: &str| {
        let (ok, _, err) = sparsify(d, args);
        assert!(!ok && err.trim_end().lines().count() == 1 && err.contains(expected) && !err.contains("panicked"), "{args:?}: {err}");
    };
    let base = ["oneshot", "--out", "x.onnx", "--data", &data_arg];
    fails(&[&base[..], &["--model", "run", "--sparsity", "1"]].concat(), "outside [0, 1)");
    fails(&[&base[..], &["--model", "run", "--sparsity", "0.5", "--mask", "3x"]].concat(), "not a mask");
    let mlp64 = corpus.join("mlp_s90.onnx").display().to_string();
    fails(&[&base[..], &["--model", &mlp64, "--sparsity", "0.5"]].concat(), "the model takes [64]");
    let int8 = corpus.join("lenet5_q8.onnx").display().to_string();
    fails(&[&base[..], &["--model", &int8, "--sparsity", "0.5"]].concat(), "no fp32 linear layer");
}
