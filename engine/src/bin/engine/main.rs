//! `engine`: inspect, run, evaluate and benchmark sparse models on the CPU.

mod bench;
mod commands;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use engine::compile::KernelPolicy;
use engine::schedule::Schedule;

#[derive(Parser)]
#[command(name = "engine", version, about = "A sparse CPU inference runtime: native model files and ONNX")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Flags every command that runs a model shares.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// Model file: the engine's native format (from `sparsify export`) or ONNX.
    #[arg(long)]
    pub model: PathBuf,
    /// Worker threads (default: all cores).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    /// Kernels for weighted layers: auto (time dense and sparse per layer), dense or sparse.
    #[arg(long, value_enum, default_value_t = KernelPolicy::Auto)]
    pub kernels: KernelPolicy,
    /// Layer order: layerwise (each layer over the whole batch), depthwise (tiles through
    /// columns of layers that fit the cache, convolutions on large images in row bands), or auto
    /// (the plan `engine info` shows; a depth-wise plan is timed against layer-wise execution, and
    /// against the widest tile throughout, at the first run of each batch size, the fastest kept).
    #[arg(long, value_enum, default_value_t = Schedule::Auto)]
    pub schedule: Schedule,
    /// Cache budget of a depth-wise column, in bytes (`2M`, `512K`; default: this CPU's L2).
    #[arg(long, value_parser = parse_budget)]
    pub cache_budget: Option<usize>,
}

fn parse_budget(s: &str) -> Result<usize, String> {
    engine::schedule::parse_size(s).filter(|&b| b > 0).ok_or_else(|| format!("'{s}' is not a size such as 2M, 512K or 1048576"))
}

impl ModelArgs {
    pub fn threads(&self) -> usize {
        self.threads.map_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()), usize::from)
    }
    /// A session for `model` with these threads, schedule and budget.
    pub fn session<'m>(&self, model: &'m engine::compile::Model) -> anyhow::Result<engine::exec::Session<&'m engine::compile::Model>> {
        Ok(engine::exec::Session::with_schedule(model, self.threads(), self.schedule, self.cache_budget)?)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Layers, shapes, sparsity, chosen kernels and memory per layer, and the schedule's plan.
    Info {
        #[command(flatten)]
        model: ModelArgs,
        /// Batch size the plan is shown for.
        #[arg(long, default_value_t = 64)]
        batch: usize,
    },
    /// Run a model on NumPy files (one per input, batch first) and write each output as .npy.
    Run {
        #[command(flatten)]
        model: ModelArgs,
        /// Input .npy file, batch first (float32; integer or bool for integer inputs). A model
        /// with several inputs takes one `--input NAME=FILE.npy` per input.
        #[arg(long, required = true)]
        input: Vec<String>,
        /// Output .npy file (written atomically); for a model with several outputs, a folder that
        /// receives one `NAME.npy` per output.
        #[arg(long)]
        output: PathBuf,
    },
    /// Top-1 accuracy on a dataset's test set, and latency.
    Eval {
        #[command(flatten)]
        model: ModelArgs,
        /// Dataset name (fashion-mnist or mnist).
        #[arg(long, default_value = datasets::DEFAULT_DATASET)]
        dataset: String,
        /// Folder holding the dataset (else SPARSIFY_DATA, ./data, /usr/share/datasets, cache).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Let the embedded subset (2,000 test images) stand in when the full set is not found.
        #[arg(long)]
        allow_subset: bool,
        /// Batch size.
        #[arg(long, default_value_t = 256)]
        batch: usize,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Latency and throughput per batch size, as DeepSparse's benchmark reports them.
    Bench(bench::BenchArgs),
    /// Per layer: time, share of the total, useful GFLOP/s, sparsity and kernel.
    Analyze {
        #[command(flatten)]
        model: ModelArgs,
        /// Batch size.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Timed repetitions (the median is reported).
        #[arg(long, default_value_t = 20)]
        iters: usize,
    },
}

fn main() -> ExitCode {
    datasets::cli::exit_quietly_on_broken_pipe();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info { model, batch } => commands::info(&model, batch),
        Command::Run { model, input, output } => commands::run(&model, &input, &output),
        Command::Eval { model, dataset, data, allow_subset, batch, json } => {
            commands::eval(&model, &dataset, datasets::Resolver::new(data, json).allowing_subset(allow_subset), batch, json)
        }
        Command::Bench(args) => bench::bench(&args),
        Command::Analyze { model, batch, iters } => commands::analyze(&model, batch, iters),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
