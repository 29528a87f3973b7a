//! Recipe parsing: resolved values, schedules against hand-computed ones, and errors that name
//! the field and line.

use sparsify::recipe::{FinalSparsity, LrKind, Recipe};

const BASE: &str = r#"version = 1

[variables]
epochs = 10
sparsity = 0.8

[model]
name = "mlp"
hidden = [16]

[optimizer]
type = "sgd"
momentum = 0.9

[[modifiers]]
type = "epoch_range"
start_epoch = 0
end_epoch = "epochs"

[[modifiers]]
type = "learning_rate"
schedule = "cosine"
init_lr = 0.1
final_lr = 0.0

[[modifiers]]
type = "gmp"
params = "__ALL_PRUNABLE__"
init_sparsity = 0.05
final_sparsity = "sparsity"
start_epoch = 2
end_epoch = "epochs - 2"
update_frequency = 0.5
"#;

fn parse(text: &str) -> Result<Recipe, String> {
    Recipe::parse(text, "r.toml", &[]).map_err(|e| e.to_string())
}

fn err(text: &str) -> String {
    parse(text).expect_err("the recipe should be rejected")
}

#[test]
fn resolves_expressions_and_defaults() {
    let r = parse(BASE).unwrap();
    assert_eq!(r.epochs, 10.0);
    let g = &r.pruning[0];
    assert_eq!((g.start_epoch, g.end_epoch, g.update_frequency), (2.0, 8.0, 0.5));
    assert_eq!(g.final_sparsity, FinalSparsity::Uniform(0.8));
    assert_eq!(r.lr.kind, LrKind::Cosine);
    assert_eq!(r.lr.end_epoch, 10.0, "the learning-rate schedule ends with training by default");
    assert_eq!(r.data.batch_size, 128);
    assert_eq!(r.data.dataset, "fashion-mnist");
    let over = Recipe::parse(BASE, "r.toml", &[("sparsity".into(), 0.95)]).unwrap();
    assert_eq!(over.pruning[0].final_sparsity, FinalSparsity::Uniform(0.95));
}

#[test]
fn gmp_schedules_match_hand_computed_values() {
    let mut r = parse(BASE).unwrap();
    let g = &mut r.pruning[0];
    // x = (epoch - 2) / 6; cubic 1 - (1 - x)^3; sparsity = 0.05 + y * 0.75.
    assert!((g.target("fc1.weight", 2.0) - 0.05).abs() < 1e-12);
    assert!((g.target("fc1.weight", 5.0) - (0.05 + 0.875 * 0.75)).abs() < 1e-12);
    assert!((g.target("fc1.weight", 8.0) - 0.8).abs() < 1e-12);
    assert!((g.target("fc1.weight", 9.5) - 0.8).abs() < 1e-12);
    g.schedule = sparsify::recipe::Curve::Linear;
    assert!((g.target("x", 5.0) - (0.05 + 0.5 * 0.75)).abs() < 1e-12);
    g.schedule = sparsify::recipe::Curve::InverseCubic;
    assert!((g.target("x", 5.0) - (0.05 + (1.0 - 0.5f64.powf(1.0 / 3.0)) * 0.75)).abs() < 1e-12);
}

#[test]
fn learning_rate_schedules_match_hand_computed_values() {
    let r = parse(BASE).unwrap();
    assert!((r.lr.at(0.0) - 0.1).abs() < 1e-12);
    assert!((r.lr.at(5.0) - 0.05).abs() < 1e-12);
    assert!(r.lr.at(10.0).abs() < 1e-12);
    let with = |schedule: &str, extra: &str| {
        let t = BASE
            .replace("schedule = \"cosine\"\ninit_lr = 0.1\nfinal_lr = 0.0", &format!("schedule = \"{schedule}\"\ninit_lr = 0.1\n{extra}"));
        parse(&t).unwrap().lr
    };
    let step = with("step", "gamma = 0.5\nstep_size = 3");
    assert!((step.at(2.9) - 0.1).abs() < 1e-12 && (step.at(3.0) - 0.05).abs() < 1e-12 && (step.at(6.5) - 0.025).abs() < 1e-12);
    let multi = with("multi_step", "gamma = 0.1\nmilestones = [4, 7]");
    assert!((multi.at(3.9) - 0.1).abs() < 1e-12 && (multi.at(4.0) - 0.01).abs() < 1e-12 && (multi.at(8.0) - 0.001).abs() < 1e-12);
    let exp = with("exponential", "gamma = 0.9");
    assert!((exp.at(2.0) - 0.081).abs() < 1e-12);
    let lin = with("linear", "final_lr = 0.02");
    assert!((lin.at(5.0) - 0.06).abs() < 1e-12);
}

