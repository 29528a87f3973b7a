//! ONNX's layout operators and shape arithmetic as real exports write them
//! (`tests/onnx_operators.py`: nearest Resize in every mode, Upsample, Slice, Split, Transpose,
//! Reshape, Squeeze, Unsqueeze, Gather, the `Shape` chains of a dynamic batch) match ONNX Runtime
//! exactly: they only move values. BERT's operators (`seq_*`: Softmax and LayerNormalization over
//! the last axis, MatMul of rows by weights and of two values, Where, logic, Expand)
//! compute in floating point and match at 1e-5. A batch-dependent shape used anywhere but a Reshape's batch
//! axis is refused.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use engine::compile::{self, Options};
use engine::exec::Session;

#[test]
fn layout_operators_match_onnx_runtime() {
    let Some(python) = ort_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/onnx_operators.py");
    assert!(Command::new(&python).arg(script).arg(dir.path()).status().unwrap().success(), "writing the models");
    let mut models: Vec<_> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "onnx")).collect();
    models.sort();
    assert!(models.len() >= 42, "{} models", models.len());
    for path in models {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let input = engine::npy::read(&dir.path().join(format!("{name}.input.npy"))).unwrap();
        let reference = ort_run(&python, &path, &input, dir.path());
        let graph = engine::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let model = compile::compile(graph, Options::new(Default::default()).unwrap()).unwrap();
        assert_eq!(model.output_shape, reference.shape[1..], "{name}: output shape");
        for threads in [1, 2] {
            let got = Session::new(&model, threads).unwrap().run(&input.data, input.shape[0]).unwrap();
            if name.starts_with("seq_") {
                let err = rel_err(&got, &reference.data);
                assert!(err < 1e-5, "{name}, {threads} threads: relative error {err}");
            } else {
                assert_eq!(got, reference.data, "{name}, {threads} threads");
            }
        }
    }
}
