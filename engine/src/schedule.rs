//! Depth-wise ("tensor column") scheduling: which layers run together on a tile of samples, and
//! how wide the tiles are.
//!
//! Layer-wise execution runs every tile through one layer before the next layer starts, so each
//! layer's whole output goes out to memory and comes back. Depth-wise execution groups
//! consecutive layers into columns whose packed weights plus one tile's live activations fit a
//! cache budget (the L2 size by default): each tile runs through a whole column while it stays in
//! its core's cache, and the tiles are spread over the threads. A layer that does not fit with
//! its neighbours ends the column (and may form a column of its own that does not fit). Tiles are
//! as wide as possible (up to 64 samples, and narrow enough that every thread gets one), and
//! narrower only where a layer's activations alone would overflow the budget (the im2col buffers
//! of convolutions). Samples are independent, so any grouping computes the same outputs.

use std::ops::Range;

use crate::compile::{Exec, Model};
use crate::kernels::q8;

/// How layers are ordered over tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Schedule {
    /// Every tile through a layer before the next layer (each layer's output fully materialised).
    Layerwise,
    /// Tiles through columns of layers that fit the cache budget.
    Depthwise,
    /// Depth-wise when the plan gains from it (some column holds several layers, or every
    /// column fits and tiles let each thread work on its own), else layer-wise.
    #[default]
    Auto,
}

impl Schedule {
    pub fn name(self) -> &'static str {
        match self {
            Schedule::Layerwise => "layerwise",
            Schedule::Depthwise => "depthwise",
            Schedule::Auto => "auto",
        }
    }
}

/// Samples per tile when executing layer by layer, and the widest depth-wise tile.
pub const MAX_TILE: usize = 64;
/// The narrowest depth-wise tile considered for batches that allow wider ones: below this the
/// batched kernels lose their vector width.
const MIN_TILE: usize = 8;

/// Environment variable capping the depth-wise tile width (for experiments with the planner).
pub const TILE_ENV: &str = "ENGINE_TILE";

/// A group of consecutive layers that run together on one tile.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub layers: Range<usize>,
    /// Packed weights of the column plus the largest live activations of one tile, in bytes.
    pub working_set: usize,
    pub fits: bool,
}

/// The schedule chosen for one batch size and thread count.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// `Layerwise` or `Depthwise` (never `Auto`).
    pub schedule: Schedule,
    pub tile: usize,
    pub columns: Vec<Column>,
    pub budget: usize,
}

/// The L2 cache of one core, from Linux's sysfs; 1 MiB if it cannot be read.
pub fn l2_cache_bytes() -> usize {
    let read = |index: usize, file: &str| std::fs::read_to_string(format!("/sys/devices/system/cpu/cpu0/cache/index{index}/{file}"));
    (0..8)
        .find_map(|i| {
            let level = read(i, "level").ok()?;
            (level.trim() == "2").then(|| parse_size(read(i, "size").ok()?.trim()))?
        })
        .unwrap_or(1 << 20)
}

/// `2048K`, `1M`, `512` to bytes.
pub fn parse_size(s: &str) -> Option<usize> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: usize = digits.parse().ok()?;
    match unit.to_ascii_uppercase().as_str() {
        "" => Some(n),
        "K" | "KB" => Some(n << 10),
        "M" | "MB" => Some(n << 20),
        _ => None,
    }
}

/// Row length of a tile of `w` samples (padded to 16 floats from 16 up, as the executor does).
pub fn padded(w: usize) -> usize {
    if w >= 16 { w.next_multiple_of(16) } else { w }
}

/// Bytes of a layer's packed weights and parameters.
fn weight_bytes(exec: &Exec) -> usize {
    match exec {
        Exec::MatMul(m) => m.weight_bytes(),
        Exec::Affine { scale, shift, .. } => 4 * (scale.len() + shift.len()),
        _ => 0,
    }
}

/// Bytes of a layer's live activations for a tile of `w` samples: inputs, output and scratch.
fn activation_bytes(model: &Model, layer: usize, w: usize) -> usize {
    let l = &model.layers[layer];
    let ld = padded(w);
    let values: usize = l.inputs.iter().chain([&l.output]).map(|&v| model.value_sizes[v]).sum();
    let scratch = match &l.exec {
        Exec::MatMul(m) => {
            let cols_w = m.conv.map_or(1, |g| g.out_hw[0] * g.out_hw[1]) * ld;
            let im2col = if m.conv.is_some() { m.cols * cols_w * 4 } else { 0 };
            im2col + m.int8.as_ref().map_or(0, |_| q8::quantized_len(m.cols, cols_w))
        }
        _ => 0,
    };
    4 * values * ld + scratch
}

