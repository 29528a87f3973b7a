//! The training loop. Per step: update the masks that are due, compute gradients, take an
//! optimizer step that zeroes the gradients of pruned weights before its update and the pruned
//! weights and momentum after it (momentum and weight decay would otherwise revive them). Per
//! epoch: evaluate, append to `metrics.csv`, write a checkpoint. `--resume` continues from the
//! last checkpoint with the same schedule.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};

use crate::checkpoint;
use crate::model::Network;
use crate::optim::{self, OptimState};
use crate::profile::{EpochProfile, Phase};
use crate::prune::{self, Pruner};
use crate::recipe::Recipe;
use crate::run::{self, EpochMetrics, RunInfo};
use crate::step;
use crate::targets;

/// Mixed into an epoch's seed for its augmentation draws (so they are not the shuffle's).
const AUGMENT_SEED: u64 = 0xA06_5EED;

/// How to run a recipe.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// The run folder.
    pub out: PathBuf,
    /// Dataset folder (else the standard search order).
    pub data: Option<PathBuf>,
    /// Whether the embedded subset may stand in for a full dataset that is not found.
    pub allow_subset: bool,
    /// Continue from the last checkpoint in `out`.
    pub resume: bool,
    /// Write into an existing folder that is not a run (its files may be replaced).
    pub force: bool,
    pub quiet: bool,
    /// Recipe path and overrides, recorded in `run.json`.
    pub recipe_path: String,
    pub overrides: Vec<(String, f64)>,
    /// Stop after this many epochs (for tests of resuming); `None` trains to the end.
    pub stop_after: Option<usize>,
    /// Print where each epoch's time went (`profile`), even when quiet.
    pub profile: bool,
}

impl TrainOptions {
    /// Training into `out` from its start, quietly, with the standard data search: what a
    /// program or a test that calls the library usually wants.
    pub fn quiet(out: &Path) -> TrainOptions {
        TrainOptions {
            out: out.to_path_buf(),
            data: None,
            allow_subset: false,
            resume: false,
            force: false,
            quiet: true,
            recipe_path: "recipe.toml".into(),
            overrides: vec![],
            stop_after: None,
            profile: false,
        }
    }
}

/// What a finished (or stopped) run reached.
#[derive(Debug, Clone)]
pub struct Summary {
    pub metrics: Vec<EpochMetrics>,
    pub out: PathBuf,
    pub net: Network,
}

/// The data a run trains and evaluates on.
pub struct RunData {
    pub train: datasets::Split,
    pub val: Option<datasets::Split>,
    pub test: datasets::Split,
    /// Per-channel normalisation of every split.
    pub norm: datasets::Normalization,
    /// Augmentation of training batches.
    pub augment: datasets::batch::Augment,
    pub classes: usize,
    pub source: String,
}

/// Loads the recipe's dataset (named, or the user's files) and applies its subsets, validation
/// split and normalisation.
pub fn load_data(recipe: &Recipe, data: Option<PathBuf>, allow_subset: bool, quiet: bool) -> anyhow::Result<RunData> {
    let d = match &recipe.data.files {
        None => datasets::Resolver::new(data, quiet).allowing_subset(allow_subset).load(&recipe.data.dataset)?,
        Some(files) => crate::data::load(&recipe.data.dataset, files)?,
    };
    let norm = recipe.data.normalization(d.norm.clone(), d.train.channels).map_err(|e| anyhow::anyhow!(e))?;
    let subset = |s: &datasets::Split, n: usize, seed: u64| {
        if n == 0 || n >= s.len() { s.clone() } else { s.select(&datasets::batch::shuffled(s.len(), seed)[..n]) }
    };
    let train = subset(&d.train, recipe.data.train_subset, 17);
    let test = subset(&d.test, recipe.data.test_subset, 18);
    let (train, val) = if recipe.data.validation > 0.0 {
        let (t, v) = datasets::batch::validation_split(&train, recipe.data.validation, 19);
        (t, Some(v))
    } else {
        (train, None)
    };
    let augment = recipe.data.augment();
    Ok(RunData { train, val, test, norm, augment, classes: d.num_classes, source: d.source.to_string() })
}

fn progress_bar(quiet: bool, steps: u64, epoch: usize, epochs: usize) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(steps);
    bar.set_style(
        ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("{}/{}", epoch + 1, epochs));
    bar
}

/// Trains `recipe` into `opts.out`.
pub fn train(recipe: &Recipe, recipe_text: &str, opts: &TrainOptions) -> anyhow::Result<Summary> {
    train_on(recipe, recipe_text, opts, load_data(recipe, opts.data.clone(), opts.allow_subset, opts.quiet)?)
}

