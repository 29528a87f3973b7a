//! `engine bench`: latency and throughput per batch size, and with `--compare` a baseline timed
//! in the same process, in blocks alternating with the model's, with the speedup as a ratio:
//! `dense` (the same model compiled with dense kernels), or `layerwise` / `depthwise` (the same
//! compiled model under that schedule), or `one-thread` (the same model and schedule on one
//! thread).

use anyhow::{Context, bail};
use clap::Args;
use engine::compile::{self, KernelPolicy, Model, Options};
use engine::exec::Session;
use engine::schedule::Schedule;

use crate::ModelArgs;
use crate::commands::compile_model;
use engine::report::{self, BenchRow};
use engine::stats::{Latency, bench_input, time_alternating};

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Batch sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    pub batch: Vec<usize>,
    /// Also time a baseline, in blocks alternating with the model's, and report the speedup over
    /// it: dense kernels, the layerwise or depthwise schedule, or one thread (the speedup is then
    /// the threads' throughput over one thread's).
    #[arg(long, value_parser = ["dense", "layerwise", "depthwise", "one-thread"])]
    pub compare: Option<String>,
    /// Also time another model file as the baseline, in blocks alternating with this one's (the
    /// fp32 export of the network this int8 model was trained from, say), compiled with automatic
    /// kernel choice, on the same threads and schedule; it must take the same input.
    #[arg(long, value_name = "FILE", conflicts_with = "compare")]
    pub baseline_model: Option<std::path::PathBuf>,
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

/// Blocks of timed runs of the model and of its baseline, alternating (`COMPARE_ROUNDS` of each),
/// `--seconds` in all for each: a ratio of two back-to-back measurements on this kind of machine
/// can be off by its drift between them (up to 2x).
fn measure_against(
    session: &mut Session<&Model>,
    baseline: &mut Session<&Model>,
    input: &[f32],
    batch: usize,
    a: &BenchArgs,
) -> anyhow::Result<(Latency, Latency)> {
    let (runs, base) = time_alternating(
        a.warmup,
        COMPARE_ROUNDS,
        2,
        a.seconds,
        || session.run(input, batch).map(|_| ()),
        || baseline.run(input, batch).map(|_| ()),
    )?;
    Ok((Latency::from_seconds(&runs.concat()), Latency::from_seconds(&base.concat())))
}

/// Alternating blocks per candidate in a `--compare` measurement.
const COMPARE_ROUNDS: usize = 10;

/// What the model is timed against (`--compare`, `--baseline-model`).
enum Baseline {
    /// Another compiled model: the same file with dense kernels, or `--baseline-model`.
    Model(Box<Model>),
    /// The same model under another schedule.
    Schedule(Schedule),
    /// The same model and schedule on one thread.
    OneThread,
}

fn baseline(a: &BenchArgs, model: &Model) -> anyhow::Result<Option<Baseline>> {
    if let Some(path) = &a.baseline_model {
        let other = compile::compile(engine::load(path)?, Options::new(KernelPolicy::Auto)?)
            .with_context(|| format!("compiling {}", path.display()))?;
        if other.input_shape != model.input_shape {
            bail!(
                "--baseline-model {} takes input {:?}; {} takes {:?}",
                path.display(),
                other.input_shape,
                a.model.model.display(),
                model.input_shape
            );
        }
        return Ok(Some(Baseline::Model(Box::new(other))));
    }
    Ok(match a.compare.as_deref() {
        Some("dense") => {
            Some(Baseline::Model(Box::new(compile::compile(engine::load(&a.model.model)?, Options::new(KernelPolicy::Dense)?)?)))
        }
        Some("layerwise") => Some(Baseline::Schedule(Schedule::Layerwise)),
        Some("depthwise") => Some(Baseline::Schedule(Schedule::Depthwise)),
        Some("one-thread") => Some(Baseline::OneThread),
        _ => None,
    })
}

pub fn bench(a: &BenchArgs) -> anyhow::Result<()> {
    if a.batch.is_empty() || a.batch.contains(&0) {
        bail!("--batch needs sizes of at least 1");
    }
    let model = compile_model(&a.model)?;
    let baseline = baseline(a, &model)?;
    let threads = a.model.threads();
    let name = a.model.model.display().to_string();
    if !a.json {
        println!(
            "{name}: {threads} threads, isa {}, kernels {:?}, schedule {}",
            model.options.isa.name(),
            a.model.kernels,
            a.model.schedule.name()
        );
        let vs = format!("vs {}", a.compare.as_deref().or(a.baseline_model.as_ref().map(|_| "baseline")).unwrap_or("-"));
        println!(
            "{:>6} {:>12} {:>10} {:>10} {:>10} {:>10} {:>12} {:>16}",
            "batch", "items/s", "mean ms", "median ms", "p90 ms", "p99 ms", vs, "plan"
        );
    }
    for &batch in &a.batch {
        let input = bench_input(&model, batch)?;
        let mut session = a.model.session(&model)?;
        let budget = a.model.cache_budget;
        let mut base_session = match &baseline {
            Some(Baseline::Model(other)) => Some(a.model.session(other)?),
            Some(Baseline::Schedule(s)) => Some(Session::with_schedule(&model, threads, *s, budget)?),
            Some(Baseline::OneThread) => Some(Session::with_schedule(&model, 1, a.model.schedule, budget)?),
            None => None,
        };
        let (lat, baseline_lat) = match &mut base_session {
            Some(b) => {
                let (lat, base) = measure_against(&mut session, b, &input, batch, a)?;
                (lat, Some(base))
            }
            None => (report::measure(&mut session, &model, batch, a.warmup, a.seconds)?, None),
        };
        let dense_lat = baseline_lat.filter(|_| a.compare.as_deref() == Some("dense"));
        let row = BenchRow {
            dense_median_ms: dense_lat.map(|d| d.median_ms),
            speedup_vs_dense: dense_lat.map(|d| d.median_ms / lat.median_ms),
            baseline: a.compare.clone().or_else(|| a.baseline_model.as_ref().map(|p| p.display().to_string())),
            baseline_median_ms: baseline_lat.map(|d| d.median_ms),
            speedup: baseline_lat.map(|d| d.median_ms / lat.median_ms),
            ..BenchRow::new(&name, &model, a.model.kernels, &session, batch, lat)
        };
        if a.json {
            println!("{}", serde_json::to_string(&row)?);
        } else {
            let ratio = row.speedup.map_or("-".to_string(), |r| format!("{r:.2}x"));
            let plan = format!("{} t{} c{}", row.schedule, row.tile, row.columns);
            println!(
                "{:>6} {:>12.1} {:>10.4} {:>10.4} {:>10.4} {:>10.4} {:>12} {:>16}",
                batch, row.items_per_s, lat.mean_ms, lat.median_ms, lat.p90_ms, lat.p99_ms, ratio, plan
            );
        }
    }
    Ok(())
}
