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
//! of convolutions). Where even one sample's images overflow it, a column of convolutions, pools
//! and element-wise layers is cut into row bands (`Column::bands`). Samples are independent and
//! bands only reorder the same row computations, so any plan computes the same outputs.

use std::ops::Range;

use crate::compile::{Exec, Kernel, Layer, MatMul, Model};
use crate::kernels::direct;

/// How layers are ordered over tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Schedule {
    /// Every tile through a layer before the next layer (each layer's output fully materialised).
    Layerwise,
    /// Tiles through columns of layers that fit the cache budget.
    Depthwise,
    /// Depth-wise when the plan gains from it (some column holds several layers, or every
    /// column fits and tiles let each thread work on its own), else layer-wise; a depth-wise plan
    /// is timed against layer-wise execution (and against the widest tile throughout, where its
    /// tiles are narrower) at the first run of each batch size, the fastest kept.
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

/// Samples in one AVX-512 vector of f32: the narrowest tile the batched kernels fill.
const VECTOR_TILE: usize = 16;

/// A weighted layer's useful FLOPs per sample: per output position, times the positions.
fn sample_work(m: &MatMul) -> f64 {
    m.useful_flops_per_column() * m.positions()
}

/// The share of a sample's useful multiply-adds that linear layers do (the rest: convolutions,
/// which vectorise over output positions as well as samples).
fn linear_work_share(model: &Model) -> f64 {
    let (mut linear, mut total) = (0.0, 0.0);
    for l in &model.layers {
        if let Exec::MatMul(m) = &l.exec {
            let work = sample_work(m);
            total += work;
            if m.conv.is_none() {
                linear += work;
            }
        }
    }
    if total > 0.0 { linear / total } else { 0.0 }
}

/// Whether a mostly-convolutional model runs best one sample per tile: convolutions running the
/// direct kernel do most of its work, each of them takes one sample at a time (AVX-512, stride 1
/// along rows), and their output rows, weighted by each layer's work, fill at least 90% of their
/// 16-float vectors (other convolutions run im2col, which takes any tile width). The 96x96
/// convolution stack (rows of 96) measured 1.3-2.5x faster at batches 8-64 in one-sample tiles
/// than in the 4-, 16- or 32-sample tiles chosen before (the batched direct kernel takes no width
/// below 16, so 4-sample tiles had left it for im2col); LeNet-5 (rows of 28 and 10, 81% full)
/// keeps its wider tiles, which measured faster there (BENCHMARKS.md, "Depth-wise").
fn one_sample_tiles(model: &Model) -> bool {
    let isa = model.options.isa;
    let (mut filled, mut direct_work, mut total) = (0.0, 0.0, 0.0);
    for l in &model.layers {
        let Exec::MatMul(m) = &l.exec else { continue };
        let work = sample_work(m);
        total += work;
        let Some(g) = m.conv.filter(|_| m.kernel(false) == Kernel::Direct) else { continue };
        if m.kernel(true) != Kernel::Direct || !direct::takes(isa, 1, &g) {
            return false;
        }
        let row = g.out_hw[1];
        filled += work * row as f64 / row.next_multiple_of(VECTOR_TILE) as f64;
        direct_work += work;
    }
    direct_work > 0.5 * total && filled >= 0.9 * direct_work
}

/// Environment variable capping the depth-wise tile width (for experiments with the planner).
pub const TILE_ENV: &str = "ENGINE_TILE";

/// A group of consecutive layers that run together on one tile.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub layers: Range<usize>,
    /// Packed weights of the column plus the largest live activations of one tile (of one band
    /// of rows, when banded), in bytes.
    pub working_set: usize,
    pub fits: bool,
    /// Row bands of the last layer's output (1: whole images). A column of convolutions, pools
    /// and element-wise layers whose images do not fit the budget runs band by band: each layer
    /// computes the rows of its output that the band needs (the border rows shared with the
    /// previous band were computed by it and are reused), so a band's rows stay in cache from
    /// the column's first layer to its last.
    pub bands: usize,
    /// Samples per tile. Columns after the first ones may run wider tiles than the plan's
    /// `tile` (`widen_tail`); the executor moves the values that cross into them.
    pub tile: usize,
}

/// The schedule chosen for one batch size and thread count.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// `Layerwise` or `Depthwise` (never `Auto`).
    pub schedule: Schedule,
    /// Samples per tile of the first column (see `Column::tile`).
    pub tile: usize,
    pub columns: Vec<Column>,
    pub budget: usize,
}

