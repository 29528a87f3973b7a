//! Training checkpoints: parameters, optimizer state and masks in one safetensors file, with the
//! architecture and progress in its metadata, written atomically. A checkpoint alone is enough
//! to export the model or to resume training where it stopped.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, bail};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use crate::arch::Arch;
use crate::model::Network;
use crate::optim::OptimState;
use crate::prune::Pruner;

const FORMAT: &str = "sparsify-checkpoint";

/// What a checkpoint records besides tensors.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Progress {
    /// Epochs completed.
    pub epoch: usize,
    /// Optimizer steps taken.
    pub step: u64,
    pub arch: Arch,
    /// The images the network reads, `[channels, rows, cols]` (checkpoints written before
    /// images had channels have `input_side` instead: square greyscale images).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<[usize; 3]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_side: Option<usize>,
    pub classes: usize,
    pub last_update: Vec<Option<f64>>,
    pub optimizer_steps: u64,
    /// Parameter names, shapes, whether prunable and whether trainable, in order.
    #[serde(deserialize_with = "params_any_version")]
    pub params: Vec<ParamEntry>,
    /// Quantization state (observer ranges included), for quantization-aware runs.
    #[serde(default)]
    pub quant: Option<crate::quant::QuantState>,
    #[serde(default)]
    pub bn_frozen: bool,
}

/// A parameter's name, shape, whether it is prunable and whether it is trainable.
pub type ParamEntry = (String, Vec<usize>, bool, bool);

/// Reads the parameter list of this version or of the first one, whose entries had no
/// `trainable` flag (every parameter of those models was trained).
fn params_any_version<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<ParamEntry>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Entry {
        Current(String, Vec<usize>, bool, bool),
        First(String, Vec<usize>, bool),
    }
    Ok(Vec::<Entry>::deserialize(d)?
        .into_iter()
        .map(|e| match e {
            Entry::Current(n, s, p, t) => (n, s, p, t),
            Entry::First(n, s, p) => (n, s, p, true),
        })
        .collect())
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes a checkpoint atomically.
pub fn save(path: &Path, net: &Network, optim: &OptimState, pruner: &Pruner, epoch: usize, step: u64) -> anyhow::Result<()> {
    let progress = Progress {
        epoch,
        step,
        arch: net.arch.clone(),
        input: Some(net.input),
        input_side: None,
        classes: net.classes,
        last_update: pruner.last_updates(),
        optimizer_steps: optim.steps,
        params: net.params.iter().map(|p| (p.name.clone(), p.shape.clone(), p.prunable, p.trainable)).collect(),
        quant: net.quant.clone(),
        bn_frozen: net.bn_frozen,
    };
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (i, p) in net.params.iter().enumerate() {
        tensors.push((format!("param.{}", p.name), Dtype::F32, vec![p.numel()], f32_bytes(&p.values)));
        tensors.push((format!("optim.first.{i}"), Dtype::F32, vec![p.numel()], f32_bytes(&optim.first[i])));
        if let Some(s) = optim.second.get(i) {
            tensors.push((format!("optim.second.{i}"), Dtype::F32, vec![p.numel()], f32_bytes(s)));
        }
    }
    for (key, mask) in pruner.saved_masks() {
        tensors.push((format!("mask.{key}"), Dtype::U8, vec![mask.len()], mask.iter().map(|&k| k as u8).collect()));
    }
    let meta: HashMap<String, String> = [("format".into(), FORMAT.into()), ("progress".into(), serde_json::to_string(&progress)?)].into();
    let views: Vec<(String, TensorView)> =
        tensors.iter().map(|(n, d, s, b)| Ok((n.clone(), TensorView::new(*d, s.clone(), b)?))).collect::<anyhow::Result<_>>()?;
    let bytes = safetensors::serialize(views, &Some(meta))?;
    engine::fsutil::write_atomic(path, &bytes)?;
    Ok(())
}

/// A checkpoint read back.
pub struct Loaded {
    pub progress: Progress,
    pub net: Network,
    pub optim: OptimState,
    /// Masks by key (see `Pruner::saved_masks`).
    pub masks: Vec<(String, Vec<bool>)>,
}

/// Reads a checkpoint, checking that every tensor is present with the recorded size.
pub fn load(path: &Path) -> anyhow::Result<Loaded> {
    let bytes = std::fs::read(path).with_context(|| format!("reading checkpoint {}", path.display()))?;
    let bad = |m: String| anyhow::anyhow!("{}: not a valid checkpoint: {m}", path.display());
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let meta = header.metadata().clone().unwrap_or_default();
    if meta.get("format").map(String::as_str) != Some(FORMAT) {
        bail!(bad("missing the sparsify-checkpoint marker".into()));
    }
    let progress: Progress =
        serde_json::from_str(meta.get("progress").map(String::as_str).unwrap_or("")).map_err(|e| bad(e.to_string()))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let f32s = |name: &str, len: usize| -> anyhow::Result<Vec<f32>> {
        let t = st.tensor(name).map_err(|e| bad(format!("{name}: {e}")))?;
        if t.dtype() != Dtype::F32 || t.data().len() != 4 * len {
            bail!(bad(format!("{name} has the wrong type or size")));
        }
        Ok(t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    };
    let input =
        progress.input.or(progress.input_side.map(|side| [1, side, side])).ok_or_else(|| bad("it records no input shape".into()))?;
    let mut net = Network::zeroed(&progress.arch, input, progress.classes).map_err(|e| bad(e.to_string()))?;
    let recorded = progress.params.iter().map(|(name, shape, ..)| (name, shape));
    if recorded.ne(net.params.iter().map(|p| (&p.name, &p.shape))) {
        bail!(bad(format!("its parameters are not those of a {} for {input:?} images", progress.arch.label())));
    }
    let (mut first, mut second) = (Vec::new(), Vec::new());
    for (i, p) in net.params.iter_mut().enumerate() {
        let n = p.numel();
        p.values = f32s(&format!("param.{}", p.name), n)?;
        first.push(f32s(&format!("optim.first.{i}"), n)?);
        if st.tensor(&format!("optim.second.{i}")).is_ok() {
            second.push(f32s(&format!("optim.second.{i}"), n)?);
        }
    }
    let mut masks = Vec::new();
    for name in st.names() {
        if let Some(key) = name.strip_prefix("mask.") {
            let t = st.tensor(name).map_err(|e| bad(e.to_string()))?;
            masks.push((key.to_string(), t.data().iter().map(|&b| b != 0).collect()));
        }
    }
    if let Some(q) = &progress.quant
        && q.layers.iter().any(|l| net.params.get(l.weight).is_none_or(|p| !p.prunable))
    {
        bail!(bad("its quantization state names a parameter that is not a weight".into()));
    }
    net.quant = progress.quant.clone();
    net.bn_frozen = progress.bn_frozen;
    let optim = OptimState { first, second, steps: progress.optimizer_steps };
    Ok(Loaded { progress, net, optim, masks })
}

/// The network of a run's last checkpoint.
pub fn final_network(run_dir: &Path) -> anyhow::Result<Network> {
    let (_, path) = crate::run::latest_checkpoint(run_dir)
        .with_context(|| format!("{} has no checkpoints (is it a sparsify run folder?)", run_dir.display()))?;
    Ok(load(&path)?.net)
}
