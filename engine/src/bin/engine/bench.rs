//! `engine bench`: latency and throughput per batch size, and with `--compare dense` the same
//! model compiled with dense kernels, timed in the same process, with the speedup as a ratio.

use anyhow::bail;
use clap::Args;
use engine::compile::{self, KernelPolicy, Options};
use engine::exec::Session;

use crate::ModelArgs;
use crate::commands::{bench_input, compile_model};
use engine::stats::{Latency, time_runs};

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Batch sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    pub batch: Vec<usize>,
    /// Also run the model with dense kernels and report the speedup.
    #[arg(long, value_parser = ["dense"])]
    pub compare: Option<String>,
    /// Minimum seconds of timed runs per batch size.
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
    /// Warm-up runs before timing.
    #[arg(long, default_value_t = 10)]
    pub warmup: usize,
    /// Print one JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(serde::Serialize)]
struct Row {
    model: String,
    kernels: &'static str,
    batch: usize,
    threads: usize,
    #[serde(flatten)]
    latency: Latency,
    items_per_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    dense_median_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    speedup_vs_dense: Option<f64>,
}

fn measure(session: &mut Session, input: &[f32], batch: usize, a: &BenchArgs) -> anyhow::Result<Latency> {
    let runs = time_runs(a.warmup, 20, 100_000, a.seconds, || session.run(input, batch).map(|_| ()))?;
    Ok(Latency::from_seconds(&runs))
}

pub fn bench(a: &BenchArgs) -> anyhow::Result<()> {
    if a.batch.is_empty() || a.batch.contains(&0) {
        bail!("--batch needs sizes of at least 1");
    }
    let model = compile_model(&a.model)?;
    let dense = match a.compare {
        Some(_) => Some(compile::compile(engine::load(&a.model.model)?, Options::new(KernelPolicy::Dense)?)?),
        None => None,
    };
    let threads = a.model.threads();
    let name = a.model.model.display().to_string();
    if !a.json {
        println!("{name}: {threads} threads, isa {}, kernels {:?}", model.options.isa.name(), a.model.kernels);
        println!(
            "{:>6} {:>12} {:>10} {:>10} {:>10} {:>10} {:>12}",
            "batch", "items/s", "mean ms", "median ms", "p90 ms", "p99 ms", "vs dense"
        );
    }
    for &batch in &a.batch {
        let input = bench_input(&model, batch);
        let mut session = Session::new(&model, threads)?;
        let lat = measure(&mut session, &input, batch, a)?;
        let dense_lat = match &dense {
            Some(d) => Some(measure(&mut Session::new(d, threads)?, &input, batch, a)?),
            None => None,
        };
        let row = Row {
            model: name.clone(),
            kernels: match a.model.kernels {
                KernelPolicy::Auto => "auto",
                KernelPolicy::Dense => "dense",
                KernelPolicy::Sparse => "sparse",
            },
            batch,
            threads,
            latency: lat,
            items_per_s: batch as f64 / (lat.mean_ms / 1e3),
            dense_median_ms: dense_lat.map(|d| d.median_ms),
            speedup_vs_dense: dense_lat.map(|d| d.median_ms / lat.median_ms),
        };
        if a.json {
            println!("{}", serde_json::to_string(&row)?);
        } else {
            let ratio = row.speedup_vs_dense.map_or("-".to_string(), |r| format!("{r:.2}x"));
            println!(
                "{:>6} {:>12.1} {:>10.4} {:>10.4} {:>10.4} {:>10.4} {:>12}",
                batch, row.items_per_s, lat.mean_ms, lat.median_ms, lat.p90_ms, lat.p99_ms, ratio
            );
        }
    }
    Ok(())
}