impl Plan {
    /// Samples per tile of the column that runs `layer` (a weighted layer runs the kernel chosen
    /// for one sample where this is 1).
    pub fn tile_of(&self, layer: usize) -> usize {
        self.columns.iter().find(|c| c.layers.contains(&layer)).map_or(self.tile, |c| c.tile)
    }
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
        Exec::GroupConv { weight, bias, expand, .. } => 4 * (weight.len() + bias.len()) + expand.as_ref().map_or(0, |m| m.weight_bytes()),
        Exec::Binary { constant: Some(c), .. } => 4 * c.len(),
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
            let s = m.scratch(model.options.isa, ld);
            s.bytes + s.quantized
        }
        _ => 0,
    };
    4 * values * ld + scratch
}

/// Packed weights plus the largest live activations of the layers in `layers` for tiles of `w`
/// samples cut into `bands` row bands.
fn working_set(model: &Model, layers: Range<usize>, w: usize, bands: usize) -> usize {
    let weights: usize = layers.clone().map(|l| weight_bytes(&model.layers[l].exec)).sum();
    let acts = layers.map(|l| (activation_bytes(model, l, w) as f64 * band_fraction(&model.layers[l], bands)) as usize).max().unwrap_or(0);
    weights + acts
}

/// The share of a layer's activations one of `bands` row bands touches: its rows plus the
/// window's border rows.
fn band_fraction(layer: &Layer, bands: usize) -> f64 {
    if bands <= 1 || layer.out_shape.len() != 3 {
        return 1.0;
    }
    let rows = layer.out_shape[1].max(1);
    let border = match &layer.exec {
        Exec::MatMul(m) => m.conv.map_or(0, |g| g.window.kernel[0] - 1),
        Exec::Pool { geometry, .. } => geometry.window.kernel[0] - 1,
        _ => 0,
    };
    ((rows.div_ceil(bands) + border) as f64 / rows as f64).min(1.0)
}

/// The fewest row bands (1, or from `band_counts` for a bandable column) that make `layers` fit.
fn fitting_bands(model: &Model, layers: Range<usize>, w: usize, budget: usize) -> Option<usize> {
    if working_set(model, layers.clone(), w, 1) <= budget {
        return Some(1);
    }
    if !bandable(model, layers.clone()) {
        return None;
    }
    band_counts(image_rows(model, layers.clone())).find(|&b| working_set(model, layers.clone(), w, b) <= budget)
}

/// The fewest output rows among `layers` (1 for a layer without rows): what row bands divide.
fn image_rows(model: &Model, layers: Range<usize>) -> usize {
    layers.map(|l| model.layers[l].out_shape.get(1).copied().unwrap_or(1)).min().unwrap_or(1)
}

/// Band counts the planner tries for images of `rows` rows: powers of two, then one row per band.
fn band_counts(rows: usize) -> impl Iterator<Item = usize> {
    (1..).map(|p| 1usize << p).take_while(move |&b| b < rows).chain(std::iter::once(rows).filter(|&r| r > 1))
}

/// Layers a column looks ahead for a place where it fits again (`columns`).
const LOOKAHEAD: usize = 4;

/// Output rows per band at least, for a column that took layers on by looking ahead: bands of
/// one row ran ResNet-50's 28x28 3x3 convolutions 1.7x slower than bands of three or four
/// (results/column-lookahead.md).
const MIN_BAND_ROWS: usize = 3;

/// Greedy columns of `layers` for tiles of `w` samples: a layer joins the column while the column
/// still fits (cut into row bands if it must).
fn columns(model: &Model, layers: Range<usize>, w: usize, budget: usize) -> Vec<Column> {
    let column = |layers: Range<usize>| {
        let bands = fitting_bands(model, layers.clone(), w, budget).unwrap_or(1);
        let working_set = working_set(model, layers.clone(), w, bands);
        Column { layers, working_set, fits: working_set <= budget, bands, tile: w }
    };
    let mut out = Vec::new();
    let mut start = layers.start;
    let mut l = layers.start + 1;
    while l < layers.end {
        if fitting_bands(model, start..l + 1, w, budget).is_none() {
            // A column that cannot end at `l` may still fit a few layers on, where the values
            // it leaves are read only inside it again (a residual block's input, read by the
            // block's first layer and by its addition): then it takes those layers too.
            let fits_again = |e: usize| {
                fitting_bands(model, start..e + 1, w, budget).is_some_and(|bands| image_rows(model, start..e + 1) >= MIN_BAND_ROWS * bands)
            };
            match (l + 1..layers.end.min(l + 1 + LOOKAHEAD)).find(|&e| fits_again(e)) {
                Some(e) => l = e,
                None => {
                    out.push(column(start..l));
                    start = l;
                }
            }
        }
        l += 1;
    }
    if start < layers.end {
        out.push(column(start..layers.end));
    }
    out
}

