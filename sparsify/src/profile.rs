//! Where an epoch's time goes (`sparsify train --profile`): wall-clock seconds per phase of the
//! training loop, summed over the epoch's steps, and a one-line summary.

use std::time::Instant;

/// The phases of an epoch, in the order the summary lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Gathering, normalising (and augmenting) a batch's images.
    Data,
    /// The forward pass and the loss.
    Forward,
    /// The backward pass.
    Backward,
    /// Copying the parameters into burn tensors (fake-quantizing weights under
    /// quantization-aware training) and the gradients out of them.
    Transfer,
    /// The optimizer step, with the masks it applies to gradients, weights and momentum.
    Optimizer,
    /// Mask updates (and zeroing the weights they prune); fake quantization's schedule.
    Masks,
    /// The test (and validation) set's evaluation at the end of the epoch.
    Evaluation,
}

const PHASES: [(Phase, &str); 7] = [
    (Phase::Data, "data"),
    (Phase::Forward, "forward"),
    (Phase::Backward, "backward"),
    (Phase::Transfer, "transfer"),
    (Phase::Optimizer, "optimizer"),
    (Phase::Masks, "masks"),
    (Phase::Evaluation, "evaluation"),
];

/// Seconds spent in each phase of one epoch.
#[derive(Debug, Clone, Default)]
pub struct EpochProfile {
    seconds: [f64; PHASES.len()],
}

impl EpochProfile {
    /// Adds the time since `since` to `phase` and returns now, the start of the next phase.
    pub fn lap(&mut self, phase: Phase, since: Instant) -> Instant {
        let now = Instant::now();
        self.add(phase, now.duration_since(since).as_secs_f64());
        now
    }

    /// Adds `seconds` to `phase`.
    pub fn add(&mut self, phase: Phase, seconds: f64) {
        self.seconds[PHASES.iter().position(|(p, _)| *p == phase).expect("every phase is listed")] += seconds;
    }

    /// Seconds spent in `phase`.
    pub fn seconds(&self, phase: Phase) -> f64 {
        self.seconds[PHASES.iter().position(|(p, _)| *p == phase).expect("every phase is listed")]
    }

    /// `data 0.041 s (3%), forward ...`, and what the phases leave of `total` as `other`.
    pub fn summary(&self, total: f64) -> String {
        let share = |s: f64| if total > 0.0 { 100.0 * s / total } else { 0.0 };
        let mut parts: Vec<String> =
            PHASES.iter().zip(self.seconds).map(|((_, name), s)| format!("{name} {s:.3} s ({:.0}%)", share(s))).collect();
        let other = (total - self.seconds.iter().sum::<f64>()).max(0.0);
        parts.push(format!("other {other:.3} s ({:.0}%)", share(other)));
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_add_up_and_the_rest_is_other() {
        let mut p = EpochProfile::default();
        p.add(Phase::Forward, 0.5);
        p.add(Phase::Forward, 0.25);
        p.add(Phase::Evaluation, 1.0);
        assert_eq!(p.seconds(Phase::Forward), 0.75);
        assert_eq!(p.seconds(Phase::Data), 0.0);
        let s = p.summary(2.0);
        assert!(s.starts_with("data 0.000 s (0%), forward 0.750 s (38%)"), "{s}");
        assert!(s.contains("backward 0.000 s (0%), transfer 0.000 s (0%)"), "{s}");
        assert!(s.ends_with("evaluation 1.000 s (50%), other 0.250 s (12%)"), "{s}");
    }
}