#[test]
fn errors_name_the_field_and_line() {
    // A misspelt field is reported on its own line (the parser points at its table), in one line.
    let text = BASE.replace("momentum = 0.9", "momentum = 0.9\nmomentun = 0.8");
    let line = text.lines().position(|l| l.starts_with("momentun")).unwrap() + 1;
    let e = err(&text);
    assert!(e.starts_with(&format!("r.toml:{line}: unknown field `momentun`")) && !e.contains('\n'), "{e}");
    let e = err(&BASE.replace("version = 1", "version = 1\nnot toml"));
    assert!(e.starts_with("r.toml:2: ") && !e.contains('\n'), "{e}");
    let e = err(&BASE.replace("sparsity = 0.8", "sparsity = 1.2"));
    assert!(e.starts_with("r.toml:30: final_sparsity: sparsity must be in [0, 1), found 1.2"), "{e}");
    let e = err(&BASE.replace("end_epoch = \"epochs - 2\"", "end_epoch = 1"));
    assert!(e.starts_with("r.toml:32: end_epoch: 1 is before start_epoch 2"), "{e}");
    let e = err(&BASE.replace("name = \"mlp\"", "name = \"resnet152\""));
    assert!(e.contains("resnet152") && e.contains("r.toml:"), "{e}");
    let e = err(&BASE.replace("update_frequency = 0.5", "update_frequency = 0.5\nmask = \"2:4\""));
    assert!(e.contains("mask 2:4 keeps 2 of every 4 weights, so final_sparsity must be 0.5"), "{e}");
    let e = err(&BASE.replace("\"epochs - 2\"", "\"epochz - 2\""));
    assert!(e.contains("unknown variable 'epochz'"), "{e}");
    let e = Recipe::parse(BASE, "r.toml", &[("lr".into(), 1.0)]).unwrap_err().to_string();
    assert!(e.contains("--set overrides a variable the recipe does not define"), "{e}");
    let e = err(&BASE.replace("version = 1", "version = 2"));
    assert!(e.starts_with("r.toml:1: version"), "{e}");
}

/// Every numeric field is bounded: values training would refuse or choke on are refused at
/// parse time, with the field named.
#[test]
fn out_of_range_values_are_refused_at_parse_time() {
    let deep_parens = format!("end_epoch = \"{}epochs{}\"", "(".repeat(100_000), ")".repeat(100_000));
    let deep_minus = format!("end_epoch = \"{}epochs\"", "- ".repeat(100_000));
    for (edit, says) in [
        (("momentum = 0.9", "momentum = 1.5"), "momentum: must be in [0, 1)"),
        (("momentum = 0.9", "momentum = 0.9\nweight_decay = -1"), "weight_decay: must be in [0, 1]"),
        (("momentum = 0.9", "momentum = 0.9\nbetas = [0.9, 1.0]"), "betas: must be in [0, 1)"),
        (("hidden = [16]", "hidden = [0, 100]"), "hidden: every layer needs at least one unit"),
        (("hidden = [16]", "hidden = [1000000000]"), "hidden: fc1: the network has more than 268435456 parameters"),
        (("epochs = 10", "epochs = 1e12"), "training needs 0 < end_epoch <= 10000"),
        (
            ("schedule = \"cosine\"", "schedule = \"multi_step\"\nmilestones = [5, 2]"),
            "milestones: must be epochs >= 0 in increasing order",
        ),
        (("schedule = \"cosine\"", "schedule = \"multi_step\"\nmilestones = [-1, 2]"), "milestones"),
        (("schedule = \"cosine\"", "schedule = \"step\"\ngamma = 0"), "gamma: must be > 0"),
        (("end_epoch = \"epochs\"", deep_parens.as_str()), "nested more than 64 deep"),
        (("end_epoch = \"epochs\"", deep_minus.as_str()), "nested more than 64 deep"),
    ] {
        let e = err(&BASE.replace(edit.0, edit.1));
        assert!(e.contains(says), "{}: {e}", edit.1.chars().take(60).collect::<String>());
    }
}

