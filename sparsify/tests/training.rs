//! Training end to end on small synthetic data: the target sparsity is reached, every mask update
//! applies the sparsity of the schedule's formula, pruned weights stay zero through momentum and
//! weight decay, the same seed gives the same metrics, a resumed run (SGD or Adam) ends where an
//! unbroken one does, and the engine agrees with burn on the exported model.

use std::path::Path;

use sparsify::recipe::Recipe;
use sparsify::train::{self, RunData, TrainOptions};

fn recipe(mask: &str, sparsity: f64, scope: &str, arch: &str) -> (Recipe, String) {
    let text = format!(
        r#"version = 1
[variables]
epochs = 4
[model]
{arch}
[data]
batch_size = 32
[optimizer]
type = "sgd"
momentum = 0.9
nesterov = true
weight_decay = 1e-3
[[modifiers]]
type = "epoch_range"
start_epoch = 0
end_epoch = "epochs"
[[modifiers]]
type = "learning_rate"
schedule = "cosine"
init_lr = 0.05
[[modifiers]]
type = "gmp"
params = "__ALL_PRUNABLE__"
init_sparsity = 0.0
final_sparsity = {sparsity}
start_epoch = 0.5
end_epoch = 3
update_frequency = 0.25
mask = "{mask}"
scope = "{scope}"
"#
    );
    (Recipe::parse(&text, "test.toml", &[]).unwrap(), text)
}

const MLP: &str = "name = \"mlp\"\nhidden = [64, 32]";

fn data() -> RunData {
    let d = datasets::synthetic::synthetic(600, 200, 10, 28, 3);
    RunData { train: d.train, val: None, test: d.test, norm: d.norm, augment: Default::default(), classes: 10, source: "synthetic".into() }
}

fn opts(out: &Path) -> TrainOptions {
    TrainOptions { recipe_path: "test.toml".into(), ..TrainOptions::quiet(out) }
}

/// Trains `r` into `dir` for two epochs, stops, and resumes to the end.
fn stopped_after_two_epochs_then_resumed(r: &Recipe, text: &str, dir: &Path) -> sparsify::train::Summary {
    let mut o = opts(dir);
    o.stop_after = Some(2);
    train::train_on(r, text, &o, data()).unwrap();
    o.stop_after = None;
    o.resume = true;
    train::train_on(r, text, &o, data()).unwrap()
}

