//! Train a small pruned model on real images with a shipped recipe, export it in both formats,
//! and check that the engine (and ONNX Runtime, on the ONNX file) predict exactly what burn does,
//! with the same logits; int8 models on logits against ONNX Runtime's run of the QDQ file.

use std::process::Command;

use e2e_tests::{real_data, repo};
use sparsify::recipe::Recipe;
use sparsify::train::{self, Summary, TrainOptions};

/// Trains a shipped recipe with `sets` into `dir/run` on `data`; returns the recipe and the run.
fn train_shipped(recipe_name: &str, sets: &[(&str, f64)], dir: &std::path::Path, data: &std::path::Path) -> (Recipe, Summary) {
    let text = std::fs::read_to_string(repo().join("recipes").join(recipe_name)).unwrap();
    let sets: Vec<(String, f64)> = sets.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    let recipe = Recipe::parse(&text, recipe_name, &sets).unwrap();
    let opts = TrainOptions {
        out: dir.join("run"),
        data: Some(data.to_path_buf()),
        allow_subset: false,
        force: false,
        resume: false,
        quiet: true,
        recipe_path: recipe_name.into(),
        overrides: sets,
        stop_after: None,
        profile: false,
    };
    let summary = train::train(&recipe, &text, &opts).unwrap();
    (recipe, summary)
}

/// The whole test split as one batch, burn's logits on it and its predicted class per image.
fn test_batch_and_burn(recipe: &Recipe, data: &std::path::Path, summary: &Summary) -> (datasets::batch::Batch, Vec<f32>, Vec<usize>) {
    let d = train::load_data(recipe, Some(data.to_path_buf()), false, true).unwrap();
    let order: Vec<usize> = (0..d.test.len()).collect();
    let batch = datasets::batch::batches(&d.test, &order, d.test.len(), &d.norm, None).next().unwrap();
    let logits = sparsify::step::logits(&summary.net, &sparsify::step::eval_device(), batch.inputs.clone(), batch.len());
    let classes = engine::top1::argmax(&logits, 10);
    (batch, logits, classes)
}

/// Largest |a - b| over the largest |b| (logits, so no Softmax squeezes the errors).
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// Exports the run's network as `dir/model.sparse` and `dir/model.onnx`.
fn export_both(summary: &Summary, dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (native, onnx) = (dir.join("model.sparse"), dir.join("model.onnx"));
    sparsify::export::export(&summary.net, &native, sparsify::export::Format::Native).unwrap();
    sparsify::export::export(&summary.net, &onnx, sparsify::export::Format::Onnx).unwrap();
    (native, onnx)
}

#[test]
fn pruned_model_runs_identically_in_burn_the_engine_and_onnx_runtime() {
    for recipe_name in ["gmp90.toml", "lenet5-gmp90.toml", "rescnn-gmp90.toml"] {
        let dir = tempfile::tempdir().unwrap();
        let data = real_data(dir.path(), 3000, 300);
        let (recipe, summary) =
            train_shipped(recipe_name, &[("num_epochs", 3.0), ("pruning_start", 0.0), ("pruning_end", 2.0)], dir.path(), &data);
        let last = summary.metrics.last().unwrap();
        assert!(last.sparsity > 0.899, "{recipe_name}: sparsity {}", last.sparsity);
        assert!(last.test_accuracy > 0.45, "{recipe_name}: accuracy {}", last.test_accuracy);

        let (batch, logits, burn) = test_batch_and_burn(&recipe, &data, &summary);
        let n = batch.len();
        let (native, onnx) = export_both(&summary, dir.path());
        for file in [&native, &onnx] {
            let model =
                engine::compile::compile(engine::load(file).unwrap(), engine::compile::Options::new(Default::default()).unwrap()).unwrap();
            let out = engine::exec::Session::new(&model, 2).unwrap().run(&batch.inputs, n).unwrap();
            let agree = engine::top1::argmax(&out, 10).iter().zip(&burn).filter(|(a, b)| a == b).count();
            assert_eq!(agree, n, "{recipe_name} {}: the engine disagrees with burn", file.display());
            let err = rel_err(&out, &logits);
            assert!(err < 1e-4, "{recipe_name} {}: logits {err} off burn's", file.display());
        }
        assert!(
            std::fs::metadata(&native).unwrap().len() * 2 < std::fs::metadata(&onnx).unwrap().len(),
            "the native file should be much smaller at 90%"
        );
        let shape = if recipe_name.starts_with("gmp") { vec![n, 784] } else { vec![n, 1, 28, 28] };
        if let Some(ort) = onnx_runtime(dir.path(), &onnx, shape, &batch.inputs, false) {
            let agree = engine::top1::argmax(&ort, 10).iter().zip(&burn).filter(|(a, b)| a == b).count();
            assert_eq!(agree, n, "{recipe_name}: ONNX Runtime disagrees with burn on the exported ONNX");
            let err = rel_err(&ort, &logits);
            assert!(err < 1e-4, "{recipe_name}: ONNX Runtime's logits {err} off burn's");
        }
    }
}

