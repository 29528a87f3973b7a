//! `engine`: inspect, run, evaluate and benchmark sparse models on the CPU.

mod bench;
mod commands;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use engine::compile::KernelPolicy;

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
    #[arg(long)]
    pub threads: Option<usize>,
    /// Kernels for weighted layers: auto (time dense and sparse per layer), dense or sparse.
    #[arg(long, value_enum, default_value_t = KernelPolicy::Auto)]
    pub kernels: KernelPolicy,
}

impl ModelArgs {
    pub fn threads(&self) -> usize {
        self.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}

#[derive(Subcommand)]
enum Command {
    /// Layers, shapes, sparsity, chosen kernels and memory per layer.
    Info {
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Run a model on a NumPy file ([batch, features...] float32) and write the output as .npy.
    Run {
        #[command(flatten)]
        model: ModelArgs,
        /// Input .npy file, float32, batch first.
        #[arg(long)]
        input: PathBuf,
        /// Output .npy file (written atomically).
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
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info { model } => commands::info(&model),
        Command::Run { model, input, output } => commands::run(&model, &input, &output),
        Command::Eval { model, dataset, data, batch, json } => commands::eval(&model, &dataset, data, batch, json),
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