/// Whether the activations of each of `layers` for tiles of `w` samples (inputs, output, im2col)
/// fit the budget, in row bands where a convolution's images overflow it.
fn activations_fit(model: &Model, layers: Range<usize>, w: usize, budget: usize) -> bool {
    layers.into_iter().all(|l| {
        let acts = activation_bytes(model, l, w) as f64;
        let rows = model.layers[l].out_shape.get(1).copied().unwrap_or(1);
        let banded = bandable(model, l..l + 1).then(|| band_fraction(&model.layers[l], rows));
        acts * banded.unwrap_or(1.0) <= budget as f64
    })
}

/// A convolution's output plane (rows times columns) in floats, for one sample; None for other
/// layers.
fn output_plane(layer: &Layer) -> Option<usize> {
    match &layer.exec {
        Exec::MatMul(m) => m.conv.map(|g| g.out_hw[0] * g.out_hw[1]),
        _ => None,
    }
}

/// The columns after the first ones that needed narrow `tile`s, rebuilt for tiles of `wide`
/// samples: from the first column after which every convolution's output plane leaves
/// one-sample rows on partial vectors (whether their activations fit the cache or not: the
/// wide tiles' kernels gain more than a column's cache reuse does). Large early images
/// force narrow tiles (ResNet-50's 56x56 stage, one sample at batch 16), and the small late ones
/// then run one sample's 14x14 or 7x7 positions at a time, rows of 196 or 49 floats off cache
/// lines and in partial register strips. ResNet-50 90% at batch 16 on 2 threads (`engine analyze`
/// per layer): its 14x14 and 7x7 stages ran 1.9x and 2.0x faster in tiles of 8 samples than of
/// one, its 56x56 stage (planes of whole vectors, the one-sample direct convolution) 1.3x slower.
/// The values crossing into the wide columns are copied once into the wide tiles' layout. Int8
/// models keep one tile width: their codes and quantized inputs pass between layers in per-tile
/// slots that such a copy does not move.
fn widen_tail(model: &Model, narrow: Vec<Column>, tile: usize, wide: usize, budget: usize) -> Vec<Column> {
    let int8 = model.layers.iter().any(|l| matches!(&l.exec, Exec::MatMul(m) if m.int8().is_some()));
    if wide <= tile || int8 {
        return narrow;
    }
    let n = model.layers.len();
    // One sample's channel rows fill 16-float vectors and start on cache lines only where the
    // plane is a multiple of 16 floats: the wide tiles start after the last such convolution,
    // where some convolution is left.
    let after_whole =
        model.layers.iter().rposition(|l| output_plane(l).is_some_and(|p| p.is_multiple_of(VECTOR_TILE))).map_or(0, |l| l + 1);
    let widens = |start: usize| start >= after_whole && model.layers[start..].iter().any(|l| output_plane(l).is_some());
    let Some(b) = (1..narrow.len()).find(|&b| widens(narrow[b].layers.start)) else {
        return narrow;
    };
    let start = narrow[b].layers.start;
    let mut out = narrow;
    out.truncate(b);
    out.extend(columns(model, start..n, wide, budget));
    out
}