/// Greedy columns for tiles of `w` samples: a layer joins the column while the column still fits.
fn columns(model: &Model, w: usize, budget: usize) -> Vec<Column> {
    let mut out: Vec<Column> = Vec::new();
    let (mut start, mut weights, mut acts) = (0, 0, 0);
    for l in 0..model.layers.len() {
        let (lw, la) = (weight_bytes(&model.layers[l].exec), activation_bytes(model, l, w));
        if l > start && weights + lw + acts.max(la) > budget {
            out.push(Column { layers: start..l, working_set: weights + acts, fits: weights + acts <= budget });
            (start, weights, acts) = (l, 0, 0);
        }
        weights += lw;
        acts = acts.max(la);
    }
    if start < model.layers.len() {
        out.push(Column { layers: start..model.layers.len(), working_set: weights + acts, fits: weights + acts <= budget });
    }
    out
}

/// The plan for `batch` samples on `threads` threads.
pub fn plan(model: &Model, batch: usize, threads: usize, schedule: Schedule, budget: usize) -> Plan {
    let layerwise = || {
        let tile = if batch <= 1 { 1 } else { MAX_TILE.min(batch) };
        let columns = (0..model.layers.len())
            .map(|l| {
                let working_set = weight_bytes(&model.layers[l].exec) + activation_bytes(model, l, tile);
                Column { layers: l..l + 1, working_set, fits: working_set <= budget }
            })
            .collect();
        Plan { schedule: Schedule::Layerwise, tile, columns, budget }
    };
    if schedule == Schedule::Layerwise || batch <= 1 {
        return Plan { schedule: if batch <= 1 { schedule.min_resolved() } else { Schedule::Layerwise }, ..layerwise() };
    }
    // Tiles narrow enough that every thread gets one, and as wide as the fewest columns allow.
    let mut widest = MAX_TILE.min(batch.div_ceil(threads.max(1)));
    if let Some(t) = std::env::var(TILE_ENV).ok().and_then(|v| v.parse::<usize>().ok()).filter(|&t| t >= 1) {
        widest = t.min(batch);
    }
    let candidates: Vec<usize> = [64, 32, 16, 8, 4, 2, 1].into_iter().filter(|&t| t <= widest && (t >= MIN_TILE || t == widest)).collect();
    let candidates = if candidates.is_empty() || std::env::var(TILE_ENV).is_ok() { vec![widest] } else { candidates };
    // The widest tile whose largest layer activations (inputs, output, im2col) fit the budget:
    // narrower tiles cost kernel efficiency, so weights that nearly fill the cache on their own
    // never shrink the tile, only activations do.
    let acts = |t: usize| (0..model.layers.len()).map(|l| activation_bytes(model, l, t)).max().unwrap_or(0);
    let tile = candidates.iter().copied().find(|&t| acts(t) <= budget).unwrap_or(*candidates.last().expect("one candidate"));
    let cols = columns(model, tile, budget);
    let depthwise = Plan { schedule: Schedule::Depthwise, tile, columns: cols, budget };
    match schedule {
        Schedule::Depthwise => depthwise,
        _ => {
            // Tiles spread over the threads pay when each thread's column stays in its cache;
            // a layer whose weights overflow it is better split by rows, so that each thread
            // streams only its share of them.
            let grouped = depthwise.columns.iter().any(|c| c.layers.len() > 1);
            let spread = threads > 1 && batch.div_ceil(tile) >= threads && batch <= MAX_TILE && depthwise.columns.iter().all(|c| c.fits);
            if grouped || spread { depthwise } else { layerwise() }
        }
    }
}

impl Schedule {
    /// At batch 1 there is one tile and nothing to group: report the requested schedule, with
    /// `auto` shown as layer-wise.
    fn min_resolved(self) -> Schedule {
        if self == Schedule::Depthwise { Schedule::Depthwise } else { Schedule::Layerwise }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("2048K"), Some(2 << 20));
        assert_eq!(parse_size("1M"), Some(1 << 20));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("lots"), None);
        assert!(l2_cache_bytes() >= 64 << 10);
    }
}