#[test]
fn reaches_target_sparsity_and_learns_for_every_structure() {
    for (mask, s, scope) in [
        ("unstructured", 0.9, "layer"),
        ("1x4", 0.75, "layer"),
        ("4x1", 0.8, "layer"),
        ("2:4", 0.5, "layer"),
        ("unstructured", 0.9, "global"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (r, text) = recipe(mask, s, scope, MLP);
        let sum = train::train_on(&r, &text, &opts(dir.path()), data()).unwrap();
        let last = sum.metrics.last().unwrap();
        assert!((last.sparsity - s).abs() < 0.001, "{mask} {scope}: sparsity {} vs {s}", last.sparsity);
        assert!(last.test_accuracy > 0.8, "{mask} {scope}: test accuracy {}", last.test_accuracy);
        if scope == "layer" {
            for (name, ls) in &last.layers {
                assert!((ls - s).abs() < 0.01, "{mask}: {name} at {ls}");
            }
        }
        assert_eq!(sum.metrics.len(), 4);
        for f in ["metrics.csv", "run.json", "recipe.toml", "recipe.resolved.toml", "checkpoints/epoch-004.safetensors"] {
            assert!(dir.path().join(f).exists(), "{f} missing");
        }
    }
}

/// The test recipe's schedule, written out: cubic from 0 at epoch 0.5 to `last` at epoch 3.
fn cubic_target(last: f64, epoch: f64) -> f64 {
    let x = ((epoch - 0.5) / 2.5).clamp(0.0, 1.0);
    last * (1.0 - (1.0 - x).powi(3))
}

#[test]
fn every_mask_update_applies_the_scheduled_sparsity() {
    // Stepping as training does (7 steps an epoch, so updates fall between quarter epochs): each
    // update prunes exactly round(numel * target(epoch)) weights of every layer, none comes
    // before the start, they come at most a quarter epoch and a step apart, the last at the end.
    let (r, _) = recipe("unstructured", 0.9, "layer", MLP);
    let mut net = sparsify::model::Network::new(&r.model, [1, 28, 28], 10, 7).unwrap();
    let mut pruner = sparsify::prune::Pruner::new(&r, &net).unwrap();
    let targets = net.prunable();
    let steps = 7;
    let mut updates = vec![];
    for step in 0..=4 * steps {
        let e = step as f64 / steps as f64;
        // The weights move between updates, as in training; pruned ones stay zero.
        for &p in &targets {
            net.params[p].values.iter_mut().enumerate().for_each(|(i, v)| *v *= 1.0 + 0.01 * ((i + step) % 5) as f32);
        }
        if pruner.update(&r, &net, e) {
            updates.push(e.min(3.0));
        }
        for &p in &targets {
            pruner.zero_pruned(&r, p, e, &mut net.params[p].values);
        }
        let Some(&at) = updates.last() else { continue };
        for &p in &targets {
            let v = &net.params[p].values;
            let want = (v.len() as f64 * cubic_target(0.9, at)).round() as usize;
            assert_eq!(v.iter().filter(|x| **x == 0.0).count(), want, "{} at epoch {e:.3} (update at {at:.3})", net.params[p].name);
        }
    }
    assert!(updates[0] >= 0.5 && updates[0] < 0.5 + 1.0 / steps as f64, "first update at {}", updates[0]);
    assert_eq!(*updates.last().unwrap(), 3.0, "the last update applies the final sparsity at end_epoch");
    for (i, w) in updates.windows(2).enumerate() {
        let gap = w[1] - w[0];
        let last = i + 2 == updates.len();
        assert!((last || gap >= 0.25 - 1e-9) && gap < 0.25 + 1.0 / steps as f64, "updates at {w:?}");
    }

    // Through training, at the epoch boundaries (20 steps an epoch, updates on quarter epochs):
    // the metrics of epochs 1 and 2, mid-schedule, and 3 and 4 show the formula's sparsity.
    let dir = tempfile::tempdir().unwrap();
    let (r, text) = recipe("unstructured", 0.9, "layer", MLP);
    let d = datasets::synthetic::synthetic(640, 200, 10, 28, 3);
    let d = RunData {
        train: d.train,
        val: None,
        test: d.test,
        norm: d.norm,
        augment: Default::default(),
        classes: 10,
        source: "synthetic".into(),
    };
    let sum = train::train_on(&r, &text, &opts(dir.path()), d).unwrap();
    for m in &sum.metrics {
        let target = cubic_target(0.9, m.epoch as f64);
        for (name, s) in &m.layers {
            let p = sum.net.params.iter().find(|p| &p.name == name).unwrap();
            let want = (p.values.len() as f64 * target).round() / p.values.len() as f64;
            assert!((s - want).abs() < 1e-12, "epoch {}: {name} at {s}, the schedule says {want}", m.epoch);
        }
    }
}

#[test]
fn pruned_weights_stay_zero_through_momentum_and_weight_decay() {
    let dir = tempfile::tempdir().unwrap();
    let (mut r, text) = recipe("unstructured", 0.9, "layer", MLP);
    // Masks are final at epoch 2.0; epochs 3 and 4 train with momentum and weight decay.
    r.pruning[0].end_epoch = 2.0;
    train::train_on(&r, &text, &opts(dir.path()), data()).unwrap();
    let load = |e: usize| sparsify::checkpoint::load(&dir.path().join(format!("checkpoints/epoch-{e:03}.safetensors"))).unwrap();
    let (at3, at4) = (load(3), load(4));
    for (a, b) in at3.net.params.iter().zip(&at4.net.params).filter(|(p, _)| p.prunable) {
        let zeros = |p: &sparsify::model::Param| p.values.iter().map(|v| *v == 0.0).collect::<Vec<_>>();
        let changed = zeros(a).iter().zip(zeros(b)).filter(|(x, y)| **x != *y).count();
        assert_eq!(changed, 0, "{}: {changed} weights changed between zero and non-zero after the masks were fixed", a.name);
        let expected = (a.values.len() as f64 * 0.9).round() as usize;
        assert_eq!(b.values.iter().filter(|v| **v == 0.0).count(), expected, "{}", a.name);
    }
    // Momentum buffers of pruned weights are zero too, so nothing can revive them.
    for (i, p) in at4.net.params.iter().enumerate().filter(|(_, p)| p.prunable) {
        for (w, m) in p.values.iter().zip(&at4.optim.first[i]) {
            assert!(*w != 0.0 || *m == 0.0, "{}: momentum kept for a pruned weight", p.name);
        }
    }
}

#[test]
fn same_seed_same_metrics_and_resume_matches_unbroken_run() {
    let (r, text) = recipe("unstructured", 0.8, "layer", MLP);
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let c = tempfile::tempdir().unwrap();
    let unbroken = train::train_on(&r, &text, &opts(a.path()), data()).unwrap();
    let again = train::train_on(&r, &text, &opts(b.path()), data()).unwrap();
    assert_eq!(
        unbroken.metrics.iter().map(|m| (m.train_loss, m.test_accuracy)).collect::<Vec<_>>(),
        again.metrics.iter().map(|m| (m.train_loss, m.test_accuracy)).collect::<Vec<_>>()
    );

    let mut o = opts(c.path());
    o.stop_after = Some(2);
    train::train_on(&r, &text, &o, data()).unwrap();
    let err = train::train_on(&r, &text, &opts(c.path()), data()).unwrap_err().to_string();
    assert!(err.contains("already holds a run; pass --resume"), "{err}");
    o.stop_after = None;
    o.resume = true;
    let resumed = train::train_on(&r, &text, &o, data()).unwrap();
    assert_eq!(resumed.metrics.len(), 4);
    for (x, y) in unbroken.net.params.iter().zip(&resumed.net.params) {
        assert_eq!(x.values, y.values, "{} differs after resuming", x.name);
    }
    assert_eq!(resumed.metrics.last().unwrap().test_accuracy, unbroken.metrics.last().unwrap().test_accuracy);
}

#[test]
fn resume_with_adam_matches_unbroken_run() {
    let (_, text) = recipe("4x1", 0.8, "layer", MLP);
    let text = text.replace("type = \"sgd\"\nmomentum = 0.9\nnesterov = true", "type = \"adam\"\nbetas = [0.8, 0.99]");
    let text = text.replace("init_lr = 0.05", "init_lr = 0.002");
    let r = Recipe::parse(&text, "test.toml", &[]).unwrap();
    assert_eq!(r.optimizer.kind, sparsify::recipe::OptimizerKind::Adam);
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let unbroken = train::train_on(&r, &text, &opts(a.path()), data()).unwrap();
    assert!(unbroken.metrics.last().unwrap().test_accuracy > 0.8, "Adam learns: {:?}", unbroken.metrics.last());
    let resumed = stopped_after_two_epochs_then_resumed(&r, &text, b.path());
    // Both moments and the step count come back from the checkpoint: a restart from zero moments
    // or a reset bias correction would move every weight.
    for (x, y) in unbroken.net.params.iter().zip(&resumed.net.params) {
        assert_eq!(x.values, y.values, "{} differs after resuming", x.name);
    }
    // The epochs before the break come back from metrics.csv (six decimals).
    for (x, y) in unbroken.metrics.iter().zip(&resumed.metrics) {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
        assert!(
            close(x.train_loss, y.train_loss) && close(x.test_accuracy, y.test_accuracy) && close(x.sparsity, y.sparsity),
            "{x:?} / {y:?}"
        );
    }
}

/// One exported file's run in the engine: its extension, logits, and top-1 classes that agree
/// with burn's.
type EngineRun = (&'static str, Vec<f32>, usize);

/// The test split's logits in burn, and in the engine from `net` exported as `model.sparse` and
/// `model.onnx` in `dir`.
fn burn_and_engine_logits(net: &sparsify::model::Network, dir: &Path) -> (Vec<f32>, Vec<EngineRun>) {
    let test = data().test;
    let order: Vec<usize> = (0..test.len()).collect();
    let batch = datasets::batch::batches(&test, &order, test.len(), &datasets::Normalization::uniform(0.2, 0.35, 1), None).next().unwrap();
    let burn = sparsify::step::logits(net, &sparsify::step::eval_device(), batch.inputs.clone(), test.len());
    let runs = ["sparse", "onnx"]
        .into_iter()
        .map(|ext| {
            let path = dir.join(format!("model.{ext}"));
            sparsify::export::export(net, &path, sparsify::export::Format::from_path(&path)).unwrap();
            let model =
                engine::compile::compile(engine::load(&path).unwrap(), engine::compile::Options::new(Default::default()).unwrap()).unwrap();
            let out = engine::exec::Session::new(&model, 2).unwrap().run(&batch.inputs, test.len()).unwrap();
            let agree = engine::top1::argmax(&out, 10).iter().zip(engine::top1::argmax(&burn, 10)).filter(|(a, b)| **a == *b).count();
            (ext, out, agree)
        })
        .collect();
    (burn, runs)
}

#[test]
fn engine_agrees_with_burn_on_exported_models() {
    for arch in [MLP, "name = \"lenet5\"", "name = \"rescnn\"", "name = \"resnet20\"", "name = \"vgg11\"", "name = \"mobilenet\""] {
        let dir = tempfile::tempdir().unwrap();
        let (mut r, text) = recipe("unstructured", 0.9, "layer", arch);
        r.epochs = 1.0;
        r.pruning[0].start_epoch = 0.0;
        r.pruning[0].end_epoch = 1.0;
        r.lr.end_epoch = 1.0;
        let sum = train::train_on(&r, &text, &opts(dir.path()), data()).unwrap();
        let (burn, runs) = burn_and_engine_logits(&sum.net, dir.path());
        for (ext, out, agree) in runs {
            assert_eq!(agree, burn.len() / 10, "{arch} {ext}: engine and burn disagree on {} images", burn.len() / 10 - agree);
            let scale = burn.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let diff = out.iter().zip(&burn).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(diff <= 1e-4 * scale.max(1.0), "{arch} {ext}: logits differ by {diff}");
        }
    }
}

#[test]
fn quantization_aware_training_resumes_exactly_and_keeps_masks() {
    let (_, text) = recipe("1x4", 0.75, "layer", MLP);
    let text = format!("{text}\n[[modifiers]]\ntype = \"quantization\"\nstart_epoch = 1.5\nfreeze_observers_epoch = 3.5\n");
    let r = Recipe::parse(&text, "test.toml", &[]).unwrap();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let unbroken = train::train_on(&r, &text, &opts(a.path()), data()).unwrap();
    let q = unbroken.net.quant.as_ref().expect("quantization state");
    assert!(q.active && !q.observe && q.layers.len() == 3 && q.layers.iter().all(|l| l.range.is_some()));
    // Masks stay exact: the quantized weights keep exactly the pruned zeros.
    let last = unbroken.metrics.last().unwrap();
    assert!((last.sparsity - 0.75).abs() < 1e-6, "sparsity {}", last.sparsity);
    for &i in &unbroken.net.prunable() {
        let p = &unbroken.net.params[i];
        let fq = sparsify::quant::fake_quant_weight(&p.values, p.shape[0], true);
        assert!(p.values.iter().zip(&fq).all(|(w, f)| (*w == 0.0) == (*f == 0.0) || w.abs() < 1e-3), "{}", p.name);
    }
    let resumed = stopped_after_two_epochs_then_resumed(&r, &text, b.path());
    assert_eq!(resumed.net.quant, unbroken.net.quant, "observer ranges after resuming");
    for (x, y) in unbroken.net.params.iter().zip(&resumed.net.params) {
        assert_eq!(x.values, y.values, "{} differs after resuming", x.name);
    }
}

/// Quantization-aware training of the deeper built-ins (residual blocks, depth-wise
/// convolutions, whose input quantization is a node of its own in the export): the engine runs
/// each exported file as burn does. Rounding can put an activation on the other side of a
/// quantization boundary in one and not the other, and deep networks carry such flips forward,
/// so logits agree on average, not exactly.
#[test]
fn quantized_deep_built_ins_run_in_the_engine_as_in_burn() {
    for arch in ["name = \"resnet20\"", "name = \"mobilenet\""] {
        let (_, text) = recipe("unstructured", 0.5, "layer", arch);
        let text = format!("{text}\n[[modifiers]]\ntype = \"quantization\"\nstart_epoch = 0.5\n");
        let mut r = Recipe::parse(&text, "test.toml", &[]).unwrap();
        r.epochs = 1.0;
        let dir = tempfile::tempdir().unwrap();
        let sum = train::train_on(&r, &text, &opts(dir.path()), data()).unwrap();
        let (burn, runs) = burn_and_engine_logits(&sum.net, dir.path());
        let scale = burn.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let images = burn.len() / 10;
        for (ext, out, agree) in runs {
            assert!(agree * 100 >= images * 99, "{arch} {ext}: engine and burn agree on {agree} of {images} images");
            let mean = out.iter().zip(&burn).map(|(a, b)| (a - b).abs()).sum::<f32>() / out.len() as f32;
            assert!(mean < 1e-3 * scale, "{arch} {ext}: logits {mean} apart on average (largest logit {scale})");
        }
    }
}
