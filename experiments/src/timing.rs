//! Timing a point's model: its chosen kernels against dense fp32 kernels in alternating rounds
//! (so this machine's drift affects both alike), each latency with its spread, and the checks
//! that send a doubtful timing back to be measured again and flag it if it stays doubtful.

use std::path::Path;

use engine::compile::{self, Exec, KernelPolicy, Model, Options};
use engine::exec::Session;
use engine::stats::{Latency, bench_input, time_alternating};
use serde::{Deserialize, Serialize};

/// Alternating rounds per measurement (sparse and dense, one block each per round).
pub const ROUNDS: usize = 7;
/// Measurements of one batch size at most: the first and up to two re-measurements.
pub const ATTEMPTS: usize = 3;
/// A speedup whose per-round values spread wider than this (p90 / p10) is measured again.
pub const WIDE_SPREAD: f64 = 1.3;
/// How far a speedup may exceed the FLOP bound (dense over non-zero multiply-adds, times what
/// int8 kernels can add) before it is measured again: cache effects can beat the bound a little.
pub const BOUND_MARGIN: f64 = 2.0;
/// The most an int8 kernel can gain over fp32 per multiply-add (AMX tiles against AVX-512 FMA).
const INT8_GAIN: f64 = 16.0;

/// Timing of one batch size.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BatchTiming {
    pub batch: usize,
    /// Median, 10th and 90th percentile of every run with the chosen kernels, ms.
    pub median_ms: f64,
    #[serde(default)]
    pub p10_ms: f64,
    pub p90_ms: f64,
    /// The same of the dense runs.
    pub dense_median_ms: f64,
    #[serde(default)]
    pub dense_p10_ms: f64,
    #[serde(default)]
    pub dense_p90_ms: f64,
    /// `dense_median_ms / median_ms`.
    pub speedup: f64,
    /// 10th and 90th percentile of the per-round speedups (dense median over sparse median of
    /// each alternating round).
    #[serde(default)]
    pub speedup_p10: f64,
    #[serde(default)]
    pub speedup_p90: f64,
    /// Measurements made (more than one when the first was doubtful); 0 for points timed before
    /// spreads were recorded.
    #[serde(default)]
    pub attempts: usize,
    /// Why the timing is still doubtful after its re-measurements, if it is.
    #[serde(default)]
    pub suspect: Option<String>,
    /// Peers' medians on the exported ONNX, when measured.
    #[serde(default)]
    pub onnxruntime_ms: Option<f64>,
    #[serde(default)]
    pub deepsparse_ms: Option<f64>,
}

impl BatchTiming {
    /// Whether a finished point's timing should be measured again on the next run: it stayed
    /// doubtful, or it predates the spread checks.
    pub fn needs_remeasure(&self) -> bool {
        self.attempts == 0 || self.suspect.is_some()
    }
}

/// The largest speedup the model's arithmetic allows: all multiply-adds over the non-zero
/// ones, times what int8 kernels can add where the model has them.
pub fn speedup_bound(model: &Model) -> f64 {
    let (useful, dense) = model.flops_per_sample();
    let int8 = model.layers.iter().any(|l| matches!(&l.exec, Exec::MatMul(m) if m.int8().is_some()));
    let bound = if useful > 0.0 { dense / useful } else { 1.0 };
    bound * if int8 { INT8_GAIN } else { 1.0 }
}

/// Why a timing is doubtful, if it is: per-round speedups spread too wide, or a speedup beyond
/// what the arithmetic allows.
pub fn doubt(t: &BatchTiming, bound: f64) -> Option<String> {
    let spread = t.speedup_p90 / t.speedup_p10;
    if !spread.is_finite() || spread > WIDE_SPREAD {
        return Some(format!("per-round speedups spread {:.2}x-{:.2}x (wider than {WIDE_SPREAD}x)", t.speedup_p10, t.speedup_p90));
    }
    if t.speedup > BOUND_MARGIN * bound {
        return Some(format!("speedup {:.2}x exceeds {BOUND_MARGIN}x the FLOP bound of {bound:.2}x", t.speedup));
    }
    None
}

