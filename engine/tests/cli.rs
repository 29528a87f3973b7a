//! The `engine` command as a user meets it: the happy paths print what they promise, and every
//! mistake is one `error:` line and a non-zero exit, never a panic.

mod common;

use std::process::Command;

fn engine(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_engine")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn fails_cleanly(args: &[&str], expected: &str) {
    let (ok, _, err) = engine(args);
    assert!(!ok, "{args:?} should fail");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: expected one error line, got {err}");
    assert!(lines[0].starts_with("error: ") && lines[0].contains(expected), "{args:?}: {err}");
    // Each cause once (an error kept as a `source` is printed again by the chain).
    let parts: Vec<&str> = lines[0].split(": ").collect();
    assert!(parts.windows(2).all(|w| w[0] != w[1]) && lines[0].matches("(os error").count() <= 1, "{args:?}: cause repeated: {err}");
}

#[test]
fn info_and_bench_name_a_convolutions_kernel_alike() {
    // On one sample a convolution runs the CSR kernel's matrix form over its output positions;
    // `bench` had named it by the matrix-vector form, `info` by the matrix form.
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("c.sparse");
    engine::format::save(&common::conv_stack(1, 0.9), &model).unwrap();
    let m = model.to_str().unwrap();
    let (ok, info, err) = engine(&["info", "--model", m, "--kernels", "sparse"]);
    assert!(ok, "{err}");
    let (ok, out, err) = engine(&["bench", "--model", m, "--kernels", "sparse", "--batch", "1", "--seconds", "0.05", "--json"]);
    assert!(ok, "{err}");
    let row: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let kernels = row["layer_kernels"].as_array().expect("layer_kernels");
    assert_eq!(kernels.len(), 4, "{row}");
    for k in kernels.iter().map(|k| k.as_str().unwrap()) {
        assert!(!k.contains("spmv") && info.contains(k), "bench names {k}; info:\n{info}");
    }
}

