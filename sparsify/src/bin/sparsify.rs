//! `sparsify`: train with a recipe, inspect recipes, export trained models.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use sparsify::export::{self, Format};
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
    /// Inspect recipes.
    Recipe {
        #[command(subcommand)]
        command: RecipeCommand,
    },
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
        Command::Train { recipe: path, set, data, allow_subset, out, seed, threads, quiet, resume, force } => {
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
            let net = train::final_network(&run)?;
            let format = format.unwrap_or_else(|| Format::from_path(&out));
            export::export(&net, &out, format)?;
            let bytes = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
            println!("{}: {:?} model, {} bytes", out.display(), format, bytes);
        }
        Command::Recipe { command: RecipeCommand::Check { recipe, set } } => {
            let r = Recipe::load(&recipe, &parse_sets(&set)?)?;
            sparsify::recipe::check_params(&r, &recipe.display().to_string())?;
            let quant = r.quantization.as_ref().map_or(String::new(), |q| format!(", int8 quantization from epoch {}", q.start_epoch));
            println!("{}: ok ({} epochs, {} pruning modifier(s){quant})", recipe.display(), r.epochs, r.pruning.len());
        }
        Command::Recipe { command: RecipeCommand::Show { recipe, set } } => {
            let r = Recipe::load(&recipe, &parse_sets(&set)?)?;
            sparsify::recipe::check_params(&r, &recipe.display().to_string())?;
            print!("{}", r.to_toml());
            let classes = datasets::registry::spec(&r.data.dataset)?.num_classes();
            let net = sparsify::model::Network::new(&r.model, 28, classes, 0);
            let pruner = sparsify::prune::Pruner::new(&r, &net).map_err(|e| anyhow::anyhow!("{}: {e}", recipe.display()))?;
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
                for (g, targets) in r.pruning.iter().zip(&pruner.gmp_targets) {
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
