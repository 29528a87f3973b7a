//! Runs a compiled model on a batch. The batch is cut into tiles of samples; each tile owns one
//! contiguous chunk of the activation arena holding every value of the model for that tile
//! (feature-major, see `kernels`). The schedule (`schedule`) groups the layers into columns: for
//! each column in turn, every tile runs through the column's layers (band by band of rows for a
//! banded column of convolutions). With several tiles, each thread of the team (`team`) takes its
//! own tiles through every column, without waiting for the others; with one tile, each large
//! enough unbanded layer splits its rows over the team instead, and the rest runs on the calling
//! thread (a banded column at batch 1: a part of its bands per thread).
//!
//! This file holds the plan, the session and a tile's way through its layers; `layers` runs the
//! fp32 layers, `int8` the int8 ones and what stays int8 between them, `bands` the row bands.

use std::ops::{Deref, Range};

use std::sync::Mutex;

use crate::catalogue::{F32Kernel, Int8Kernel};
use crate::compile::{Exec, Kernel, Layer, MatMul, Model};
use crate::error::{EngineError, Result};
use crate::kernels::csr::balanced_ranges;
use crate::kernels::window::{self, Geometry, Unfold};
use crate::kernels::{
    Isa, dense, depthwise, direct, elementwise, grouped, kblocked, q8, q8conv, q8direct, sequence, spmm, transpose, winograd,
};
use crate::schedule::{self, Schedule};
use crate::team::Team;

mod bands;
mod int8;
mod layers;
mod segments;
pub(crate) use int8::quantized_im2col;
pub(crate) use layers::{conv, run_layer};

use bands::*;
use int8::*;
use layers::*;
use segments::{Segment, retile};

/// Memory plan for one batch size: the schedule, and where each value lives inside a tile's chunk.
#[derive(Debug, Clone)]
struct Plan {
    schedule: schedule::Plan,
    batch: usize,
    tile: usize,
    /// Offset of each value in a tile chunk (`value_sizes[v] * tile` floats each).
    offsets: Vec<usize>,
    /// Offset and size of the im2col scratch space.
    scratch: Range<usize>,
    /// Offset of the two quantized-input slots of int8 layers, `quantized_len` f32 slots each.
    quantized: usize,
    quantized_len: usize,
    chunk: usize,
    /// The first layer is int8 and the only reader of the input: tiles are quantized straight
    /// from the caller's samples, without an f32 copy.
    fused_input: bool,
    /// Per layer, how an int8 layer's input and output flow.
    int8_flow: Vec<Int8Flow>,
    /// Per value, the quantization `(scale, zero)` of the codes it is held as (`code_values`), or
    /// None for f32.
    codes: Vec<Option<(f32, u8)>>,
    /// Per layer, whether its output shares its input's region, so that it has nothing to do
    /// (`shared_regions`).
    in_place: Vec<bool>,
    /// Per column, for a banded one, the layers' row ranges in the order they run: band by band
    /// of the last layer's output, each layer the rows the band needs that earlier bands have
    /// not computed (empty for columns without bands).
    band_steps: Vec<Steps>,
    /// Per column, for a banded column of a one-tile batch on several threads, its bands cut into
    /// one part per thread (`BandParts`); None where the column runs as one part. Each part runs
    /// on a chunk of its own (`Session::execute`).
    band_parts: Vec<Option<BandParts>>,
}