#[test]
fn run_info_and_bench_work() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.sparse");
    engine::format::save(&common::mlp(1, 0.9), &model).unwrap();
    let m = model.to_str().unwrap();
    let input = dir.path().join("x.npy");
    engine::npy::write(&input, &common::random_input(1, 3, &[784])).unwrap();
    let output = dir.path().join("y.npy");
    let (ok, _, err) = engine(&["run", "--model", m, "--input", input.to_str().unwrap(), "--output", output.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(engine::npy::read(&output).unwrap().shape, vec![3, 10]);

    let (ok, out, _) = engine(&["info", "--model", m]);
    assert!(ok && out.contains("fc0") && out.contains("90.0%") && out.contains("f32-spmv-csr"), "{out}");

    let (ok, out, err) =
        engine(&["bench", "--model", m, "--batch", "1,8", "--seconds", "0.05", "--warmup", "1", "--json", "--compare", "dense"]);
    assert!(ok, "{err}");
    let rows: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 2);
    for key in ["batch", "threads", "median_ms", "p90_ms", "p99_ms", "mean_ms", "items_per_s", "speedup_vs_dense"] {
        assert!(rows[0].get(key).is_some(), "bench JSON lacks {key}: {}", rows[0]);
    }
    // One kernel name per linear layer: the batch-1 kernel at batch 1.
    let kernels = rows[0]["layer_kernels"].as_array().expect("layer_kernels");
    assert_eq!(kernels.len(), 3, "{}", rows[0]);
    assert!(kernels.iter().all(|k| k.as_str().is_some_and(|k| k.ends_with("spmv-csr") || k == "dense-gemm")), "{}", rows[0]);
    // A one-thread baseline: the threads' throughput over one thread's, from alternating blocks.
    let (ok, out, err) = engine(&[
        "bench",
        "--model",
        m,
        "--batch",
        "8",
        "--threads",
        "2",
        "--seconds",
        "0.05",
        "--warmup",
        "1",
        "--json",
        "--compare",
        "one-thread",
    ]);
    assert!(ok, "{err}");
    let row: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!((row["baseline"].as_str(), row["threads"].as_u64()), (Some("one-thread"), Some(2)), "{row}");
    assert!(row["speedup"].as_f64().is_some_and(|s| s > 0.0) && row["baseline_median_ms"].as_f64().is_some(), "{row}");
    assert!(row.get("speedup_vs_dense").is_none(), "{row}");
    // Another model file as the baseline (here the same network less sparse).
    let other = dir.path().join("other.sparse");
    engine::format::save(&common::mlp(1, 0.5), &other).unwrap();
    let (ok, out, err) = engine(&[
        "bench",
        "--model",
        m,
        "--batch",
        "4",
        "--seconds",
        "0.05",
        "--warmup",
        "1",
        "--json",
        "--baseline-model",
        other.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let row: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(row["baseline"].as_str(), other.to_str(), "{row}");
    assert!(row["speedup"].as_f64().is_some_and(|s| s > 0.0), "{row}");
    let (ok, out, _) = engine(&["analyze", "--model", m, "--batch", "4", "--iters", "2"]);
    assert!(ok && out.contains("GFLOP/s") && out.contains("total"), "{out}");
}

#[test]
fn mistakes_are_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    fails_cleanly(&["info", "--model", &p("missing.sparse")], "missing.sparse");
    std::fs::write(p("junk.sparse"), b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}").unwrap();
    fails_cleanly(&["info", "--model", &p("junk.sparse")], "not a valid model file");
    std::fs::write(p("junk.onnx"), b"\x08\x07\x12garbage").unwrap();
    fails_cleanly(&["eval", "--model", &p("junk.onnx")], "junk.onnx");
    engine::format::save(&common::mlp(2, 0.5), std::path::Path::new(&p("m.sparse"))).unwrap();
    engine::npy::write(std::path::Path::new(&p("wrong.npy")), &common::random_input(1, 2, &[100])).unwrap();
    fails_cleanly(&["run", "--model", &p("m.sparse"), "--input", &p("wrong.npy"), "--output", &p("y.npy")], "does not fit the model input");
    assert!(!dir.path().join("y.npy").exists(), "no output is written on error");
    let mut nan = common::random_input(1, 2, &[784]);
    nan.data[800] = f32::NAN;
    engine::npy::write(std::path::Path::new(&p("nan.npy")), &nan).unwrap();
    fails_cleanly(
        &["run", "--model", &p("m.sparse"), "--input", &p("nan.npy"), "--output", &p("y.npy")],
        "input value 16 of sample 1 is NaN",
    );
    // The fuzzer's first find: pads of 2^62 that once passed every check and crashed a kernel.
    let hostile = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/regressions/segv-old-geometry.bin");
    fails_cleanly(&["info", "--model", hostile.to_str().unwrap()], "pads at most 65536");
    fails_cleanly(&["run", "--model", hostile.to_str().unwrap(), "--input", &p("nan.npy"), "--output", &p("y.npy")], "pads at most 65536");
    std::fs::write(p("bad.npy"), b"not numpy").unwrap();
    fails_cleanly(&["run", "--model", &p("m.sparse"), "--input", &p("bad.npy"), "--output", &p("y.npy")], "not a valid .npy file");
    fails_cleanly(&["bench", "--model", &p("m.sparse"), "--batch", "0"], "--batch");
    fails_cleanly(&["bench", "--model", &p("m.sparse"), "--baseline-model", &p("missing.sparse")], "missing.sparse");
    // A batch no machine holds: a clear line, not an allocation failure's abort.
    fails_cleanly(&["bench", "--model", &p("m.sparse"), "--batch", "100000000000"], "cannot allocate an input batch of 100000000000");
    fails_cleanly(&["analyze", "--model", &p("m.sparse"), "--batch", "100000000000"], "cannot allocate");
    let (ok, _, err) = engine(&["bench", "--model", &p("m.sparse"), "--threads", "0"]);
    assert!(!ok && err.starts_with("error: ") && err.contains("--threads") && !err.contains("panicked"), "{err}");
    fails_cleanly(&["bench", "--model", &p("m.sparse"), "--baseline-model", &p("junk.onnx")], "junk.onnx");
    engine::format::save(&common::mlp_with(1, 0.5, [100, 16, 16, 10]), std::path::Path::new(&p("narrow.sparse"))).unwrap();
    fails_cleanly(&["bench", "--model", &p("m.sparse"), "--baseline-model", &p("narrow.sparse")], "takes input [100]");
    let out =
        Command::new(env!("CARGO_BIN_EXE_engine")).args(["info", "--model", &p("m.sparse")]).env("ENGINE_ISA", "sse9").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("ENGINE_ISA=sse9") && !err.contains("panicked"), "{err}");
    let out =
        Command::new(env!("CARGO_BIN_EXE_engine")).args(["info", "--model", &p("m.sparse")]).env("ENGINE_AMX", "maybe").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("ENGINE_AMX=maybe is not one of off, on, timed") && err.lines().count() == 1, "{err}");
}

#[test]
fn a_closed_output_pipe_ends_the_program_quietly() {
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.sparse");
    engine::format::save(&common::mlp(1, 0.9), &model).unwrap();
    // `engine info ... | head -0`: the reader is gone before the first line is written.
    let mut child = Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(["info", "--model", model.to_str().unwrap(), "--batch", "64"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.is_empty(), "wrote to stderr: {err}");
    assert_eq!(out.status.code(), Some(datasets::cli::BROKEN_PIPE_EXIT));
}
