//! Train a small pruned model on real images with a shipped recipe, export it in both formats,
//! and check that the engine (and ONNX Runtime, on the ONNX file) predict exactly what burn does.

use std::process::Command;

use e2e_tests::{real_data, repo};
use sparsify::recipe::Recipe;
use sparsify::train::{self, TrainOptions};

#[test]
fn pruned_model_runs_identically_in_burn_the_engine_and_onnx_runtime() {
    for recipe_name in ["gmp90.toml", "lenet5-gmp90.toml", "rescnn-gmp90.toml"] {
        let dir = tempfile::tempdir().unwrap();
        let data = real_data(dir.path(), 3000, 300);
        let path = repo().join("recipes").join(recipe_name);
        let text = std::fs::read_to_string(&path).unwrap();
        let sets = [("num_epochs".to_string(), 3.0), ("pruning_start".to_string(), 0.0), ("pruning_end".to_string(), 2.0)];
        let recipe = Recipe::parse(&text, recipe_name, &sets).unwrap();
        let opts = TrainOptions {
            out: dir.path().join("run"),
            data: Some(data.clone()),
            resume: false,
            quiet: true,
            recipe_path: recipe_name.into(),
            overrides: sets.to_vec(),
            stop_after: None,
        };
        let summary = train::train(&recipe, &text, &opts).unwrap();
        let last = summary.metrics.last().unwrap();
        assert!(last.sparsity > 0.899, "{recipe_name}: sparsity {}", last.sparsity);
        assert!(last.test_accuracy > 0.45, "{recipe_name}: accuracy {}", last.test_accuracy);

        let d = train::load_data(&recipe, Some(data), true).unwrap();
        let order: Vec<usize> = (0..d.test.len()).collect();
        let batch = datasets::batch::batches(&d.test, &order, d.test.len(), d.mean, d.std).next().unwrap();
        let n = batch.len();
        let burn =
            sparsify::step::argmax(&sparsify::step::logits(&summary.net, &sparsify::step::eval_device(), batch.inputs.clone(), n), 10);
        let native = dir.path().join("model.sparse");
        let onnx = dir.path().join("model.onnx");
        sparsify::export::export(&summary.net, &native, sparsify::export::Format::Native).unwrap();
        sparsify::export::export(&summary.net, &onnx, sparsify::export::Format::Onnx).unwrap();
        for file in [&native, &onnx] {
            let model =
                engine::compile::compile(engine::load(file).unwrap(), engine::compile::Options::new(Default::default()).unwrap()).unwrap();
            let out = engine::exec::Session::new(&model, 2).unwrap().run(&batch.inputs, n).unwrap();
            let agree = sparsify::step::argmax(&out, 10).iter().zip(&burn).filter(|(a, b)| a == b).count();
            assert_eq!(agree, n, "{recipe_name} {}: the engine disagrees with burn", file.display());
        }
        assert!(
            std::fs::metadata(&native).unwrap().len() * 2 < std::fs::metadata(&onnx).unwrap().len(),
            "the native file should be much smaller at 90%"
        );

        let Some(python) = std::env::var_os("ENGINE_TEST_PYTHON") else {
            assert!(std::env::var("CI").is_err(), "ENGINE_TEST_PYTHON must be set under CI");
            eprintln!("note: ENGINE_TEST_PYTHON not set; skipping the ONNX Runtime check");
            continue;
        };
        let x = dir.path().join("x.npy");
        engine::npy::write(&x, &engine::npy::Array { shape: vec![n, 784], data: batch.inputs.clone() }).unwrap();
        let script = repo().join("engine/tests/ort_run.py");
        let y = dir.path().join("y.npy");
        let input_shape = if !recipe_name.starts_with("gmp") { vec![n, 1, 28, 28] } else { vec![n, 784] };
        engine::npy::write(&x, &engine::npy::Array { shape: input_shape, data: batch.inputs.clone() }).unwrap();
        let status = Command::new(python).arg(script).arg(&onnx).arg(&x).arg(&y).status().unwrap();
        assert!(status.success());
        let ort = engine::npy::read(&y).unwrap();
        let agree = sparsify::step::argmax(&ort.data, 10).iter().zip(&burn).filter(|(a, b)| a == b).count();
        assert_eq!(agree, n, "{recipe_name}: ONNX Runtime disagrees with burn on the exported ONNX");
    }
}
