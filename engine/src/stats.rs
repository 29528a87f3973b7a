//! Latency statistics over repeated runs (mean, median and percentiles, in milliseconds), the
//! timing loops and the input they run on, shared by `engine bench` and the experiments.

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Latency {
    pub mean_ms: f64,
    pub median_ms: f64,
    pub p10_ms: f64,
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
            p10_ms: pct(0.1),
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

/// Deterministic pseudo-random input for timing `model` on `batch` samples (an error, not an
/// abort, where the batch is too large to allocate).
pub fn bench_input(model: &crate::compile::Model, batch: usize) -> crate::Result<Vec<f32>> {
    let per_sample: usize = model.input_shape.iter().product();
    let mut x = crate::error::try_zeros(batch.checked_mul(per_sample), || format!("an input batch of {batch}"))?;
    x.iter_mut().enumerate().for_each(|(i, v)| *v = ((i * 7919) % 1009) as f32 / 504.5 - 1.0);
    // Integer inputs get integers: rows of the table they index (token ids), else ones (an
    // attention mask that hides nothing).
    if let Some(ports) = &model.graph.ports {
        for (range, port) in crate::graph::Ports::placed(&ports.inputs).filter(|(_, p)| p.integer) {
            for sample in x.chunks_mut(per_sample) {
                for (i, v) in sample[range.clone()].iter_mut().enumerate() {
                    *v = port.rows.map_or(1.0, |rows| ((i * 7919 + 13) % rows) as f32);
                }
            }
        }
    }
    Ok(x)
}

/// Timed runs in seconds, one list per round.
pub type Rounds = Vec<Vec<f64>>;

/// Times two candidates in alternating blocks, so that this machine's drift between blocks (up to
/// 2x over seconds on a shared VM) affects both alike and their ratio stays meaningful: `rounds`
/// blocks each, in the order a b, b a, a b, ..., every block one untimed run (the other candidate
/// has just evicted this one's data from cache) and then runs for `seconds / rounds` (at least
/// `min_block_iters` of them). Returns each candidate's timed runs in seconds, one list per round
/// (`concat` them for all runs; round by round they give the spread of the candidates' ratio).
pub fn time_alternating<E>(
    warmup: usize,
    rounds: usize,
    min_block_iters: usize,
    seconds: f64,
    mut a: impl FnMut() -> Result<(), E>,
    mut b: impl FnMut() -> Result<(), E>,
) -> Result<(Rounds, Rounds), E> {
    let rounds = rounds.max(1);
    for _ in 0..warmup {
        a()?;
        b()?;
    }
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    let block = seconds / rounds as f64;
    for round in 0..rounds {
        // Which goes first changes every round (a b, b a, a b, ...), so that neither always runs
        // right after the other's block.
        if round % 2 == 0 {
            ta.push(time_runs(1, min_block_iters, 100_000, block, &mut a)?);
            tb.push(time_runs(1, min_block_iters, 100_000, block, &mut b)?);
        } else {
            tb.push(time_runs(1, min_block_iters, 100_000, block, &mut b)?);
            ta.push(time_runs(1, min_block_iters, 100_000, block, &mut a)?);
        }
    }
    Ok((ta, tb))
}

/// The best seconds per call of `f` over five rounds of `calls` calls, after one warm-up call:
/// the kernel micro-benchmarks' timing (`examples/`).
pub fn best_seconds_per_call(calls: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..5)
        .map(|_| {
            let t = std::time::Instant::now();
            (0..calls).for_each(|_| f());
            t.elapsed().as_secs_f64() / calls.max(1) as f64
        })
        .fold(f64::MAX, f64::min)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alternating_blocks_time_both_candidates_in_turn() {
        let order = std::cell::RefCell::new(Vec::new());
        let run = |name: char| {
            order.borrow_mut().push(name);
            Ok::<(), ()>(())
        };
        let (a, b) = time_alternating(1, 3, 2, 0.0, || run('a'), || run('b')).unwrap();
        assert_eq!((a.len(), b.len()), (3, 3));
        assert_eq!((a.concat().len(), b.concat().len()), (6, 6));
        // Warm-up pair, then per round one untimed and two timed runs of each, the first of the
        // round changing every round.
        assert_eq!(order.into_inner().iter().collect::<String>(), "abaaabbbbbbaaaaaabbb");
    }
}
