//! `sparsify`: train with a recipe, inspect recipes, export trained models, prune trained models
//! one-shot.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use sparsify::checkpoint;
use sparsify::export::{self, Format};
use sparsify::oneshot::obs::ObsOptions;
use sparsify::oneshot::{self, Method, allocate, sensitivity};
use sparsify::recipe::Recipe;
use sparsify::train::{self, TrainOptions};

#[derive(Parser)]
#[command(name = "sparsify", version, about = "Recipe-driven gradual magnitude pruning on burn")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model as a recipe says, writing checkpoints, metrics.csv and run.json.
    Train {
        /// Recipe file (TOML).
        #[arg(long)]
        recipe: PathBuf,
        /// Override a recipe variable, e.g. --set final_sparsity=0.95 (repeatable).
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
        /// Folder holding the dataset (else SPARSIFY_DATA, ./data, /usr/share/datasets, cache).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Let the embedded subset (10,000 / 2,000 images) stand in when the full set is not found.
        #[arg(long)]
        allow_subset: bool,
        /// Run folder (default runs/<recipe name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Seed of initialisation and shuffling (overrides the recipe's).
        #[arg(long)]
        seed: Option<u64>,
        /// Worker threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// No progress bars or per-epoch lines.
        #[arg(long)]
        quiet: bool,
        /// Continue the run in --out from its last checkpoint.
        #[arg(long)]
        resume: bool,
        /// Write into an existing --out folder that is not a run (its files may be replaced).
        #[arg(long)]
        force: bool,
        /// After each epoch, print where its time went: data, forward, backward, optimizer,
        /// masks, evaluation (shown with --quiet too).
        #[arg(long)]
        profile: bool,
    },
    /// Write a trained run's model for the engine (native) or as ONNX.
    Export {
        /// Run folder written by `sparsify train`.
        #[arg(long)]
        run: PathBuf,
        /// Output file; `.onnx` implies --format onnx.
        #[arg(long)]
        out: PathBuf,
        /// File format (default: from the extension, native otherwise).
        #[arg(long, value_enum)]
        format: Option<Format>,
    },
    /// Prune a trained model without training: every linear layer and convolution to
    /// --sparsity, from a few calibration images (SparseGPT's `obs`, Wanda or magnitude).
    Oneshot {
        #[command(flatten)]
        prune: PruneArgs,
        /// Fraction of each layer's weights to prune, in [0, 1).
        #[arg(long, required_unless_present = "recipe", conflicts_with = "recipe")]
        sparsity: Option<f64>,
        /// Or the per-layer targets of a recipe's gmp modifier (its model's prunable weights
        /// matched to this model's layers in order).
        #[arg(long)]
        recipe: Option<PathBuf>,
        /// Output file; `.onnx` is ONNX, anything else the engine's file. `<out>.oneshot.json`
        /// beside it says what was done.
        #[arg(long)]
        out: PathBuf,
        /// No per-layer lines.
        #[arg(long)]
        quiet: bool,
    },
    /// Each prunable layer alone pruned one-shot to each level: the loss and top-1 it costs on
    /// test images and the time it saves in the engine, as CSV and a plot.
    Sensitivity {
        #[command(flatten)]
        prune: PruneArgs,
        /// Sparsity levels, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "0.5,0.7,0.8,0.9,0.95,0.98")]
        levels: Vec<f64>,
        /// Batch sizes to time each layer at, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,64")]
        batch: Vec<usize>,
        /// Test images the loss and top-1 are measured on.
        #[arg(long, default_value_t = 2000)]
        eval_samples: usize,
        /// Profiled runs per timing (their median is kept).
        #[arg(long, default_value_t = 20)]
        iters: usize,
        /// The CSV; the plot goes beside it (`.png`, `.svg`), at the largest batch.
        #[arg(long)]
        out: PathBuf,
        /// No per-layer lines.
        #[arg(long)]
        quiet: bool,
    },
    /// Per-layer sparsities from a sensitivity table that reach a measured speedup (or latency)
    /// with the least estimated loss, written as a recipe with per-layer GMP targets.
    Allocate {
        /// The CSV of `sparsify sensitivity`.
        #[arg(long)]
        sensitivity: PathBuf,
        /// Speedup over the unpruned model to reach, in the engine at --batch.
        #[arg(long, conflicts_with = "target_latency_ms")]
        target_speedup: Option<f64>,
        /// Or the model's time to reach, ms.
        #[arg(long)]
        target_latency_ms: Option<f64>,
        /// The batch size whose timings count.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// The recipe to give the per-layer targets to (its one gmp modifier's final_sparsity).
        #[arg(long)]
        recipe: PathBuf,
        /// The recipe written.
        #[arg(long)]
        out: PathBuf,
    },
    /// Inspect recipes.
    Recipe {
        #[command(subcommand)]
        command: RecipeCommand,
    },
}