#[test]
fn params_that_match_nothing_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.toml");
    std::fs::write(&path, BASE.replace("params = \"__ALL_PRUNABLE__\"", "params = [\"conv*.weight\"]")).unwrap();
    let r = Recipe::load(&path, &[]).unwrap();
    let e = sparsify::targets::check_params(&r, &path.display().to_string()).unwrap_err().to_string();
    assert!(e.contains("'conv*.weight' matches no parameter") && e.contains(":28:"), "{e}");
    // A second modifier's mistake is reported at its own line, not at the first `params`.
    let second = "\n[[modifiers]]\ntype = \"constant_pruning\"\nparams = [\"fc9.weight\"]\n";
    let text = format!("{BASE}{second}");
    std::fs::write(&path, &text).unwrap();
    let r = Recipe::load(&path, &[]).unwrap();
    let e = sparsify::targets::check_params(&r, &path.display().to_string()).unwrap_err().to_string();
    let line = text.lines().position(|l| l.contains("fc9.weight")).unwrap() + 1;
    assert!(e.contains(&format!(":{line}: params: 'fc9.weight' matches no parameter")), "{e}");
    // Two gmp modifiers on one parameter: at the second's `params`.
    let gmp = &BASE[BASE.rfind("[[modifiers]]").unwrap()..];
    let text = format!("{BASE}\n{gmp}");
    std::fs::write(&path, &text).unwrap();
    let r = Recipe::load(&path, &[]).unwrap();
    let e = sparsify::targets::check_params(&r, &path.display().to_string()).unwrap_err().to_string();
    let line = text.lines().enumerate().filter(|(_, l)| l.starts_with("params")).nth(1).unwrap().0 + 1;
    assert!(e.contains(&format!(":{line}: params: 'fc1.weight' is targeted by two gmp modifiers")), "{e}");
}

/// A recipe that starts from another run's ONNX export (`onnx = "runs/full/NAME/model.onnx"`, or
/// `"target/oneshot/NAME.onnx"` from scripts/allocation-study), pointed at an export of recipe
/// NAME's model (zero weights) in `dir`.
fn with_onnx_export(text: &str, recipes: &std::path::Path, dir: &std::path::Path) -> String {
    let Some(start) = text.find("onnx = \"runs/full/").or_else(|| text.find("onnx = \"target/oneshot/")) else { return text.to_string() };
    let path = &text[start + 8..][..text[start + 8..].find('"').unwrap()];
    let base = path.trim_start_matches("runs/full/").trim_end_matches("/model.onnx");
    let base = base.trim_start_matches("target/oneshot/").trim_end_matches(".onnx");
    let r = Recipe::load(&recipes.join(format!("{base}.toml")), &[]).unwrap();
    let (input, classes) = r.nominal().unwrap();
    let net = sparsify::model::Network::zeroed(&r.model, input, classes).unwrap();
    let file = dir.join(format!("{base}.onnx"));
    sparsify::export::export(&net, &file, sparsify::export::Format::Onnx).unwrap();
    text.replace(path, &file.display().to_string())
}

#[test]
fn shipped_recipes_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes");
    let exports = tempfile::tempdir().unwrap();
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = with_onnx_export(&std::fs::read_to_string(&path).unwrap(), &dir, exports.path());
            let r = Recipe::parse(&text, &path.display().to_string(), &[]).unwrap_or_else(|e| panic!("{e}"));
            sparsify::targets::check_params(&r, &path.display().to_string()).unwrap();
            n += 1;
        }
    }
    assert!(n >= 11, "expected the shipped recipes, found {n}");
}

