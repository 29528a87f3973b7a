//! Models from ONNX files (`[model] onnx = "model.onnx"`): a network `sparsify` exported reads
//! back with the same layers, parameters and logits (BatchNorm's running statistics included),
//! trains on under a pruning recipe and exports again; its classifier is resized for data of
//! other classes; `init = "random"` keeps only the structure; files training cannot follow get
//! one clear error.

use std::path::Path;

use sparsify::model::Network;
use sparsify::recipe::Recipe;
use sparsify::train::{self, RunData, TrainOptions};

fn data() -> RunData {
    let d = datasets::synthetic::synthetic(300, 100, 10, 16, 3);
    RunData { train: d.train, val: None, test: d.test, norm: d.norm, augment: Default::default(), classes: 10, source: "synthetic".into() }
}

fn recipe(model: &str, epochs: usize, sparsity: f64) -> (Recipe, String) {
    let text = recipe_text(model, epochs, sparsity);
    (Recipe::parse(&text, "test.toml", &[]).unwrap(), text)
}

fn recipe_text(model: &str, epochs: usize, sparsity: f64) -> String {
    format!(
        r#"version = 1
[model]
{model}
[data]
batch_size = 32
[optimizer]
type = "sgd"
momentum = 0.9
[[modifiers]]
type = "epoch_range"
start_epoch = 0
end_epoch = {epochs}
[[modifiers]]
type = "learning_rate"
schedule = "constant"
init_lr = 0.02
[[modifiers]]
type = "gmp"
params = "__ALL_PRUNABLE__"
init_sparsity = 0.0
final_sparsity = {sparsity}
start_epoch = 0
end_epoch = {epochs}
update_frequency = 0.5
"#
    )
}

fn opts(out: &Path) -> TrainOptions {
    TrainOptions { recipe_path: "test.toml".into(), ..TrainOptions::quiet(out) }
}

fn logits(net: &Network) -> Vec<f32> {
    let d = data();
    let order: Vec<usize> = (0..d.test.len()).collect();
    let batch = datasets::batch::batches(&d.test, &order, d.test.len(), &d.norm, None).next().unwrap();
    let n = batch.len();
    sparsify::step::logits(net, &sparsify::step::eval_device(), batch.inputs, n)
}

#[test]
fn an_exported_model_reads_back_as_it_was_and_trains_on() {
    for arch in ["name = \"resnet20\"", "name = \"lenet5\"", "name = \"mobilenet\"", "name = \"mlp\"\nhidden = [32]"] {
        let dir = tempfile::tempdir().unwrap();
        let (r, text) = recipe(arch, 1, 0.5);
        let trained = train::train_on(&r, &text, &opts(&dir.path().join("first")), data()).unwrap().net;
        let file = dir.path().join("model.onnx");
        sparsify::export::export(&trained, &file, sparsify::export::Format::Onnx).unwrap();

        let model = format!("onnx = \"{}\"", file.display());
        let (r, text) = recipe(&model, 2, 0.8);
        let read = Network::new(&r.model, [1, 16, 16], 10, 99).unwrap();
        let names = |n: &Network| n.params.iter().map(|p| (p.name.clone(), p.shape.clone())).collect::<Vec<_>>();
        assert_eq!(names(&read), names(&trained), "{arch}: the same parameters");
        for (a, b) in read.params.iter().zip(&trained.params) {
            assert_eq!(a.values, b.values, "{arch}: {} read back", a.name);
        }
        assert_eq!(logits(&read), logits(&trained), "{arch}: the same logits");

        // It trains on under the recipe's pruning and exports again.
        let sum = train::train_on(&r, &text, &opts(&dir.path().join("second")), data()).unwrap();
        let pruned: usize = sum.net.prunable().iter().map(|&i| sum.net.params[i].values.iter().filter(|&&v| v == 0.0).count()).sum();
        let total: usize = sum.net.prunable().iter().map(|&i| sum.net.params[i].values.len()).sum();
        assert!((pruned as f64 / total as f64 - 0.8).abs() < 0.01, "{arch}: sparsity {}", pruned as f64 / total as f64);
        sparsify::export::export(&sum.net, &dir.path().join("again.onnx"), sparsify::export::Format::Onnx).unwrap();
        let resolved = std::fs::read_to_string(dir.path().join("second/recipe.resolved.toml")).unwrap();
        assert!(resolved.contains("name = \"onnx\"") && resolved.contains("init = \"pretrained\""), "{resolved}");

        // `init = "random"`: the structure, freshly initialised from the seed.
        let (r, _) = recipe(&format!("{model}\ninit = \"random\""), 1, 0.5);
        let fresh = Network::new(&r.model, [1, 16, 16], 10, 99).unwrap();
        assert_eq!(names(&fresh), names(&trained));
        assert_ne!(fresh.params[0].values, trained.params[0].values, "{arch}: random weights");
    }
}

#[test]
fn files_training_cannot_follow_get_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (r, text) = recipe("name = \"lenet5\"", 1, 0.5);
    let net = train::train_on(&r, &text, &opts(&dir.path().join("run")), data()).unwrap().net;
    let file = dir.path().join("lenet5.onnx");
    sparsify::export::export(&net, &file, sparsify::export::Format::Onnx).unwrap();
    let model = format!("onnx = \"{}\"", file.display());
    let (r, _) = recipe(&model, 1, 0.5);

    let err = Network::new(&r.model, [1, 20, 20], 10, 1).unwrap_err();
    assert!(err.contains("reads [1, 16, 16] per sample, the data are [1, 20, 20]"), "{err}");
    // Other classes: the classifier gets one output per class and fresh weights, the rest
    // keeps the file's.
    let transferred = Network::new(&r.model, [1, 16, 16], 7, 1).unwrap();
    let head = transferred.params.len() - 2;
    assert_eq!(transferred.params[head].shape, vec![7, 84]);
    for (a, b) in transferred.params[..head].iter().zip(&net.params) {
        assert_eq!(a.values, b.values, "{} keeps the file's values", a.name);
    }

    // An operator training has no layer for.
    let mut graph = engine::load(&file).unwrap();
    let last = graph.nodes.last().unwrap().output.clone();
    graph.nodes.push(engine::graph::Node {
        name: "probabilities".into(),
        op: engine::graph::Op::Softmax { masked: false, zero_nan: false },
        inputs: vec![last],
        output: "probs".into(),
    });
    graph.output = "probs".into();
    let softmax = dir.path().join("softmax.onnx");
    sparsify::export::write_graph(&graph, &softmax, sparsify::export::Format::Onnx).unwrap();
    let text = recipe_text(&format!("onnx = \"{}\"", softmax.display()), 1, 0.5);
    let err = Recipe::parse(&text, "t.toml", &[]).unwrap_err().to_string();
    assert!(err.contains("t.toml:3: onnx:") && err.contains("'probabilities' (softmax) cannot be trained"), "{err}");

    let text = recipe_text("onnx = \"/no/such/model.onnx\"", 1, 0.5);
    let err = Recipe::parse(&text, "t.toml", &[]).unwrap_err().to_string();
    assert!(err.contains("/no/such/model.onnx") && !err.contains('\n'), "{err}");
    let text = recipe_text(&format!("onnx = \"{}\"\ninit = \"imagenet\"", file.display()), 1, 0.5);
    let err = Recipe::parse(&text, "t.toml", &[]).unwrap_err().to_string();
    assert!(err.contains("unknown variant `imagenet`") || err.contains("init"), "{err}");
}