/// The model to prune one-shot, the images that calibrate it, and how its weights are chosen.
#[derive(Args)]
struct PruneArgs {
    /// The model: ONNX or the engine's file, or a run folder of `sparsify train`.
    #[arg(long)]
    model: PathBuf,
    /// How to choose the weights to prune.
    #[arg(long, value_enum, default_value_t = Method::Obs)]
    method: Method,
    /// Structure: unstructured, a block such as 4x1 or 1x4, or N:M such as 2:4.
    #[arg(long, default_value = "unstructured")]
    mask: String,
    /// Dataset whose training images calibrate (and whose test images evaluate).
    #[arg(long, default_value = "fashion-mnist")]
    calibration: String,
    /// Folder holding the dataset (else the standard search order).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Let the embedded subset stand in when the full set is not found.
    #[arg(long)]
    allow_subset: bool,
    /// Calibration images.
    #[arg(long, default_value_t = 512)]
    samples: usize,
    /// obs: damping added to the Hessian's diagonal, as a fraction of its mean.
    #[arg(long, default_value_t = ObsOptions::default().damp)]
    damp: f64,
    /// obs: columns that share one mask selection.
    #[arg(long, default_value_t = ObsOptions::default().block)]
    block: usize,
    /// Threads of the engine (calibration, evaluation, timing).
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

impl PruneArgs {
    /// The model's graph, the dataset checked against its input, and the settings.
    fn load(&self, sparsity: f64) -> anyhow::Result<(engine::graph::Graph, datasets::Dataset, String, oneshot::Settings)> {
        let mask = sparsify::mask::MaskKind::parse(&self.mask).map_err(anyhow::Error::msg)?;
        if self.block == 0 || self.threads == 0 || !self.damp.is_finite() || self.damp < 0.0 {
            bail!("--block and --threads must be at least 1, --damp at least 0");
        }
        let graph =
            if self.model.is_dir() { export::to_graph(&checkpoint::final_network(&self.model)?)? } else { engine::load(&self.model)? };
        let (d, source) = oneshot::load_images(&self.calibration, self.data.clone(), self.allow_subset, &graph.input_shape)?;
        let obs = ObsOptions { damp: self.damp, block: self.block };
        Ok((graph, d, source, oneshot::Settings { sparsity, method: self.method, mask, obs, threads: self.threads }))
    }
}

#[derive(Subcommand)]
enum RecipeCommand {
    /// Print the resolved recipe and its schedule, epoch by epoch.
    Show {
        /// Recipe file (TOML).
        recipe: PathBuf,
        /// Override a recipe variable (repeatable).
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
    },
    /// Validate a recipe (fields, values, parameter names); exit non-zero on the first error.
    Check {
        /// Recipe file (TOML).
        recipe: PathBuf,
        /// Override a recipe variable (repeatable).
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
    },
}

fn parse_sets(sets: &[String]) -> anyhow::Result<Vec<(String, f64)>> {
    sets.iter()
        .map(|s| {
            let (k, v) = s.split_once('=').with_context(|| format!("--set {s}: expected NAME=VALUE"))?;
            let v: f64 = v.trim().parse().with_context(|| format!("--set {s}: '{v}' is not a number"))?;
            Ok((k.trim().to_string(), v))
        })
        .collect()
}

fn main() -> ExitCode {
    datasets::cli::exit_quietly_on_broken_pipe();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Train { recipe: path, set, data, allow_subset, out, seed, threads, quiet, resume, force, profile } => {
            if let Some(n) = threads {
                if n == 0 {
                    bail!("--threads must be at least 1");
                }
                rayon::ThreadPoolBuilder::new().num_threads(n).build_global().context("configuring threads")?;
            }
            let overrides = parse_sets(&set)?;
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            let mut recipe = Recipe::parse(&text, &path.display().to_string(), &overrides)?;
            if let Some(s) = seed {
                recipe.seed = s;
            }
            let stem = path.file_stem().map_or("run".into(), |s| s.to_string_lossy().into_owned());
            let out = out.unwrap_or_else(|| PathBuf::from("runs").join(stem));
            let opts = TrainOptions {
                out,
                data,
                allow_subset,
                resume,
                force,
                quiet,
                recipe_path: path.display().to_string(),
                overrides,
                stop_after: None,
                profile,
            };
            let summary = train::train(&recipe, &text, &opts)?;
            if let Some(last) = summary.metrics.last() {
                println!(
                    "{}: test accuracy {:.4}, sparsity {:.4} after {} epochs",
                    summary.out.display(),
                    last.test_accuracy,
                    last.sparsity,
                    last.epoch
                );
            }
        }
        Command::Export { run, out, format } => {
            let net = checkpoint::final_network(&run)?;
            let format = format.unwrap_or_else(|| Format::from_path(&out));
            export::export(&net, &out, format)?;
            let bytes = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
            println!("{}: {:?} model, {} bytes", out.display(), format, bytes);
        }
        Command::Oneshot { prune, sparsity, recipe, out, quiet } => {
            let start = std::time::Instant::now();
            let (mut graph, d, source, settings) = prune.load(sparsity.unwrap_or(0.0))?;
            let levels = match (&recipe, sparsity) {
                (Some(path), _) => {
                    let r = Recipe::load(path, &[])?;
                    oneshot::recipe_levels(&r, &path.display().to_string(), &graph)?
                }
                (None, Some(s)) => vec![s; oneshot::targets(&graph)?.len()],
                (None, None) => bail!("give --sparsity or --recipe"),
            };
            let (inputs, calibration_labels) = oneshot::images(&d, &d.train, prune.samples, 0);
            let n = calibration_labels.len();
            let layers = oneshot::prune_each(&mut graph, &inputs, n, &settings, &levels, |layer| {
                if !quiet {
                    eprintln!("pruning {layer}");
                }
            })?;
            export::write_graph(&graph, &out, Format::from_path(&out))?;
            let report = oneshot::Report {
                model: prune.model.display().to_string(),
                out: out.display().to_string(),
                method: settings.method,
                mask: settings.mask,
                sparsity,
                recipe: recipe.map(|r| r.display().to_string()),
                calibration: source,
                samples: n,
                damp: prune.damp,
                block: prune.block,
                layers,
                seconds: start.elapsed().as_secs_f64(),
            };
            let json = out.with_file_name(format!("{}.oneshot.json", out.file_name().map_or("model".into(), |f| f.to_string_lossy())));
            sparsify::run::write_json(&json, &report)?;
            for l in report.layers.iter().filter(|_| !quiet) {
                println!("{:<16} [{}, {}] sparsity {:.3}, output change {:.4}", l.layer, l.rows, l.cols, l.sparsity, l.relative_error);
            }
            println!(
                "{}: {} layers pruned by {:?} in {:.1} s ({})",
                out.display(),
                report.layers.len(),
                settings.method,
                report.seconds,
                json.display()
            );
        }
        Command::Sensitivity { prune, levels, batch, eval_samples, iters, out, quiet } => {
            if levels.is_empty() || batch.is_empty() || batch.contains(&0) || iters == 0 || eval_samples == 0 {
                bail!("--levels and --batch need values (batches >= 1), --iters and --eval-samples at least 1");
            }
            let (graph, d, _, settings) = prune.load(0.0)?;
            let (inputs, calibration_labels) = oneshot::images(&d, &d.train, prune.samples, 0);
            let n = calibration_labels.len();
            let (eval_inputs, labels) = oneshot::images(&d, &d.test, eval_samples, 1);
            let eval = sensitivity::Eval { inputs: &eval_inputs, labels: &labels };
            let plan = sensitivity::Plan { levels: &levels, batches: &batch, iters, settings };
            let rows = sensitivity::measure(&graph, &inputs, n, &eval, &plan, |layer| {
                if !quiet {
                    eprintln!("layer {layer}: {} levels", levels.len());
                }
            })?;
            sensitivity::write_csv(&out, &rows)?;
            let largest = *batch.iter().max().expect("checked non-empty");
            sensitivity::plot(&out.with_extension(""), &rows, largest)?;
            println!(
                "{}: {} layers x {} levels x {} batch sizes (plot: {})",
                out.display(),
                rows.len() / (levels.len() * batch.len()),
                levels.len(),
                batch.len(),
                out.with_extension("png").display()
            );
        }
        Command::Allocate { sensitivity: table, target_speedup, target_latency_ms, batch, recipe, out } => {
            let rows = sensitivity::read_csv(&table)?;
            let model_ms = rows
                .iter()
                .find(|r| r.batch == batch)
                .map(|r| r.model_ms)
                .with_context(|| format!("{}: no timings at batch {batch}", table.display()))?;
            let target_ms = match (target_speedup, target_latency_ms) {
                (Some(s), None) if s >= 1.0 => model_ms / s,
                (None, Some(ms)) if ms > 0.0 => ms,
                _ => bail!("give --target-speedup (at least 1) or --target-latency-ms (above 0)"),
            };
            let base = std::fs::read_to_string(&recipe).with_context(|| format!("reading {}", recipe.display()))?;
            let (a, mut text) = allocate::allocate_recipe(&base, &recipe.display().to_string(), &rows, batch, target_ms)?;
            text = format!(
                "# Per-layer targets chosen by `sparsify allocate` from {} for {:.4} ms at batch {batch} ({:.2}x the unpruned {:.4} ms):\n# estimated {:.4} ms, loss increase {:.4} (the layers' one-shot increases added up).\n{text}",
                table.display(),
                target_ms,
                model_ms / target_ms,
                model_ms,
                a.estimated_ms,
                a.estimated_loss_increase
            );
            engine::fsutil::write_atomic(&out, text.as_bytes())?;
            for c in &a.choices {
                println!("{:<16} {:>5.1}%  {:.4} -> {:.4} ms, loss +{:.4}", c.layer, 100.0 * c.level, c.dense_ms, c.ms, c.loss_increase);
            }
            println!(
                "{}: estimated {:.4} ms ({:.2}x), loss +{:.4}",
                out.display(),
                a.estimated_ms,
                model_ms / a.estimated_ms,
                a.estimated_loss_increase
            );
        }
        Command::Recipe { command: RecipeCommand::Check { recipe, set } } => {
            let r = Recipe::load(&recipe, &parse_sets(&set)?)?;
            sparsify::targets::check_params(&r, &recipe.display().to_string())?;
            let quant = r.quantization.as_ref().map_or(String::new(), |q| format!(", int8 quantization from epoch {}", q.start_epoch));
            println!("{}: ok ({} epochs, {} pruning modifier(s){quant})", recipe.display(), r.epochs, r.pruning.len());
        }
        Command::Recipe { command: RecipeCommand::Show { recipe, set } } => {
            let r = Recipe::load(&recipe, &parse_sets(&set)?)?;
            sparsify::targets::check_params(&r, &recipe.display().to_string())?;
            print!("{}", r.to_toml());
            let (input, classes) = r.nominal().map_err(|e| anyhow::anyhow!(e))?;
            let net =
                sparsify::model::Network::zeroed(&r.model, input, classes).map_err(|e| anyhow::anyhow!("{}: {e}", recipe.display()))?;
            let pruner = sparsify::prune::Pruner::new(&r, &net).map_err(|e| e.in_file(&recipe.display().to_string()))?;
            println!("\n# schedule at the start of each epoch (target sparsity over each modifier's weights)");
            let mut header = format!("{:>6} {:>12}", "epoch", "lr");
            for (i, g) in r.pruning.iter().enumerate() {
                header += &format!(" {:>14}", format!("gmp{i} ({})", g.mask.label()));
            }
            if r.quantization.is_some() {
                header += &format!(" {:>14}", "quantization");
            }
            println!("{header}");
            for e in 0..=(r.epochs.ceil() as usize) {
                let mut line = format!("{e:>6} {:>12.6}", r.lr.at(e as f64));
                for (g, targets) in r.pruning.iter().zip(pruner.gradual_targets()) {
                    // Target over all the modifier's weights (per-parameter targets weighted by size).
                    let (mut zeros, mut total) = (0.0, 0.0);
                    for &t in targets {
                        let p = &net.params[t];
                        let s = if (e as f64) < g.start_epoch { 0.0 } else { g.target(&p.name, e as f64) };
                        zeros += s * p.numel() as f64;
                        total += p.numel() as f64;
                    }
                    line += &format!(" {:>14.4}", zeros / total.max(1.0));
                }
                if let Some(q) = &r.quantization {
                    let e = e as f64;
                    let state = match (q.active(e), q.observing(e)) {
                        (false, _) => "off",
                        (true, true) => "int8",
                        (true, false) => "int8 frozen",
                    };
                    line += &format!(" {state:>14}");
                }
                println!("{line}");
            }
        }
    }
    Ok(())
}