const QUANT: &str = r#"
[[modifiers]]
type = "quantization"
start_epoch = 8
freeze_observers_epoch = 9
"#;

#[test]
fn quantization_modifier_resolves_and_reports_mistakes() {
    let r = parse(&format!("{BASE}{QUANT}")).unwrap();
    let q = r.quantization.as_ref().unwrap();
    assert_eq!((q.start_epoch, q.freeze_observers_epoch, q.observer_averaging), (8.0, Some(9.0), 0.01));
    assert!(!q.active(7.9) && q.active(8.0) && q.observing(8.5) && !q.observing(9.0));
    assert_eq!(q.weights, sparsify::recipe::WeightScheme::PerChannel);
    let line_of = |text: &str, field: &str| text.lines().collect::<Vec<_>>().iter().rposition(|l| l.starts_with(field)).unwrap() + 1;
    let text = format!("{BASE}{}", QUANT.replace("start_epoch = 8", "start_epoch = 10").replace("freeze_observers_epoch = 9\n", ""));
    let e = err(&text);
    let want = format!("r.toml:{}: start_epoch: 10 is not before the end of training (10)", line_of(&text, "start_epoch"));
    assert!(e.starts_with(&want), "{e}");
    let text = format!("{BASE}{}", QUANT.replace("freeze_observers_epoch = 9", "freeze_observers_epoch = 7"));
    let want = format!("r.toml:{}: freeze_observers_epoch: 7 is before start_epoch 8", line_of(&text, "freeze_observers_epoch"));
    assert!(err(&text).starts_with(&want), "{}", err(&text));
    let e = err(&format!("{BASE}{}", QUANT.replace("start_epoch = 8", "start_epoch = 8\nweights = \"per_row\"")));
    assert!(e.contains("per_row") && e.contains("r.toml:"), "{e}");
    let e = err(&format!("{BASE}{QUANT}{QUANT}"));
    assert!(e.contains("at most one quantization modifier"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.toml");
    std::fs::write(&path, format!("{BASE}{QUANT}ignore = [\"fc9\"]\n")).unwrap();
    let r = Recipe::load(&path, &[]).unwrap();
    let e = sparsify::targets::check_params(&r, &path.display().to_string()).unwrap_err().to_string();
    assert!(e.contains("ignore: 'fc9' matches no layer of this model (fc1, fc2)"), "{e}");
}

const DISTILL: &str = "\n[[modifiers]]\ntype = \"distillation\"\nteacher = \"runs/dense\"\n";

#[test]
fn distillation_modifier_resolves_and_reports_mistakes() {
    let r = parse(&format!("{BASE}{DISTILL}")).unwrap();
    let d = r.distillation.as_ref().unwrap();
    assert_eq!((d.teacher.as_str(), d.temperature, d.hardness, d.start_epoch, d.end_epoch), ("runs/dense", 2.0, 0.5, 0.0, 10.0));
    assert!(d.active(0.0) && d.active(9.9) && !d.active(10.0));
    let r = parse(&format!("{BASE}{DISTILL}temperature = 4\nhardness = 1\nstart_epoch = 2\nend_epoch = 8\n")).unwrap();
    let d = r.distillation.unwrap();
    assert_eq!((d.temperature, d.hardness), (4.0, 1.0));
    assert!(!d.active(1.9) && d.active(2.0) && !d.active(8.0));
    assert!(err(&format!("{BASE}{DISTILL}hardness = 1.5\n")).contains("hardness: must be in [0, 1], found 1.5"));
    assert!(err(&format!("{BASE}{DISTILL}temperature = 0\n")).contains("temperature: must be above 0"));
    assert!(err(&format!("{BASE}{DISTILL}{DISTILL}")).contains("at most one distillation modifier"));
    assert!(err(&format!("{BASE}\n[[modifiers]]\ntype = \"distillation\"\n")).contains("teacher"));
}
