//! Latency statistics over repeated runs (mean, median and percentiles, in milliseconds), shared
//! by `engine bench` and the experiments.

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Latency {
    pub mean_ms: f64,
    pub median_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub iters: usize,
}

impl Latency {
    /// From per-run durations in seconds.
    pub fn from_seconds(samples: &[f64]) -> Latency {
        let mut ms: Vec<f64> = samples.iter().map(|s| s * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let pct = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
        Latency {
            mean_ms: ms.iter().sum::<f64>() / ms.len() as f64,
            median_ms: pct(0.5),
            p90_ms: pct(0.9),
            p99_ms: pct(0.99),
            iters: ms.len(),
        }
    }
}

/// Runs `f` `warmup` times, then until `min_iters` runs and `min_seconds` have passed (at most
/// `max_iters`), returning each timed run's seconds.
pub fn time_runs<E>(
    warmup: usize,
    min_iters: usize,
    max_iters: usize,
    min_seconds: f64,
    mut f: impl FnMut() -> Result<(), E>,
) -> Result<Vec<f64>, E> {
    for _ in 0..warmup {
        f()?;
    }
    let start = std::time::Instant::now();
    let mut out = Vec::new();
    while out.len() < max_iters && (out.len() < min_iters || start.elapsed().as_secs_f64() < min_seconds) {
        let t = std::time::Instant::now();
        f()?;
        out.push(t.elapsed().as_secs_f64());
    }
    Ok(out)
}