/// One-sample columns cut into row bands only where some convolution overflows the budget on its
/// own: a banded column whose convolutions each fit with their whole images runs as one column
/// per layer instead. Bands re-read the column's weights once per band and run its kernels on a
/// few rows at a time; they pay only where a convolution, which reads its input many times, would
/// otherwise have its images leave the cache (element-wise layers and pools read each value about
/// once either way). ResNet-50's 14x14 stage ran faster layer by layer, its 56x56 and 28x28
/// stages in bands. Nor do they pay where the convolution's weights fill half the budget
/// themselves: each band re-reads them (ResNet-50's last stride-2 convolution on its phase
/// images, 1.8 MiB of weights for 7 output rows, ran 5x slower in 7 bands).
fn unband_fitting(model: &Model, columns: Vec<Column>, budget: usize) -> Vec<Column> {
    let alone = |l: usize| weight_bytes(&model.layers[l].exec) + activation_bytes(model, l, 1);
    let bands_pay = |l: usize| {
        matches!(model.layers[l].exec, Exec::MatMul(_)) && alone(l) > budget && weight_bytes(&model.layers[l].exec) <= budget / 2
    };
    columns
        .into_iter()
        .flat_map(|c| {
            if c.bands > 1 && !c.layers.clone().any(bands_pay) {
                c.layers.map(|l| Column { layers: l..l + 1, working_set: alone(l), fits: true, bands: 1, tile: c.tile }).collect()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// A layer that works on images row by row: a convolution, a pool, or an element-wise layer on
/// `[C, H, W]` values. Not a convolution by Winograd's products on one sample, which transforms
/// whole images (in bands of rows it ran im2col's way: YOLOv5s's stem 2.87 ms against 1.00).
fn spatial(layer: &Layer) -> bool {
    let image_op = match &layer.exec {
        Exec::MatMul(m) => m.conv.is_some() && m.one_sample_winograd().is_none(),
        Exec::Pool { .. } | Exec::Affine { .. } | Exec::Relu | Exec::Add { .. } | Exec::Unary(_) => true,
        _ => false,
    };
    image_op && layer.out_shape.len() == 3
}

/// Whether `layers` can run in row bands: all spatial, and every value they make but the last
/// is read only inside the column (the bands leave rows that no layer of the column needs
/// uncomputed).
pub fn bandable(model: &Model, layers: Range<usize>) -> bool {
    let inside = |reader: usize| layers.contains(&reader);
    !layers.is_empty()
        && layers.clone().all(|l| spatial(&model.layers[l]))
        && layers.clone().take(layers.len() - 1).all(|l| {
            let v = model.layers[l].output;
            v != model.output_value && model.layers.iter().enumerate().all(|(r, layer)| !layer.inputs.contains(&v) || inside(r))
        })
}

/// For band `band` of `bands` of a bandable column, the output rows each of its layers must have
/// computed: the band's share of the last layer's rows, and back through the windows, the rows
/// each earlier layer's output feeds into them.
pub fn band_rows(model: &Model, layers: Range<usize>, bands: usize, band: usize) -> Vec<Range<usize>> {
    let start = layers.start;
    let last = layers.end - 1;
    let rows = model.layers[last].out_shape[1];
    let mut need = vec![0..0; layers.len()];
    need[last - start] = band * rows / bands..(band + 1) * rows / bands;
    for l in layers.clone().rev() {
        let out = need[l - start].clone();
        if out.is_empty() {
            continue;
        }
        let layer = &model.layers[l];
        let input = match &layer.exec {
            Exec::MatMul(m) => m.conv.expect("spatial").input_rows(out.clone()),
            Exec::Pool { geometry, .. } => geometry.input_rows(out.clone()),
            _ => out.clone(),
        };
        for (i, &v) in layer.inputs.iter().enumerate() {
            // A convolution's residual (its second input) is read at its output's rows.
            let input = if i > 0 && matches!(layer.exec, Exec::MatMul(_)) { out.clone() } else { input.clone() };
            if let Some(p) = layers.clone().find(|&p| model.layers[p].output == v) {
                let have = &mut need[p - start];
                *have = if have.start >= have.end { input.clone() } else { have.start.min(input.start)..have.end.max(input.end) };
            }
        }
    }
    need
}

/// The plan for `batch` samples on `threads` threads.
pub fn plan(model: &Model, batch: usize, threads: usize, schedule: Schedule, budget: usize) -> Plan {
    let layerwise = || {
        let tile = if batch <= 1 { 1 } else { MAX_TILE.min(batch) };
        let columns = (0..model.layers.len())
            .map(|l| {
                let working_set = weight_bytes(&model.layers[l].exec) + activation_bytes(model, l, tile);
                Column { layers: l..l + 1, working_set, fits: working_set <= budget, bands: 1, tile }
            })
            .collect();
        Plan { schedule: Schedule::Layerwise, tile, columns, budget }
    };
    if schedule == Schedule::Layerwise || batch <= 1 {
        // One sample is one tile: depth-wise only pays where row bands let several layers share
        // the cache.
        let banded = (batch <= 1 && schedule != Schedule::Layerwise)
            .then(|| unband_fitting(model, columns(model, 0..model.layers.len(), 1, budget), budget));
        if let Some(cols) = banded.filter(|cols| cols.iter().any(|c| c.bands > 1 && c.layers.len() > 1)) {
            return Plan { schedule: Schedule::Depthwise, tile: 1, columns: cols, budget };
        }
        return Plan { schedule: if batch <= 1 { schedule.min_resolved() } else { Schedule::Layerwise }, ..layerwise() };
    }
    let widest = widest_tile(model, batch, threads);
    let candidates: Vec<usize> = [64, 32, 16, 8, 4, 2, 1].into_iter().filter(|&t| t <= widest && (t >= MIN_TILE || t == widest)).collect();
    let candidates = if candidates.is_empty() || std::env::var(TILE_ENV).is_ok() { vec![widest] } else { candidates };
    // The widest tile whose largest layer activations (inputs, output, im2col) fit the budget:
    // narrower tiles cost kernel efficiency, so weights that nearly fill the cache on their own
    // never shrink the tile, only activations do.
    // Convolutions whose images overflow the budget may still fit in row bands.
    let acts_fit = |t: usize| activations_fit(model, 0..model.layers.len(), t, budget);
    // Tiles narrower than `MIN_TILE` only where they let row bands fit images nothing wider can.
    let narrow = [4, 2, 1].into_iter().filter(|&t| t < *candidates.last().expect("one candidate") && std::env::var(TILE_ENV).is_err());
    let tried: Vec<usize> = candidates.iter().copied().chain(narrow).collect();
    // Where no tile fits every layer, the one that leaves the fewest layers out (the wider on a
    // tie): a layer that overflows at every width (ResNet-50's stride-2 1x1 convolution on phase
    // images, where the compiler chose them: 3 MiB of input per sample, not bandable) then no
    // longer sends the whole model to the widest tile, whose 56x56 convolutions ran 1.3x slower.
    let misfits = |t: usize| (0..model.layers.len()).filter(|&l| !activations_fit(model, l..l + 1, t, budget)).count();
    let tile = tried
        .iter()
        .copied()
        .find(|&t| acts_fit(t))
        .unwrap_or_else(|| tried.iter().copied().min_by_key(|&t| misfits(t)).expect("one candidate"));
    let cols = columns(model, 0..model.layers.len(), tile, budget);
    let forced = std::env::var(TILE_ENV).is_ok();
    let cols = if forced { cols } else { widen_tail(model, cols, tile, candidates[0], budget) };
    let depthwise = Plan { schedule: Schedule::Depthwise, tile, columns: cols, budget };
    match schedule {
        Schedule::Depthwise => depthwise,
        _ => {
            // Tiles spread over the threads pay when each thread's column stays in its cache;
            // a layer whose weights overflow it is better split by rows, so that each thread
            // streams only its share of them.
            // A 1x1 expansion fused into its depth-wise convolution (`compile::fuse_expansions`)
            // is such a group inside one layer: its chunks of channels stay in the cache.
            let fused_pair = |l: usize| matches!(model.layers[l].exec, Exec::GroupConv { expand: Some(_), .. });
            let grouped = depthwise.columns.iter().any(|c| c.layers.len() > 1 || c.layers.clone().any(fused_pair));
            let spread = threads > 1 && batch.div_ceil(tile) >= threads && batch <= MAX_TILE && depthwise.columns.iter().all(|c| c.fits);
            if grouped || spread { depthwise } else { layerwise() }
        }
    }
}

/// The widest depth-wise tile for `batch` samples on `threads` threads (`ENGINE_TILE` caps it).
fn widest_tile(model: &Model, batch: usize, threads: usize) -> usize {
    if let Some(t) = std::env::var(TILE_ENV).ok().and_then(|v| v.parse::<usize>().ok()).filter(|&t| t >= 1) {
        return t.min(batch);
    }
    // Tiles narrow enough that every thread gets one, and as wide as the fewest columns allow; but
    // a model whose work is mostly linear layers keeps tiles of a vector's width (16 samples)
    // and leaves threads idle instead: its kernels vectorise over the tile's samples only, and
    // 4- or 8-sample tiles made batch 64 on 16 threads slower than on 4 (BENCHMARKS.md, "Scaling").
    // Convolutions vectorise over output positions too and gain from narrow tiles on more threads.
    let floor = if linear_work_share(model) > 0.5 { VECTOR_TILE.min(batch) } else { 1 };
    if one_sample_tiles(model) { 1 } else { MAX_TILE.min(batch.div_ceil(threads.max(1)).max(floor)) }
}

/// The depth-wise plan with the widest tile in every column, for batches of several tiles: the
/// alternative `Schedule::Auto` times against `plan`'s where that one runs narrower tiles. Where
/// no tile fits every layer, which width runs faster depends on where the work is: ResNet-50 at
/// batch 16 ran its 56x56 stage 1.3x faster in one-sample tiles (the one-sample direct
/// convolution), EfficientNet-B0 ran faster in tiles of 8 throughout.
pub fn uniform_plan(model: &Model, batch: usize, threads: usize, budget: usize) -> Option<Plan> {
    let tile = widest_tile(model, batch, threads);
    (batch > 1 && tile > 1).then(|| Plan {
        schedule: Schedule::Depthwise,
        tile,
        columns: columns(model, 0..model.layers.len(), tile, budget),
        budget,
    })
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