impl Plan {
    /// The plan of `schedule`'s columns, which run `layers`; a tile's chunk holds the values
    /// marked in `held` (the others are never touched by these layers, and have offset 0).
    fn new(model: &Model, batch: usize, threads: usize, schedule: schedule::Plan, layers: Range<usize>, held: &[bool]) -> Plan {
        let tile = schedule.tile;
        // Rows of full tiles are padded to 16 floats (64 bytes) so every row of every value starts
        // on a cache line: misaligned vector loads split lines and run about twice as slow.
        let tile_ld = padded(tile);
        let codes = code_values(model, &schedule);
        let banded = |l: usize| schedule.columns.iter().any(|c| c.bands > 1 && c.layers.contains(&l));
        let shared = shared_regions(model, layers.clone(), held, &codes, &banded);
        // A concatenation's inputs lie at their place in its output only where every tile's rows
        // are as long as the offsets below assume.
        let last = batch - (batch.div_ceil(tile).max(1) - 1) * tile;
        let concats = if padded(last) == tile_ld { concat_regions(model, layers.clone(), held, &codes, &shared) } else { Vec::new() };
        let placed =
            |v: usize| shared.iter().any(|&(_, _, out)| out == v) || concats.iter().any(|(_, parts)| parts.iter().any(|&(i, _)| i == v));
        let mut offsets = vec![0; model.value_sizes.len()];
        let mut at = 0;
        for (v, (&size, &held)) in model.value_sizes.iter().zip(held).enumerate() {
            if held && !placed(v) {
                offsets[v] = at;
                at += size * tile_ld;
            }
        }
        for (l, parts) in &concats {
            for &(input, start) in parts {
                offsets[input] = offsets[model.layers[*l].output] + start * tile_ld;
            }
        }
        // In layer order, so that a reshape of a reshape finds its input's region set.
        for &(_, input, output) in &shared {
            offsets[output] = offsets[input];
        }
        // Each weighted layer's scratch (`MatMul::scratch`) at the widths the plan's tiles have
        // (full tiles, and a narrower last one, whose kernel may differ); convolutions in row
        // bands whose kernel cannot write rows apart (int8, or blocks of 4 rows) also keep their
        // band's output there before it is copied into place (room kept for every banded one).
        let widths = [padded(tile.min(batch)), padded(last)];
        let largest = |need: &dyn Fn(&MatMul, usize, usize) -> usize| {
            let needs = model.layers[layers.clone()].iter().zip(layers.clone()).filter_map(|(l, i)| match &l.exec {
                Exec::MatMul(m) => widths.iter().map(|&ld| need(m, ld, i)).max(),
                _ => None,
            });
            needs.max().unwrap_or(0).next_multiple_of(16)
        };
        let scratch_len = largest(&|m, ld, i| {
            let band_out = if banded(i) { m.rows * m.columns(ld) } else { 0 };
            m.scratch(model.options.isa, ld).bytes.div_ceil(4).max(m.winograd_scratch(model.options.isa, ld, threads)) + band_out
        });
        let quantized_len = largest(&|m, ld, _| m.scratch(model.options.isa, ld).quantized.div_ceil(4));
        // Every region from here on, and every tile's chunk, starts on a cache line (the scratch
        // space and the quantized slots are whole lines): the int8 kernels load their inputs in
        // 64-byte rows.
        let q_start = at + scratch_len;
        let fused_input = input_fuses_into_int8(model);
        let band_steps = schedule.columns.iter().map(|c| if c.bands > 1 { band_steps(model, c, 0..c.bands) } else { Vec::new() }).collect();
        let band_parts = schedule.columns.iter().map(|c| band_parts(model, c, batch.div_ceil(tile), threads)).collect();
        Plan {
            batch,
            tile,
            offsets,
            scratch: at..q_start,
            quantized: q_start,
            quantized_len,
            chunk: q_start + 2 * quantized_len,
            fused_input,
            int8_flow: int8_flows(model, fused_input),
            codes,
            in_place: (0..model.layers.len())
                .map(|l| shared.iter().any(|&(r, _, _)| r == l) || concats.iter().any(|(c, _)| *c == l))
                .collect(),
            band_steps,
            band_parts,
            schedule,
        }
    }

    fn n_tiles(&self) -> usize {
        self.batch.div_ceil(self.tile)
    }
    /// Chunks of the arena: one per tile, or one per band part.
    fn chunks(&self) -> usize {
        self.band_parts.iter().flatten().map(|p| p.steps.len()).max().unwrap_or(0).max(self.n_tiles())
    }
    /// Samples in tile `t`.
    fn width(&self, t: usize) -> usize {
        self.tile.min(self.batch - t * self.tile)
    }
    /// Row length of tile `t` (its width, padded).
    fn ld(&self, t: usize) -> usize {
        padded(self.width(t))
    }
    /// Quantized slot `k` of a tile chunk.
    fn quantized_slot(&self, k: usize) -> Range<usize> {
        let start = self.quantized + k * self.quantized_len;
        start..start + self.quantized_len
    }
}

/// The reshapes among `layers` (`Exec::Flatten`: the same elements in the same order) whose
/// output can share its input's region of a tile's chunk, as `(layer, input, output)` in layer
/// order: both values held, in the same form (f32, or the same codes), and the layer outside a
/// banded column (whose layers run on bands of rows in place). Each value is written once, by the
/// layer that makes it, so the two never differ; BERT-base copied 2.6 ms of its 51 in such
/// reshapes at batch 1 (`results/bert-profile.md`).
fn shared_regions(
    model: &Model,
    layers: Range<usize>,
    held: &[bool],
    codes: &[Option<(f32, u8)>],
    banded: &dyn Fn(usize) -> bool,
) -> Vec<(usize, usize, usize)> {
    let reshapes = layers.filter(|&l| matches!(model.layers[l].exec, Exec::Flatten) && !banded(l));
    let pairs = reshapes.map(|l| (l, model.layers[l].inputs[0], model.layers[l].output));
    pairs
        .filter(|&(_, input, output)| {
            held[input] && held[output] && codes[input] == codes[output] && model.value_sizes[input] == model.value_sizes[output]
        })
        .collect()
}

/// The concatenations among `layers` whose inputs can be written by their producers straight
/// into their places in the output's region, so that the concatenation has nothing to do: as
/// `(layer, [(input, first feature of its block in the output)])`. Along the first per-sample
/// axis (`outer == 1`) each input is one block of the output's rows. Each input is made by a
/// layer among `layers` (not the model's input, not a reshape sharing a region), held in f32 like
/// the output, and given once to one concatenation only. YOLOv5s copied
/// about a twentieth of its batch-1 time in the Concat layers of its C3 blocks and SPPF.
fn concat_regions(
    model: &Model,
    layers: Range<usize>,
    held: &[bool],
    codes: &[Option<(f32, u8)>],
    shared: &[(usize, usize, usize)],
) -> Vec<(usize, Vec<(usize, usize)>)> {
    if !model.options.concat_in_place {
        return Vec::new();
    }
    let made_here = |v: usize| layers.clone().any(|l| model.layers[l].output == v);
    let f32_held = |v: usize| held[v] && codes[v].is_none();
    let mut taken: Vec<usize> = Vec::new();
    let mut concats = Vec::new();
    for l in layers.clone() {
        let layer = &model.layers[l];
        let Exec::Concat { outer: 1, blocks } = &layer.exec else { continue };
        let inputs = &layer.inputs;
        let distinct = inputs.iter().enumerate().all(|(i, v)| !inputs[..i].contains(v));
        let fits = inputs.iter().zip(blocks).all(|(&v, &block)| {
            model.value_sizes[v] == block
                && f32_held(v)
                && made_here(v)
                && !taken.contains(&v)
                && !shared.iter().any(|&(_, _, out)| out == v)
                && !concats.iter().any(|&(c, _): &(usize, _)| model.layers[c].output == v)
        });
        if !(distinct && fits && f32_held(layer.output)) {
            continue;
        }
        let starts = blocks.iter().scan(0, |at, &b| {
            *at += b;
            Some(*at - b)
        });
        taken.extend(inputs);
        concats.push((l, inputs.iter().copied().zip(starts).collect::<Vec<_>>()));
    }
    concats
}