/// Runs `onnx` in ONNX Runtime on `inputs` (shaped `shape`), if a Python with it is configured;
/// `literal` runs QuantizeLinear/DequantizeLinear as written (no fusion into integer operators).
fn onnx_runtime(dir: &std::path::Path, onnx: &std::path::Path, shape: Vec<usize>, inputs: &[f32], literal: bool) -> Option<Vec<f32>> {
    let Some(python) = std::env::var_os("ENGINE_TEST_PYTHON") else {
        assert!(std::env::var("CI").is_err(), "ENGINE_TEST_PYTHON must be set under CI");
        engine::testing::record_skip("the ONNX Runtime check (ENGINE_TEST_PYTHON not set)");
        return None;
    };
    let (x, y) = (dir.join("x.npy"), dir.join("y.npy"));
    engine::npy::write(&x, &engine::npy::Array { shape, data: inputs.to_vec() }).unwrap();
    let mut command = Command::new(python);
    command.arg(repo().join("engine/tests/ort_run.py")).arg(onnx).arg(&x).arg(&y);
    if literal {
        command.arg("--literal");
    }
    let status = command.status().unwrap();
    assert!(status.success());
    Some(engine::npy::read(&y).unwrap().data)
}

#[test]
fn quantized_model_exports_to_int8_that_agrees_with_burn() {
    for recipe_name in ["gmp90-qat.toml", "lenet5-gmp90-qat.toml"] {
        let dir = tempfile::tempdir().unwrap();
        let data = real_data(dir.path(), 3000, 1000);
        let sets = [("num_epochs", 4.0), ("pruning_start", 0.0), ("pruning_end", 2.0), ("qat_start", 2.0), ("freeze_observers", 3.5)];
        let (recipe, summary) = train_shipped(recipe_name, &sets, dir.path(), &data);
        assert!(summary.net.quant.as_ref().is_some_and(|q| q.active && q.layers.iter().all(|l| l.range.is_some())));
        let last = summary.metrics.last().unwrap();
        assert!(last.test_accuracy > 0.45, "{recipe_name}: accuracy {}", last.test_accuracy);

        let (batch, _, burn) = test_batch_and_burn(&recipe, &data, &summary);
        let n = batch.len();
        let agreement = |out: &[f32]| engine::top1::argmax(out, 10).iter().zip(&burn).filter(|(a, b)| a == b).count() as f64 / n as f64;

        let (native, onnx) = export_both(&summary, dir.path());
        for file in [&native, &onnx] {
            let model =
                engine::compile::compile(engine::load(file).unwrap(), engine::compile::Options::new(Default::default()).unwrap()).unwrap();
            let int8_layers =
                model.layers.iter().filter(|l| matches!(&l.exec, engine::compile::Exec::MatMul(m) if m.int8().is_some())).count();
            assert_eq!(
                int8_layers,
                summary.net.quant.as_ref().unwrap().layers.len(),
                "{}: every quantized layer runs in int8",
                file.display()
            );
            let out = engine::exec::Session::new(&model, 2).unwrap().run(&batch.inputs, n).unwrap();
            let agree = agreement(&out);
            assert!(agree >= 0.995, "{recipe_name} {}: the engine agrees with burn on {:.2}%", file.display(), 100.0 * agree);
        }
        let shape = if recipe_name.starts_with("lenet5") { vec![n, 1, 28, 28] } else { vec![n, 784] };
        if let Some(ort) = onnx_runtime(dir.path(), &onnx, shape.clone(), &batch.inputs, false) {
            let agree = agreement(&ort);
            assert!(agree >= 0.995, "{recipe_name}: ONNX Runtime agrees with burn on {:.2}% of the QDQ model's predictions", 100.0 * agree);
        }
        if let Some(ort) = onnx_runtime(dir.path(), &onnx, shape, &batch.inputs, true) {
            let model =
                engine::compile::compile(engine::load(&onnx).unwrap(), engine::compile::Options::new(Default::default()).unwrap()).unwrap();
            let out = engine::exec::Session::new(&model, 2).unwrap().run(&batch.inputs, n).unwrap();
            let q = summary.net.quant.as_ref().unwrap();
            let last = q.layers.last().unwrap();
            let step = sparsify::quant::ActQuant::from_range(last.range.unwrap()).scale;
            let wmax = summary.net.params[last.weight].values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            // Both compute QDQ as defined, with the same integer products: logits agree to float
            // rounding. Where rounding puts an activation of the last layer's input on the other
            // side of a quantization boundary, a logit moves by one step times a weight; a few such
            // flips are allowed (each within that bound), not more.
            let flip = step * wmax * 1.001;
            let scale = ort.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let diffs: Vec<f32> = out.iter().zip(&ort).map(|(a, b)| (a - b).abs()).collect();
            let off = diffs.iter().filter(|d| **d > 1e-4 * scale).count();
            let worst = diffs.iter().fold(0.0f32, |m, v| m.max(*v));
            assert!(
                off * 1000 <= diffs.len() && worst <= flip,
                "{recipe_name}: {off} of {} logits off ONNX Runtime's QDQ run by more than 1e-4 relative, the worst by {worst} (one step: {flip})",
                diffs.len()
            );
        }
    }
}