/// Trains on already loaded data (tests use synthetic data).
pub fn train_on(recipe: &Recipe, recipe_text: &str, opts: &TrainOptions, data: RunData) -> anyhow::Result<Summary> {
    let out = &opts.out;
    let epochs = recipe.epochs.ceil() as usize;
    let mut net = Network::new(&recipe.model, data.train.shape(), data.classes, recipe.seed).map_err(|e| {
        anyhow::anyhow!(
            "{}: the model does not fit {}'s {:?} images in {} classes: {e}",
            opts.recipe_path,
            recipe.data.dataset,
            data.train.shape(),
            data.classes
        )
    })?;
    if let Some(q) = &recipe.quantization {
        net.quant = Some(targets::quant_state(q, &net).map_err(|e| e.in_file(&opts.recipe_path))?);
    }
    let mut pruner = Pruner::new(recipe, &net).map_err(|e| e.in_file(&opts.recipe_path))?;
    let mut optim_state = OptimState::new(&net.params.iter().map(|p| p.numel()).collect::<Vec<_>>(), recipe.optimizer.kind);
    let mut metrics: Vec<EpochMetrics> = Vec::new();
    let mut step_count: u64 = 0;
    let mut first_epoch = 0;

    run::check_out_folder(out, opts.force)?;
    let _lock = engine::fsutil::DirLock::acquire(out)?;
    for dir in [out.to_path_buf(), out.join("checkpoints")] {
        engine::fsutil::remove_stale_temporaries(&dir);
    }
    let existing = run::latest_checkpoint(out);
    match (&existing, opts.resume) {
        (Some((_, path)), true) => {
            run::check_same_recipe(out, &recipe.to_toml())?;
            let ck = checkpoint::load(path)?;
            if ck.net.arch != net.arch || ck.net.params.iter().map(|p| &p.shape).ne(net.params.iter().map(|p| &p.shape)) {
                bail!("{}: the checkpoint's model does not match the recipe's", path.display());
            }
            net = ck.net;
            optim_state = ck.optim;
            pruner.restore_last_updates(&ck.progress.last_update).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            for (key, mask) in ck.masks {
                pruner.restore_mask(&key, mask).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            }
            step_count = ck.progress.step;
            first_epoch = ck.progress.epoch;
            let m = out.join("metrics.csv");
            metrics = run::read_metrics(&m)
                .with_context(|| format!("reading {}", m.display()))?
                .into_iter()
                .filter(|r| r.epoch <= first_epoch)
                .collect();
            if !opts.quiet {
                eprintln!("resuming {} after epoch {first_epoch}", out.display());
            }
        }
        (Some(_), false) => bail!("{} already holds a run; pass --resume to continue it or choose another --out", out.display()),
        (None, _) => {}
    }

    std::fs::create_dir_all(out.join("checkpoints")).with_context(|| format!("creating {}", out.display()))?;
    engine::fsutil::write_atomic(&out.join("recipe.toml"), recipe_text.as_bytes())?;
    engine::fsutil::write_atomic(&out.join("recipe.resolved.toml"), recipe.to_toml().as_bytes())?;
    let mut info = RunInfo {
        recipe: opts.recipe_path.clone(),
        overrides: opts.overrides.clone(),
        seed: recipe.seed,
        threads: rayon::current_num_threads(),
        git_revision: run::git_revision(),
        cpu: run::cpu_name(),
        isa: engine::kernels::Isa::detect().name().to_string(),
        dataset: recipe.data.dataset.clone(),
        data_source: data.source.clone(),
        input: net.input,
        classes: net.classes,
        normalization: (data.norm.mean.clone(), data.norm.std.clone()),
        train_images: data.train.len(),
        test_images: data.test.len(),
        started_unix: run::now_unix(),
        finished_unix: None,
        epochs_completed: first_epoch,
        train_seconds: metrics.iter().map(|m| m.seconds).sum(),
        final_test_accuracy: None,
        final_sparsity: None,
    };
    run::write_json(&out.join("run.json"), &info)?;

    let device = step::train_device();
    let batch = recipe.data.batch_size;
    let steps_per_epoch = data.train.len().div_ceil(batch).max(1);
    let targeted = pruner.targeted();
    let frozen: Vec<bool> = net.params.iter().map(|p| !p.trainable).collect();
    let last_epoch = opts.stop_after.map_or(epochs, |s| s.min(epochs));
    let mut teacher = recipe.distillation.as_ref().map(|d| crate::distill::Teacher::load(d, &net.desc.input, net.classes)).transpose()?;
    for epoch in first_epoch..last_epoch {
        let start = Instant::now();
        let epoch_seed = recipe.seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64);
        let order = datasets::batch::shuffled(data.train.len(), epoch_seed);
        let augment = Some((&data.augment, epoch_seed ^ AUGMENT_SEED));
        let bar = progress_bar(opts.quiet, steps_per_epoch as u64, epoch, epochs);
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
        let mut lr = recipe.lr.at(epoch as f64);
        let mut profile = EpochProfile::default();
        let mut lap = Instant::now();
        // `lap` starts each phase; the batch's phase runs from the end of the previous step.
        for b in datasets::batch::batches(&data.train, &order, batch, &data.norm, augment) {
            lap = profile.lap(Phase::Data, lap);
            let e = step_count as f64 / steps_per_epoch as f64;
            if pruner.update(recipe, &net, e) {
                for &p in &targeted {
                    pruner.zero_pruned(recipe, p, e, &mut net.params[p].values);
                }
            }
            lr = recipe.lr.at(e);
            if let Some(q) = &recipe.quantization {
                net.quantization_at(q, e);
            }
            lap = profile.lap(Phase::Masks, lap);
            let n = b.len();
            let soft = match (&mut teacher, &recipe.distillation) {
                (Some(t), Some(d)) if d.active(e) => {
                    Some(step::Soft { targets: t.targets(&b.inputs, n)?, temperature: d.temperature as f32, hardness: d.hardness as f32 })
                }
                _ => None,
            };
            // A teacher's forward pass counts as forward work.
            lap = profile.lap(Phase::Forward, lap);
            let step::StepOutput { loss, correct: ok, grads, stats, forward_seconds, transfer_seconds } =
                step::gradients(&mut net, &device, b.inputs, &b.labels, soft);
            let step_seconds = lap.elapsed().as_secs_f64();
            profile.add(Phase::Forward, forward_seconds);
            profile.add(Phase::Transfer, transfer_seconds);
            profile.add(Phase::Backward, step_seconds - forward_seconds - transfer_seconds);
            lap = Instant::now();
            net.update_running_stats(&stats);
            if !loss.is_finite() {
                bail!("the loss became {loss} at epoch {e:.2}: lower the learning rate");
            }
            // The masks act inside the optimizer's pass: pruned gradients zeroed before the
            // update, pruned weights and momentum after it.
            let masks = pruner.factors(recipe, e);
            let mut values: Vec<Vec<f32>> = net.params.iter_mut().map(|p| std::mem::take(&mut p.values)).collect();
            optim::step(&recipe.optimizer, &mut optim_state, &mut values, &grads, &masks, &frozen, lr);
            for (p, v) in net.params.iter_mut().zip(values) {
                p.values = v;
            }
            profile.lap(Phase::Optimizer, lap);
            step_count += 1;
            loss_sum += loss as f64 * n as f64;
            correct += ok;
            seen += n;
            bar.inc(1);
            if bar.position().is_multiple_of(20) {
                bar.set_message(format!(
                    "loss {:.4} acc {:.3} sparsity {:.3}",
                    loss_sum / seen as f64,
                    correct as f64 / seen as f64,
                    prune::sparsity_of(&net, &targeted)
                ));
            }
            lap = Instant::now();
        }
        // Updates due at the epoch boundary happen now, so the metrics and the checkpoint of
        // this epoch (and a run whose pruning ends with training) see them.
        let boundary = step_count as f64 / steps_per_epoch as f64;
        if pruner.update(recipe, &net, boundary) {
            for &p in &targeted {
                pruner.zero_pruned(recipe, p, boundary, &mut net.params[p].values);
                pruner.zero_pruned(recipe, p, boundary, &mut optim_state.first[p]);
            }
        }
        if let Some(q) = &recipe.quantization {
            net.quantization_at(q, boundary);
        }
        let evaluation = Instant::now();
        let test_accuracy = step::accuracy(&net, &data.test, &data.norm);
        let val_accuracy = data.val.as_ref().map(|v| step::accuracy(&net, v, &data.norm));
        profile.lap(Phase::Evaluation, evaluation);
        let row = EpochMetrics {
            epoch: epoch + 1,
            lr,
            train_loss: loss_sum / seen.max(1) as f64,
            train_accuracy: correct as f64 / seen.max(1) as f64,
            val_accuracy,
            test_accuracy,
            sparsity: prune::sparsity_of(&net, &targeted),
            seconds: start.elapsed().as_secs_f64(),
            layers: targeted.iter().map(|&p| (net.params[p].name.clone(), prune::sparsity_of(&net, &[p]))).collect(),
        };
        bar.finish_and_clear();
        if opts.profile {
            eprintln!("epoch {}/{epochs} profile: {}", row.epoch, profile.summary(row.seconds));
        }
        if !opts.quiet {
            eprintln!(
                "epoch {}/{epochs}: loss {:.4}, train acc {:.4}, test acc {:.4}, sparsity {:.4}, lr {:.2e}, {:.1}s",
                row.epoch, row.train_loss, row.train_accuracy, row.test_accuracy, row.sparsity, row.lr, row.seconds
            );
        }
        metrics.push(row);
        // The metrics row first, then the checkpoint that commits the epoch: a kill between the
        // two leaves a row past the last checkpoint, which resuming drops and computes again.
        engine::fsutil::write_atomic(&out.join("metrics.csv"), run::metrics_csv(&metrics)?.as_bytes())?;
        checkpoint::save(&run::checkpoint_path(out, epoch + 1), &net, &optim_state, &pruner, epoch + 1, step_count)?;
        info.epochs_completed = epoch + 1;
        info.train_seconds = metrics.iter().map(|m| m.seconds).sum();
        run::write_json(&out.join("run.json"), &info)?;
    }
    if last_epoch == epochs {
        info.finished_unix = Some(run::now_unix());
        info.final_test_accuracy = metrics.last().map(|m| m.test_accuracy);
        info.final_sparsity = metrics.last().map(|m| m.sparsity);
        run::write_json(&out.join("run.json"), &info)?;
    }
    Ok(Summary { metrics, out: out.to_path_buf(), net })
}