// Widths of 16 or more are padded to a multiple of 16 floats (every row of every value then
// starts on a cache line); smaller ones are left as they are, since padding would multiply
// their work.
use schedule::padded;

/// Floats the arena leaves unused before its first tile chunk (64 KB). A session's arena is
/// often allocated right after the caller's input, and on 2 threads such a session ran
/// LeNet-300-100 at batch 64 2-17% slower than identical sessions elsewhere in memory (`cargo run
/// --release -p engine --example identical_sessions`, fourteen runs); with this gap -1% to +5% in
/// seven runs (a 16 KB gap: 0-7%, a 4 KB one: no better than none). Why the distance matters is
/// not understood (a prefetcher's reach across the input's end is one guess); BENCHMARKS.md has
/// what was tried.
const ARENA_GUARD: usize = 16 * 1024;

/// Executes a model; keeps its arena between calls of the same batch size. `M` is how the
/// session holds the model: borrowed (`&Model`, most callers) or shared (`Arc<Model>`, for a
/// session that must own it, as the Python module's).
pub struct Session<M: Deref<Target = Model> + Clone> {
    model: M,
    /// The calling thread and its helpers; `solo` is the calling thread alone, for layers that
    /// run inside one thread's share of the tiles.
    team: Team,
    solo: Team,
    schedule: Schedule,
    /// Under `Schedule::Auto`, the plan measured fastest for each batch size run so far
    /// (`measure_auto`).
    measured: Vec<(usize, schedule::Plan)>,
    /// Cache budget of a column, in bytes.
    budget: usize,
    /// The memory plans and arenas of the last batch size run: one per run of columns with the
    /// same tile width (`segments`).
    segments: Vec<Segment>,
}

