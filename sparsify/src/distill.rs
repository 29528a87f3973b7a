//! The teacher of knowledge distillation: a trained model (a run folder, or an ONNX or engine
//! file) run in the engine on each training batch, its outputs softened by the temperature into
//! the targets the student's softened outputs are pulled towards.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use engine::compile::{self, KernelPolicy, Model, Options};
use engine::exec::Session;

use crate::recipe::Distillation;

/// A teacher ready to run.
pub struct Teacher {
    session: Session<Arc<Model>>,
    classes: usize,
    temperature: f64,
}

impl Teacher {
    /// Loads and compiles the recipe's teacher; it must take the student's input and give one
    /// output per class.
    pub fn load(d: &Distillation, input_shape: &[usize], classes: usize) -> anyhow::Result<Teacher> {
        let path = Path::new(&d.teacher);
        let graph = if path.is_dir() {
            crate::export::to_graph(&crate::checkpoint::final_network(path)?)?
        } else {
            engine::load(path).with_context(|| format!("loading the teacher {}", path.display()))?
        };
        let model = Arc::new(compile::compile(graph, Options::new(KernelPolicy::Auto)?)?);
        let inputs: usize = model.input_shape.iter().product();
        if inputs != input_shape.iter().product::<usize>() || model.output_shape.iter().product::<usize>() != classes {
            bail!(
                "the teacher {} takes {:?} and gives {:?}; the student takes {input_shape:?} and gives [{classes}]",
                path.display(),
                model.input_shape,
                model.output_shape
            );
        }
        Ok(Teacher { session: Session::new(model, 2)?, classes, temperature: d.temperature })
    }

    /// The teacher's class probabilities at the temperature for `n` normalized inputs,
    /// `[n, classes]` (outputs that are already probabilities are taken as their logarithms).
    pub fn targets(&mut self, inputs: &[f32], n: usize) -> anyhow::Result<Vec<f32>> {
        let out = self.session.run(inputs, n)?;
        Ok(out.chunks(self.classes).flat_map(|row| soften(row, self.temperature)).collect())
    }
}

/// Whether a model's output row is already a probability distribution (the model ends in a
/// softmax) rather than logits.
pub fn is_distribution(row: &[f32]) -> bool {
    row.iter().all(|v| (0.0..=1.0).contains(v)) && (row.iter().sum::<f32>() - 1.0).abs() < 1e-3
}

/// `softmax(logits / t)`; a row that is already a probability distribution gives
/// `softmax(ln(p) / t)`.
pub fn soften(row: &[f32], t: f64) -> Vec<f32> {
    let probabilities = is_distribution(row);
    let logits: Vec<f64> = row.iter().map(|&v| if probabilities { (v as f64).max(1e-12).ln() } else { v as f64 }).collect();
    let max = logits.iter().copied().fold(f64::MIN, f64::max);
    let e: Vec<f64> = logits.iter().map(|l| ((l - max) / t).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|v| (v / sum) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::soften;

    #[test]
    fn softening_flattens_and_reads_probabilities_as_their_logs() {
        let p = soften(&[2.0, 0.0], 1.0);
        assert!((p[0] - 1.0 / (1.0 + (-2.0f32).exp())).abs() < 1e-6);
        let hot = soften(&[2.0, 0.0], 4.0);
        assert!(hot[0] < p[0] && hot[0] > 0.5, "a higher temperature flattens");
        let again = soften(&p, 1.0);
        assert!((again[0] - p[0]).abs() < 1e-6, "probabilities at T = 1 stay as they are");
    }
}