/// Times the model with its chosen kernels and with dense kernels at each batch size; a doubtful
/// timing is measured again (up to `ATTEMPTS` in all), and if every attempt is doubtful the one
/// with the narrowest spread is kept, flagged.
pub fn bench(model: &Path, batches: &[usize], threads: usize, seconds: f64) -> anyhow::Result<Vec<BatchTiming>> {
    let graph = engine::load(model)?;
    let sparse = compile::compile(graph.clone(), Options::new(KernelPolicy::Auto)?)?;
    let dense = compile::compile(graph, Options::new(KernelPolicy::Dense)?)?;
    let bound = speedup_bound(&sparse);
    let mut out = Vec::new();
    for &batch in batches {
        let x = bench_input(&sparse, batch)?;
        let (mut s, mut d) = (Session::new(&sparse, threads)?, Session::new(&dense, threads)?);
        let mut kept: Option<BatchTiming> = None;
        for attempt in 1..=ATTEMPTS {
            let (ts, td) = time_alternating(3, ROUNDS, 5, seconds, || s.run(&x, batch).map(|_| ()), || d.run(&x, batch).map(|_| ()))?;
            let mut t = summarize(batch, &ts, &td);
            t.suspect = doubt(&t, bound);
            let narrower = |k: &BatchTiming| t.speedup_p90 / t.speedup_p10 < k.speedup_p90 / k.speedup_p10;
            let done = t.suspect.is_none();
            if done || kept.as_ref().is_none_or(narrower) {
                kept = Some(t);
            }
            if let Some(k) = kept.as_mut() {
                k.attempts = attempt;
            }
            if done {
                break;
            }
        }
        out.push(kept.expect("ATTEMPTS >= 1"));
    }
    Ok(out)
}

/// A measurement's medians and spreads from its per-round runs (seconds).
fn summarize(batch: usize, sparse: &[Vec<f64>], dense: &[Vec<f64>]) -> BatchTiming {
    let (ls, ld) = (Latency::from_seconds(&sparse.concat()), Latency::from_seconds(&dense.concat()));
    let per_round: Vec<f64> =
        sparse.iter().zip(dense).map(|(s, d)| Latency::from_seconds(d).median_ms / Latency::from_seconds(s).median_ms).collect();
    let ratios = Latency::from_seconds(&per_round.iter().map(|r| r / 1e3).collect::<Vec<_>>());
    BatchTiming {
        batch,
        median_ms: ls.median_ms,
        p10_ms: ls.p10_ms,
        p90_ms: ls.p90_ms,
        dense_median_ms: ld.median_ms,
        dense_p10_ms: ld.p10_ms,
        dense_p90_ms: ld.p90_ms,
        speedup: ld.median_ms / ls.median_ms,
        speedup_p10: ratios.p10_ms,
        speedup_p90: ratios.p90_ms,
        attempts: 1,
        suspect: None,
        onnxruntime_ms: None,
        deepsparse_ms: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(speedup: f64, p10: f64, p90: f64) -> BatchTiming {
        summarize(1, &[vec![1.0]], &[vec![speedup]]).with_spread(p10, p90)
    }

    impl BatchTiming {
        fn with_spread(mut self, p10: f64, p90: f64) -> BatchTiming {
            (self.speedup_p10, self.speedup_p90) = (p10, p90);
            self
        }
    }

    #[test]
    fn summaries_take_the_spread_of_per_round_ratios() {
        // Three rounds: the dense run 2x, 3x and 4x the sparse one.
        let t = summarize(4, &[vec![0.010], vec![0.010], vec![0.010]], &[vec![0.020], vec![0.030], vec![0.040]]);
        assert_eq!(t.batch, 4);
        assert!((t.median_ms - 10.0).abs() < 1e-9 && (t.dense_median_ms - 30.0).abs() < 1e-9);
        assert!((t.speedup - 3.0).abs() < 1e-9);
        assert!((t.speedup_p10 - 2.0).abs() < 1e-9 && (t.speedup_p90 - 4.0).abs() < 1e-9);
        assert!((t.dense_p10_ms - 20.0).abs() < 1e-9 && (t.dense_p90_ms - 40.0).abs() < 1e-9);
    }

    #[test]
    fn doubtful_timings_are_named() {
        assert_eq!(doubt(&timing(3.0, 2.9, 3.1), 10.0), None);
        assert!(doubt(&timing(3.0, 2.0, 4.0), 10.0).unwrap().contains("spread"));
        // The quick sweep's outlier: 201x on a model whose arithmetic allows 20x.
        assert!(doubt(&timing(201.0, 200.0, 202.0), 20.0).unwrap().contains("FLOP bound"));
        assert_eq!(doubt(&timing(30.0, 29.0, 31.0), 20.0), None, "within the margin");
        assert!(doubt(&timing(3.0, 0.0, 0.0), 10.0).is_some(), "no spread is not a clean bill");
    }

    #[test]
    fn old_and_flagged_timings_are_measured_again() {
        let mut t = timing(3.0, 2.9, 3.1);
        assert!(!t.needs_remeasure());
        t.suspect = Some("spread".into());
        assert!(t.needs_remeasure());
        t.suspect = None;
        t.attempts = 0;
        assert!(t.needs_remeasure());
    }
}