/// Every value of an input that indexes a table (token ids) is an integer row of it (negative
/// ones count from the end, as ONNX Gather): a row outside the table is refused, not clamped.
fn check_indices(ports: &crate::graph::Ports, input: &[f32], per_sample: usize) -> Result<()> {
    for (range, port) in crate::graph::Ports::placed(&ports.inputs) {
        if let Some(rows) = port.rows {
            for (s, sample) in input.chunks(per_sample).enumerate() {
                let values = &sample[range.clone()];
                if let Some(v) = values.iter().find(|&&v| v.fract() != 0.0 || v < -(rows as f32) || v >= rows as f32) {
                    return Err(EngineError::Input(format!(
                        "input '{}' of sample {s} holds {v}, which is not a row of its table of {rows}",
                        port.name
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Rounds of `Session::measure_auto`: each candidate schedule runs once untimed and once timed per round.
const AUTO_ROUNDS: usize = 3;

impl<M: Deref<Target = Model> + Clone> Session<M> {
    /// A session with `threads` threads (at least 1: the caller and `threads - 1` helpers) and
    /// the automatic schedule.
    pub fn new(model: M, threads: usize) -> Result<Session<M>> {
        Session::with_schedule(model, threads, Schedule::Auto, None)
    }

    /// A session with a schedule and a cache budget per column (default: the L2 size).
    pub fn with_schedule(model: M, threads: usize, schedule: Schedule, budget: Option<usize>) -> Result<Session<M>> {
        let threads = threads.max(1);
        let start = |n| Team::new(n).map_err(|e| EngineError::Shape(format!("cannot start {threads} threads: {e}")));
        let (team, solo) = (start(threads)?, start(1)?);
        let budget = budget.unwrap_or_else(schedule::l2_cache_bytes);
        Ok(Session { model, team, solo, schedule, measured: Vec::new(), budget, segments: Vec::new() })
    }

    pub fn threads(&self) -> usize {
        self.team.threads()
    }

    /// The schedule this session uses for `batch` samples (under `Schedule::Auto`, the one
    /// measured faster once a batch of that size has run).
    pub fn plan(&self, batch: usize) -> schedule::Plan {
        match self.measured.iter().find(|(b, _)| *b == batch.max(1)) {
            Some((_, plan)) => plan.clone(),
            None => schedule::plan(&self.model, batch.max(1), self.threads(), self.schedule, self.budget),
        }
    }

    /// Under `Schedule::Auto`, on the first run of a batch size for which the planner chose
    /// depth-wise columns: runs the batch on that plan, layer-wise, and depth-wise with the widest
    /// tile throughout where the plan's tiles are narrower (`schedule::uniform_plan`), in turns,
    /// `AUTO_ROUNDS` rounds of a warm-up run (on the candidate's fresh arena) and a timed one, and
    /// keeps the fastest for that size. The planner's rule cannot tell from sizes alone: at batch
    /// 1 on 2 threads its columns ran ResNet-18 and YOLOv5s 12-14% faster than layer-wise
    /// execution, but MobileNetV2 with 90%-pruned 1x1 convolutions and a 95%-pruned ResNet-50 10%
    /// slower (`engine bench --compare layerwise`). In turns, since a slow phase of the machine
    /// over one candidate's runs had made the choice flip between processes.
    fn measure_auto(&mut self, input: &[f32], batch: usize, out: &mut [f32]) -> Result<()> {
        if self.schedule != Schedule::Auto || self.measured.iter().any(|(b, _)| *b == batch) {
            return Ok(());
        }
        let rule = self.plan(batch);
        let mut choice = rule.clone();
        if rule.schedule == Schedule::Depthwise {
            let (threads, budget) = (self.threads(), self.budget);
            let mut candidates = vec![rule.clone(), schedule::plan(&self.model, batch, threads, Schedule::Layerwise, budget)];
            candidates.extend(schedule::uniform_plan(&self.model, batch, threads, budget).filter(|p| *p != rule));
            let mut best = vec![f64::MAX; candidates.len()];
            for _ in 0..AUTO_ROUNDS {
                for (candidate, best) in candidates.iter().zip(&mut best) {
                    // Held as the measured plan while it runs, so that these runs do not measure again.
                    self.measured.push((batch, candidate.clone()));
                    self.segments.clear();
                    let run = self.execute(input, batch, false, out).and_then(|_| {
                        let start = std::time::Instant::now();
                        self.execute(input, batch, false, out).map(|_| start.elapsed().as_secs_f64())
                    });
                    self.measured.pop();
                    *best = best.min(run?);
                }
            }
            self.segments.clear();
            let fastest = (0..candidates.len()).min_by(|&a, &b| best[a].total_cmp(&best[b])).expect("a candidate");
            choice = candidates.swap_remove(fastest);
        }
        self.measured.push((batch, choice));
        Ok(())
    }

    /// Checks the input and prepares the arena for `batch`.
    fn prepare(&mut self, input: &[f32], batch: usize) -> Result<()> {
        let owner = self.model.clone();
        let model: &Model = &owner;
        let f_in = model.value_sizes[0];
        if batch == 0 || batch.checked_mul(f_in) != Some(input.len()) {
            return Err(EngineError::Shape(format!(
                "input has {} values; expected batch x {f_in} (per-sample shape {:?}) with batch >= 1",
                input.len(),
                model.input_shape
            )));
        }
        // Sparse kernels skip zero weights, so a NaN or infinity would not reach every output it
        // reaches in a dense engine (ONNX Runtime): refused rather than answered differently.
        // (A fold without early exit vectorizes: about 1 us per 10,000 values.)
        if !input.iter().fold(true, |ok, v| ok & v.is_finite())
            && let Some(i) = input.iter().position(|v| !v.is_finite())
        {
            return Err(EngineError::Input(format!(
                "input value {} of sample {} is {}; the engine runs finite inputs only",
                i % f_in,
                i / f_in,
                input[i]
            )));
        }
        if let Some(ports) = &model.graph.ports {
            check_indices(ports, input, f_in)?;
        }
        if self.segments.first().is_none_or(|s| s.plan.batch != batch) {
            // The old arenas go first: two batch sizes' activations need not fit at once.
            self.segments.clear();
            self.segments = segments::segments(model, batch, self.threads(), self.plan(batch))?;
        }
        Ok(())
    }

    /// Zeros for `[batch, output features]`, or an error where that is too large to allocate.
    fn output(&self, batch: usize) -> Result<Vec<f32>> {
        let len = batch.checked_mul(self.model.value_sizes[self.model.output_value]);
        crate::error::try_zeros(len, || format!("the output of a batch of {batch}"))
    }

    /// Runs `input` (`[batch, input features]`, row-major) and returns `[batch, output features]`.
    pub fn run(&mut self, input: &[f32], batch: usize) -> Result<Vec<f32>> {
        let mut out = self.output(batch)?;
        self.execute(input, batch, false, &mut out)?;
        Ok(out)
    }

    /// Runs `input` into `out`, which must hold `[batch, output features]` (a caller's buffer:
    /// the Python module's NumPy array).
    pub fn run_into(&mut self, input: &[f32], batch: usize, out: &mut [f32]) -> Result<()> {
        let expected = batch.checked_mul(self.model.value_sizes[self.model.output_value]);
        if expected != Some(out.len()) {
            return Err(EngineError::Shape(format!("an output of {} values for a batch of {batch}; expected {expected:?}", out.len())));
        }
        self.execute(input, batch, false, out)?;
        Ok(())
    }

    /// Runs `input` and returns the seconds spent in each layer (for `engine analyze`): thread
    /// time per layer summed over tiles, scaled so that the layers add up to the wall time.
    pub fn profile(&mut self, input: &[f32], batch: usize) -> Result<Vec<f64>> {
        let mut out = self.output(batch)?;
        self.execute(input, batch, false, &mut out)?; // validates, plans and warms up
        let start = std::time::Instant::now();
        let per_tile = self.execute(input, batch, true, &mut out)?;
        let wall = start.elapsed().as_secs_f64();
        let mut seconds = vec![0.0; self.model.layers.len()];
        for t in per_tile {
            seconds.iter_mut().zip(t).for_each(|(s, t)| *s += t);
        }
        let total: f64 = seconds.iter().sum();
        Ok(seconds.iter().map(|s| s / total.max(1e-12) * wall).collect())
    }

    /// Runs the batch column by column into `out` (`[batch, output features]`), segment by
    /// segment; with `timed`, returns each tile's seconds per layer.
    fn execute(&mut self, input: &[f32], batch: usize, timed: bool, out: &mut [f32]) -> Result<Vec<Vec<f64>>> {
        self.prepare(input, batch)?;
        if self.schedule == Schedule::Auto && !self.measured.iter().any(|(b, _)| *b == batch) {
            self.measure_auto(input, batch, out)?;
            self.prepare(input, batch)?;
        }
        let owner = self.model.clone();
        let model: &Model = &owner;
        let mut times = Vec::new();
        let n = self.segments.len();
        for k in 0..n {
            let (done, rest) = self.segments.split_at_mut(k);
            if let Some(previous) = done.last() {
                retile(model, previous, &mut rest[0], &self.team);
            }
            let ends = (k == 0, k + 1 == n);
            let (segment, later) = rest.split_first_mut().expect("segment k");
            let keep = later.first().map_or(&[][..], |next| &next.live_in[..]);
            times.extend(run_segment(model, segment, ends, keep, input, timed, out, &self.team, &self.solo));
        }
        Ok(times)
    }
}

/// Runs a segment's columns: the first segment loads the input into its tiles, the last stores
/// their outputs into `out` (`ends`); `keep` are the values the next segment reads from its
/// tiles; with `timed`, returns each tile's seconds per layer.
#[allow(clippy::too_many_arguments)]
fn run_segment(
    model: &Model,
    segment: &mut Segment,
    (first, last): (bool, bool),
    keep: &[usize],
    input: &[f32],
    timed: bool,
    out: &mut [f32],
    team: &Team,
    solo: &Team,
) -> Vec<Vec<f64>> {
    let plan = &segment.plan;
    let mut chunks: Vec<&mut [f32]> = segment.arena[segment.arena_start..].chunks_mut(plan.chunk.max(1)).take(plan.chunks()).collect();
    // Chunks past the tiles' hold the band parts of a one-tile batch.
    let mut spare = chunks.split_off(plan.n_tiles());
    let mut times = vec![vec![0.0; if timed { model.layers.len() } else { 0 }]; chunks.len()];
    let f_out = model.value_sizes[model.output_value];
    let outs: Vec<&mut [f32]> = out.chunks_mut((plan.tile * f_out).max(1)).collect();
    let columns = plan.schedule.columns.len();
    // Tile `t` through column `c`, its unbanded layers splitting their rows over `team`; after the
    // last column, the tile's outputs go to its samples' rows of `out`.
    let run = |c: usize, t: usize, chunk: &mut [f32], times: &mut [f64], out: &mut [f32], team: &Team| {
        let column = &plan.schedule.columns[c];
        if c == 0 && first {
            load_input(model, plan, t, chunk, input);
        }
        let mut timed_layer = |l: usize, f: &mut dyn FnMut()| {
            let start = timed.then(std::time::Instant::now);
            f();
            if let Some(start) = start {
                times[l] += start.elapsed().as_secs_f64();
            }
        };
        if column.bands > 1 {
            // A band step is a row or a few of one layer: handing half of it to another
            // thread measured 1.6x slower at batch 1 than running the whole banded column
            // on this one (BENCHMARKS.md), so band steps never split.
            for (l, rows) in &plan.band_steps[c] {
                timed_layer(*l, &mut || run_layer_rows(model, plan, *l, t, chunk, solo, rows.clone()));
            }
        } else {
            for l in column.layers.clone() {
                timed_layer(l, &mut || run_layer_on_tile(model, plan, l, t, chunk, team));
            }
        }
        if c + 1 == columns && last {
            store_output(model, plan, t, chunk, out);
        }
    };
    let threads = team.threads();
    if chunks.len() >= 2 && threads > 1 {
        // Each thread takes its own tiles (tile t to thread t mod threads, the same every run,
        // so a tile's data stays in one core's cache) through every column, layers unsplit:
        // tiles never wait for each other. Wider tiles go column by column, each column's weights
        // staying in the cache over the thread's tiles; one-sample tiles, whose images are what
        // overflows the cache, go tile by tile (`tile_by_tile`).
        let mut shares: Vec<Vec<TileJob>> = (0..threads).map(|_| Vec::new()).collect();
        for (t, ((chunk, times), out)) in chunks.into_iter().zip(times.iter_mut()).zip(outs).enumerate() {
            shares[t % threads].push((t, chunk, times, out));
        }
        let shares: Vec<Mutex<_>> = shares.into_iter().map(Mutex::new).collect();
        // Members without a tile are left out (batches of fewer tiles than threads).
        let members = shares.iter().filter(|s| !s.lock().unwrap_or_else(|e| e.into_inner()).is_empty()).count();
        team.run_some(members, &|member| {
            let mut mine = shares[member].lock().unwrap_or_else(|e| e.into_inner());
            if plan.tile == 1 {
                tile_by_tile(model, plan, &mut mine, first, keep, &|c, t, chunk, times, out| run(c, t, chunk, times, out, solo));
            } else {
                for c in 0..columns {
                    for (t, chunk, times, out) in mine.iter_mut() {
                        run(c, *t, chunk, times, out, solo);
                    }
                }
            }
        });
    } else {
        // One tile (or one thread): the layers split their rows over the team where they are
        // large enough to gain from it, and otherwise run on the calling thread.
        let mut tiles: Vec<_> = chunks.into_iter().zip(times.iter_mut()).zip(outs).collect();
        if tiles.len() > 1 && plan.tile == 1 {
            // Several one-sample tiles on one thread: tile by tile, as above.
            let mut jobs: Vec<TileJob> = tiles.into_iter().enumerate().map(|(t, ((chunk, times), out))| (t, chunk, times, out)).collect();
            tile_by_tile(model, plan, &mut jobs, first, keep, &|c, t, chunk, times, out| run(c, t, chunk, times, out, team));
            drop(jobs);
            return times;
        }
        for c in 0..columns {
            if let [((chunk, _), out)] = &mut tiles[..]
                && let Some(parts) = &plan.band_parts[c]
                && !timed
            {
                // A banded column of the one tile: a part of its bands per thread.
                if c == 0 && first {
                    load_input(model, plan, 0, chunk, input);
                }
                run_band_parts(model, plan, parts, chunk, &mut spare, team, solo);
                if c + 1 == columns && last {
                    store_output(model, plan, 0, chunk, out);
                }
                continue;
            }
            for (t, ((chunk, times), out)) in tiles.iter_mut().enumerate() {
                run(c, t, chunk, times, out, team);
            }
        }
    }
    times
}

/// A tile handed to a thread: its index, its chunk of the arena, its per-layer times and its
/// samples' rows of the output.
type TileJob<'a> = (usize, &'a mut [f32], &'a mut Vec<f64>, &'a mut [f32]);

/// Runs one column (the first argument) on one tile (the second), given the chunk, per-layer times
/// and output rows it works in.
type RunTile<'a> = dyn Fn(usize, usize, &mut [f32], &mut [f64], &mut [f32]) + 'a;

/// A thread's one-sample tiles, tile by tile through the segment's columns (`run`: column, tile,
/// chunk, times, output), each tile's values staying in cache from one column to the next. In
/// the first segment (`shared`: each tile loads its own sample) they all run in the last tile's
/// chunk, so that each sample finds its values where the one before left them, in cache, where
/// a chunk of its own would come from memory; after each tile, the values the next segment reads
/// (`keep`) are copied into its own chunk. MobileNetV2 90% at batch 16: 0.955x the time
/// tile by tile in their own chunks, then 0.854x in one (results/tile-order.md).
fn tile_by_tile(model: &Model, plan: &Plan, jobs: &mut [TileJob], shared: bool, keep: &[usize], run: &RunTile) {
    let columns = plan.schedule.columns.len();
    let Some(((t_last, chunk_last, times_last, out_last), others)) = jobs.split_last_mut().filter(|_| shared) else {
        for (t, chunk, times, out) in jobs.iter_mut() {
            (0..columns).for_each(|c| run(c, *t, chunk, times, out));
        }
        return;
    };
    for (t, chunk, times, out) in others.iter_mut() {
        (0..columns).for_each(|c| run(c, *t, chunk_last, times, out));
        for &v in keep {
            let at = plan.offsets[v]..plan.offsets[v] + model.value_sizes[v] * plan.ld(*t);
            chunk[at.clone()].copy_from_slice(&chunk_last[at]);
        }
    }
    (0..columns).for_each(|c| run(c, *t_last, chunk_last, times_last, out_last));
}

/// Transposes tile `t`'s output value back to sample-major rows, `out` holding the tile's samples.
fn store_output(model: &Model, plan: &Plan, t: usize, chunk: &[f32], out: &mut [f32]) {
    let f_out = model.value_sizes[model.output_value];
    let (w, ld) = (plan.width(t), plan.ld(t));
    let off = plan.offsets[model.output_value];
    transpose::transpose(model.options.isa, &chunk[off..off + f_out * ld], f_out, w, ld, &mut out[..w * f_out], f_out);
}

/// The regions of `chunk` for the layer's inputs (read) and output (written); the output never
/// overlaps an input because every value has its own region (or its own block of a
/// concatenation's, `concat_regions`, which the layers that make the blocks never read whole).
fn regions<'a>(chunk: &'a mut [f32], inputs: &[Range<usize>], out: Range<usize>) -> (Vec<&'a [f32]>, &'a mut [f32]) {
    let (before, rest) = chunk.split_at_mut(out.start);
    let (output, after) = rest.split_at_mut(out.len());
    let (before, after): (&'a [f32], &'a [f32]) = (before, after);
    let ins =
        inputs.iter().map(|r| if r.end <= out.start { &before[r.clone()] } else { &after[r.start - out.end..r.end - out.end] }).collect();
    (ins, output)
}

/// Transposes tile `t`'s samples of `input` into the tile's input region (feature-major), or
/// with a fused int8 first layer, quantizes them into its quantized scratch space.
fn load_input(model: &Model, plan: &Plan, t: usize, chunk: &mut [f32], input: &[f32]) {
    let (w, ld) = (plan.width(t), plan.ld(t));
    let f_in = model.value_sizes[0];
    let samples = &input[t * plan.tile * f_in..(t * plan.tile + w) * f_in];
    if plan.fused_input
        && let Exec::MatMul(m) = &model.layers[0].exec
        && let Some(q) = m.int8()
    {
        let qx: &mut [u8] = bytemuck::cast_slice_mut(&mut chunk[plan.quantized_slot(plan.int8_flow[0].slot)]);
        return q8::quantize_samples(model.options.isa, samples, f_in, w, ld, q.input_scale, q.input_zero, qx);
    }
    let x0 = &mut chunk[plan.offsets[0]..plan.offsets[0] + f_in * ld];
    transpose::transpose(model.options.isa, samples, w, f_in, f_in, x0, ld);
}

fn run_layer_on_tile(model: &Model, plan: &Plan, l: usize, t: usize, chunk: &mut [f32], team: &Team) {
    if plan.in_place[l] {
        return;
    }
    // Padding columns are computed along with the samples: they hold finite values derived from
    // zeros and are never read back.
    let layer = &model.layers[l];
    let w = plan.ld(t);
    let isa = model.options.isa;
    let range = |v: usize| plan.offsets[v]..plan.offsets[v] + model.value_sizes[v] * w;
    let ins: Vec<Range<usize>> = layer.inputs.iter().map(|&v| range(v)).collect();
    let out_range = range(layer.output);
    if let Exec::MatMul(m) = &layer.exec
        && let Some(q) = m.int8()
    {
        // Quantize the input (after im2col for a convolution) into the layer's quantized slot
        // unless it is there already, then run the int8 kernel into the output region, or
        // requantized into the next layer's slot.
        let flow = plan.int8_flow[l];
        let cols_w = m.columns(w);
        let (values, rest) = chunk.split_at_mut(plan.scratch.start);
        let (im2col_buf, slots) = rest.split_at_mut(plan.quantized - plan.scratch.start);
        let (slot0, slot1) = slots.split_at_mut(plan.quantized_len);
        let (input_slot, output_slot) = if flow.slot == 0 { (slot0, slot1) } else { (slot1, slot0) };
        let (codes_in, codes_out) = (plan.codes[layer.inputs[0]], plan.codes[layer.output]);
        if let Some(g) = m.conv
            && uses_int8_direct(m, w)
        {
            let (xs, y) = regions(values, &ins, out_range);
            let x = match codes_in {
                Some((_, zero)) => q8direct::Source::Codes { x: bytemuck::cast_slice(xs[0]), zero },
                None => q8direct::Source::F32 { x: xs[0], scale: q.input_scale, zero: q.input_zero },
            };
            let (g, bufs) = (Geometry { w, ..g }, (bytemuck::cast_slice_mut(im2col_buf), bytemuck::cast_slice_mut(input_slot)));
            if let Some((scale, zero)) = codes_out {
                let y = q8direct::Out::codes(bytemuck::cast_slice_mut(y), scale, zero);
                return conv_q8_direct(isa, m, &g, x, y, 0..g.out_hw[0], bufs, team);
            }
            conv_q8_direct(isa, m, &g, x, q8direct::Out::F32(&mut *y), 0..g.out_hw[0], bufs, team);
            return add_residual(isa, m, xs.get(1).copied(), y, team);
        }
        let qx: &mut [u8] = bytemuck::cast_slice_mut(&mut input_slot[..q8::quantized_len(m.cols, cols_w).div_ceil(4)]);
        if !flow.prequantized {
            let x = &values[ins[0].clone()];
            match (m.conv, codes_in) {
                (Some(g), _) => quantized_im2col(isa, q, &Geometry { w, ..g }, x, 0..g.out_hw[0], im2col_buf, qx, team),
                (None, Some((_, zero))) => q8::group_codes(bytemuck::cast_slice(x), m.cols, cols_w, zero, qx),
                (None, None) => q8::quantize(isa, x, m.cols, cols_w, q.input_scale, q.input_zero, qx),
            }
        }
        match &model.layers[l + 1..].first().map(|n| &n.exec) {
            Some(Exec::MatMul(next)) if flow.requantize => {
                let next = next.int8().expect("requantizing into an int8 layer");
                let y: &mut [u8] = bytemuck::cast_slice_mut(output_slot);
                let out = q8::Output::quantized(&mut y[..q8::quantized_len(m.rows, cols_w)], next.input_scale, next.input_zero);
                int8_matmul(isa, m, qx, cols_w, w, out, None, team)
            }
            _ => {
                let (xs, y) = regions(values, &ins, out_range);
                int8_matmul(isa, m, qx, cols_w, w, q8::Output::F32(y), xs.get(1).copied(), team)
            }
        }
        return;
    }
    if let Exec::MatMul(m) = &layer.exec
        && let Some(g) = m.conv
    {
        let (before, rest) = chunk.split_at_mut(plan.scratch.start);
        let (xs, y) = regions(before, &ins, out_range);
        return conv(isa, m, g, w, xs[0], xs.get(1).copied(), y, rest, team);
    }
    let (xs, y) = regions(chunk, &ins, out_range);
    if plan.codes[layer.output].is_some() {
        // A max pool or flatten between int8 layers, on codes (`code_values`).
        let (x, y): (&[u8], &mut [u8]) = (bytemuck::cast_slice(xs[0]), bytemuck::cast_slice_mut(y));
        return match &layer.exec {
            Exec::Pool { geometry, .. } => window::max_pool_codes(isa, &Geometry { w, ..*geometry }, x, y, 0..geometry.out_hw[0]),
            Exec::Flatten => y[..model.value_sizes[layer.output] * w].copy_from_slice(&x[..model.value_sizes[layer.output] * w]),
            _ => unreachable!("only max pools and flattens pass codes on"),
        };
    }
    run_layer(isa, &layer.exec, &xs, y, w, team);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{KernelPolicy, Options, compile};
    use crate::graph::{Activation, Graph, Node, Op, Weight};

    /// Linear 6 -> 12, with or without a reshape to `[3, 4]` after it, then linear 12 -> 2.
    fn model(reshape: bool) -> Model {
        let linear = |rows: usize, cols: usize, scale: f32| Op::Linear {
            weight: Weight::dense(vec![rows, cols], (0..rows * cols).map(|i| (i % 7) as f32 * scale - 0.3).collect()),
            bias: vec![0.1; rows],
            act: Activation::None,
        };
        let node = |name: &str, op: Op, input: &str| Node { name: name.into(), op, inputs: vec![input.into()], output: name.into() };
        let mut nodes = vec![node("fc1", linear(12, 6, 0.1), "x")];
        if reshape {
            nodes.push(node("view", Op::Reshape { shape: vec![3, 4] }, "fc1"));
        }
        nodes.push(node("fc2", linear(2, 12, 0.2), if reshape { "view" } else { "fc1" }));
        let graph = Graph { input: "x".into(), input_shape: vec![6], output: "fc2".into(), nodes, ports: None };
        compile(graph, Options::new(KernelPolicy::Dense).unwrap()).unwrap()
    }

    /// Runs `batch` samples of 6 features through `with` and `without` on 2 threads, checks that
    /// they give the same bytes, and returns `with`'s plan.
    fn same_bytes(with: &Model, without: &Model, batch: usize, schedule: Schedule) -> Plan {
        let input: Vec<f32> = (0..batch * 6).map(|i| (i % 11) as f32 * 0.3 - 1.0).collect();
        let mut session = Session::with_schedule(with, 2, schedule, None).unwrap();
        let ours = session.run(&input, batch).unwrap();
        let plain = Session::with_schedule(without, 2, schedule, None).unwrap().run(&input, batch).unwrap();
        assert_eq!(ours, plain, "batch {batch}");
        session.segments[0].plan.clone()
    }

    /// A reshape's output lies where its input does and the reshape does no work: the model with
    /// it gives the same bytes as the model without it, at batches of one tile and of several.
    #[test]
    fn a_reshape_shares_its_input_region() {
        let (with, without) = (model(true), model(false));
        let reshape = with.layers.iter().position(|l| matches!(l.exec, Exec::Flatten)).expect("the reshape is a layer");
        for (batch, schedule) in [(1, Schedule::Layerwise), (5, Schedule::Layerwise), (40, Schedule::Depthwise)] {
            let plan = &same_bytes(&with, &without, batch, schedule);
            let layer = &with.layers[reshape];
            assert!(plan.in_place[reshape] && plan.offsets[layer.output] == plan.offsets[layer.inputs[0]], "batch {batch}");
        }
    }

    /// Linears 6 -> 12 and 6 -> 5 joined into 17 features, then linear 17 -> 2.
    fn joined(in_place: bool) -> Model {
        let linear = |rows: usize, cols: usize, scale: f32| Op::Linear {
            weight: Weight::dense(vec![rows, cols], (0..rows * cols).map(|i| (i % 5) as f32 * scale - 0.2).collect()),
            bias: vec![0.1; rows],
            act: Activation::Relu,
        };
        let node = |name: &str, op: Op, inputs: &[&str]| Node {
            name: name.into(),
            op,
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            output: name.into(),
        };
        let nodes = vec![
            node("a", linear(12, 6, 0.1), &["x"]),
            node("b", linear(5, 6, 0.3), &["x"]),
            node("cat", Op::Concat { axis: 0 }, &["a", "b"]),
            node("out", linear(2, 17, 0.2), &["cat"]),
        ];
        let graph = Graph { input: "x".into(), input_shape: vec![6], output: "out".into(), nodes, ports: None };
        compile(graph, Options { concat_in_place: in_place, ..Options::new(KernelPolicy::Dense).unwrap() }).unwrap()
    }

    /// A concatenation's inputs lie at their places in its output, which it then leaves as it
    /// is, where every tile's rows have one length; the results are the copying model's bytes.
    #[test]
    fn a_concatenation_holds_its_inputs_in_place() {
        let (with, without) = (joined(true), joined(false));
        let cat = with.layers.iter().position(|l| matches!(l.exec, Exec::Concat { .. })).expect("the concatenation is a layer");
        for (batch, schedule, in_place) in
            [(1, Schedule::Layerwise, true), (5, Schedule::Layerwise, true), (40, Schedule::Depthwise, false)]
        {
            let plan = &same_bytes(&with, &without, batch, schedule);
            let layer = &with.layers[cat];
            let (out, a, b) = (plan.offsets[layer.output], plan.offsets[layer.inputs[0]], plan.offsets[layer.inputs[1]]);
            let placed = a == out && b == out + 12 * padded(plan.tile);
            assert_eq!((plan.in_place[cat], placed), (in_place, in_place), "batch {batch}: tile {}", plan.tile);
        }
    }
}
