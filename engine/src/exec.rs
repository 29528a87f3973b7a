//! Runs a compiled model on a batch. The batch is cut into tiles of samples; each tile owns one
//! contiguous chunk of the activation arena holding every value of the model for that tile
//! (feature-major, see `kernels`). The schedule (`schedule`) groups the layers into columns: for
//! each column in turn, every tile runs through the column's layers (band by band of rows for a
//! banded column of convolutions). With several tiles, each thread of the team (`team`) takes its
//! own tiles through every column, without waiting for the others; with one tile, each large
//! enough unbanded layer splits its rows over the team instead, and the rest runs on the calling
//! thread.

use std::ops::Range;

use std::sync::Mutex;

use crate::compile::{Exec, Kernel, Layer, MatMul, Model};
use crate::error::{EngineError, Result};
use crate::kernels::csr::balanced_ranges;
use crate::kernels::window::{self, Geometry};
use crate::kernels::{Isa, bcsr, dense, direct, q8, q8conv, q8direct, spmm, spmv, transpose};
use crate::schedule::{self, Schedule};
use crate::team::Team;

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
    /// Per value, the quantization `(scale, zero)` of the codes it is held as where the direct
    /// int8 kernel runs (`code_values`), or None for f32.
    codes: Vec<Option<(f32, u8)>>,
    /// Per column, for a banded one, the layers' row ranges in the order they run: band by band
    /// of the last layer's output, each layer the rows the band needs that earlier bands have
    /// not computed (empty for columns without bands).
    band_steps: Vec<Steps>,
    /// Per column, for a banded column of a one-tile batch on several threads, its bands cut into
    /// one part per thread, each part's steps as in `band_steps` (its first band computing every
    /// row it needs, border rows of the previous part included); empty where the column runs as
    /// one part. Each part runs on a chunk of its own (`Session::execute`).
    band_parts: Vec<Vec<Steps>>,
}

/// Layers and the output rows each computes, in the order they run (a banded column's steps).
type Steps = Vec<(usize, Range<usize>)>;

/// How an int8 layer gets its quantized input and where its output goes.
#[derive(Debug, Clone, Copy, Default)]
struct Int8Flow {
    /// Which of the two quantized slots holds its input.
    slot: usize,
    /// The input is already there (quantized from the samples, or by the previous layer).
    prequantized: bool,
    /// The output is requantized straight into the next layer's input slot instead of written
    /// as f32: activations stay int8 between the two layers.
    requantize: bool,
}

/// An int8 linear layer (int8 convolutions quantize their im2col buffers instead).
fn int8_linear(layer: &Layer) -> bool {
    matches!(&layer.exec, Exec::MatMul(m) if m.int8.is_some() && m.conv.is_none())
}

/// Whether `value` is read by exactly one layer, `reader`, and is not the model's output.
fn only_reader(model: &Model, value: usize, reader: usize) -> bool {
    value != model.output_value && model.layers.iter().enumerate().all(|(i, l)| (i == reader) == l.inputs.contains(&value))
}

/// Whether the first layer is an int8 linear layer that alone reads the model input.
fn input_fuses_into_int8(model: &Model) -> bool {
    model.layers.first().is_some_and(|l| l.inputs == [0] && int8_linear(l)) && only_reader(model, 0, 0)
}

/// Chains of int8 linear layers where each is the only reader of the previous one's output: the
/// earlier layer requantizes into the later one's input, alternating between the two slots.
fn int8_flows(model: &Model, fused_input: bool) -> Vec<Int8Flow> {
    let mut flows = vec![Int8Flow::default(); model.layers.len()];
    if fused_input {
        flows[0].prequantized = true;
    }
    for i in 0..model.layers.len().saturating_sub(1) {
        let (layer, next) = (&model.layers[i], &model.layers[i + 1]);
        if int8_linear(layer) && int8_linear(next) && next.inputs == [layer.output] && only_reader(model, layer.output, i + 1) {
            flows[i].requantize = true;
            flows[i + 1] = Int8Flow { slot: 1 - flows[i].slot, prequantized: true, requantize: false };
        }
    }
    flows
}

/// The values held as int8 codes instead of f32 where the direct int8 kernel runs (AVX-512
/// VNNI): the output of an int8 direct convolution whose chain of sole readers, max pools and
/// flattens, ends in an int8 layer that reads codes (a direct convolution or a linear layer), all
/// quantized with that layer's input quantization. The pools and flattens then move a quarter of
/// the bytes and the int8 layer skips quantizing, with the same result: the maximum of codes is
/// the code of the maximum. Banded columns run their layers row by row in f32 and keep out.
fn code_values(model: &Model, schedule: &schedule::Plan) -> Vec<Option<(f32, u8)>> {
    let mut codes = vec![None; model.value_sizes.len()];
    let banded = |l: usize| schedule.columns.iter().any(|c| c.bands > 1 && c.layers.contains(&l));
    let sole_reader = |v: usize| (0..model.layers.len()).find(|&r| only_reader(model, v, r));
    for (l, layer) in model.layers.iter().enumerate() {
        let Exec::MatMul(m) = &layer.exec else { continue };
        if m.batched != Kernel::Int8Direct || banded(l) {
            continue;
        }
        let mut chain = vec![layer.output];
        let target = loop {
            let Some(r) = sole_reader(*chain.last().expect("a value")).filter(|&r| !banded(r)) else { break None };
            match &model.layers[r].exec {
                Exec::Pool { avg: None, .. } | Exec::Flatten => chain.push(model.layers[r].output),
                Exec::MatMul(next) if next.batched == Kernel::Int8Direct || int8_linear(&model.layers[r]) => {
                    break next.int8.as_ref().map(|q| (q.input_scale, q.input_zero));
                }
                _ => break None,
            }
        };
        if target.is_some() {
            chain.into_iter().for_each(|v| codes[v] = target);
        }
    }
    codes
}

impl Plan {
    fn new(model: &Model, batch: usize, threads: usize, schedule: schedule::Plan) -> Plan {
        let tile = schedule.tile;
        // Rows of full tiles are padded to 16 floats (64 bytes) so every row of every value starts
        // on a cache line: misaligned vector loads split lines and run about twice as slow.
        let tile_ld = padded(tile);
        let mut offsets = Vec::with_capacity(model.value_sizes.len());
        let mut at = 0;
        for &size in &model.value_sizes {
            offsets.push(at);
            at += size * tile_ld;
        }
        // Convolutions in row bands also keep their band's output there before it is copied
        // into place.
        let banded = |l: usize| schedule.columns.iter().any(|c| c.bands > 1 && c.layers.contains(&l));
        let scratch_len = model
            .layers
            .iter()
            .enumerate()
            .filter_map(|(i, l)| match &l.exec {
                Exec::MatMul(m) => m.conv.map(|g| {
                    let positions = g.out_hw[0] * g.out_hw[1] * tile_ld;
                    // Int8 convolutions of wide tiles keep their quantized input image there instead
                    // (or for the direct kernel, one padded row of it).
                    let image = if m.int8.is_some() { (g.channels * g.in_hw[0] * g.in_hw[1] * tile_ld).div_ceil(4) } else { 0 };
                    let image = image.max(int8_shift(m).map_or(0, |sc| ((sc.wp + 3) * tile_ld).div_ceil(4)));
                    let columns = (m.cols * positions).max(image);
                    columns + if banded(i) { m.rows * positions } else { 0 }
                }),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        let quantized_len = model
            .layers
            .iter()
            .filter_map(|l| match &l.exec {
                Exec::MatMul(m) if m.int8.is_some() => {
                    // A direct int8 convolution keeps its shifted image there instead.
                    let shifted = m.conv.zip(int8_shift(m)).map_or(0, |(g, sc)| sc.image_len(&g, tile_ld));
                    Some(q8::quantized_len(m.cols, columns(m, tile_ld)).max(shifted).div_ceil(4))
                }
                _ => None,
            })
            .max()
            .unwrap_or(0);
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
            codes: code_values(model, &schedule),
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
        self.band_parts.iter().map(Vec::len).max().unwrap_or(0).max(self.n_tiles())
    }
    /// Samples in tile `t`.
    fn width(&self, t: usize) -> usize {
        self.tile.min(self.batch - t * self.tile)
    }
    /// Row length of tile `t` (its width, padded).
    fn ld(&self, t: usize) -> usize {
        padded(self.width(t))
    }
    /// The codes value `v` is held as on tiles `ld` samples wide (None: f32, as everywhere
    /// without the direct int8 kernel).
    fn codes(&self, isa: Isa, v: usize, ld: usize) -> Option<(f32, u8)> {
        self.codes[v].filter(|_| q8direct::vectorized(isa, ld))
    }

    /// Quantized slot `k` of a tile chunk.
    fn quantized_slot(&self, k: usize) -> Range<usize> {
        let start = self.quantized + k * self.quantized_len;
        start..start + self.quantized_len
    }
}

/// Columns of a weighted layer's input matrix for a tile of `w` samples (times the output
/// positions of a convolution).
fn columns(m: &MatMul, w: usize) -> usize {
    m.conv.map_or(1, |g| g.out_hw[0] * g.out_hw[1]) * w
}

// Widths of 16 or more are padded to a multiple of 16 floats (every row of every value then
// starts on a cache line); smaller ones are left as they are, since padding would multiply
// their work.
use schedule::padded;

/// Floats to skip from the start of `v` to reach a 64-byte boundary.
fn align_offset(v: &[f32]) -> usize {
    (64 - v.as_ptr() as usize % 64) % 64 / 4
}

/// Executes a model; keeps its arena between calls of the same batch size.
pub struct Session<'m> {
    model: &'m Model,
    /// The calling thread and its helpers; `solo` is the calling thread alone, for layers that
    /// run inside one thread's share of the tiles.
    team: Team,
    solo: Team,
    schedule: Schedule,
    /// Cache budget of a column, in bytes.
    budget: usize,
    plan: Option<Plan>,
    /// Every tile's chunk, from `arena[arena_start..]` (the first 64-byte boundary).
    arena: Vec<f32>,
    arena_start: usize,
}

impl<'m> Session<'m> {
    /// A session with `threads` threads (at least 1: the caller and `threads - 1` helpers) and
    /// the automatic schedule.
    pub fn new(model: &'m Model, threads: usize) -> Result<Session<'m>> {
        Session::with_schedule(model, threads, Schedule::Auto, None)
    }

    /// A session with a schedule and a cache budget per column (default: the L2 size).
    pub fn with_schedule(model: &'m Model, threads: usize, schedule: Schedule, budget: Option<usize>) -> Result<Session<'m>> {
        let threads = threads.max(1);
        let start = |n| Team::new(n).map_err(|e| EngineError::Shape(format!("cannot start {threads} threads: {e}")));
        let (team, solo) = (start(threads)?, start(1)?);
        let budget = budget.unwrap_or_else(schedule::l2_cache_bytes);
        Ok(Session { model, team, solo, schedule, budget, plan: None, arena: Vec::new(), arena_start: 0 })
    }

    pub fn threads(&self) -> usize {
        self.team.threads()
    }

    /// The schedule this session uses for `batch` samples.
    pub fn plan(&self, batch: usize) -> schedule::Plan {
        schedule::plan(self.model, batch.max(1), self.threads(), self.schedule, self.budget)
    }

    /// Checks the input and prepares the arena for `batch`.
    fn prepare(&mut self, input: &[f32], batch: usize) -> Result<()> {
        let model = self.model;
        let f_in = model.value_sizes[0];
        if batch == 0 || input.len() != batch * f_in {
            return Err(EngineError::Shape(format!(
                "input has {} values; expected batch x {f_in} (per-sample shape {:?}) with batch >= 1",
                input.len(),
                model.input_shape
            )));
        }
        if self.plan.as_ref().is_none_or(|p| p.batch != batch) {
            let plan = Plan::new(model, batch, self.threads(), self.plan(batch));
            self.arena = vec![0.0; plan.chunk * plan.chunks() + 16];
            self.arena_start = align_offset(&self.arena);
            self.plan = Some(plan);
        }
        Ok(())
    }

    /// Runs `input` (`[batch, input features]`, row-major) and returns `[batch, output features]`.
    pub fn run(&mut self, input: &[f32], batch: usize) -> Result<Vec<f32>> {
        let mut out = vec![0.0; batch * self.model.value_sizes[self.model.output_value]];
        self.execute(input, batch, false, &mut out)?;
        Ok(out)
    }

    /// Runs `input` and returns the seconds spent in each layer (for `engine analyze`): thread
    /// time per layer summed over tiles, scaled so that the layers add up to the wall time.
    pub fn profile(&mut self, input: &[f32], batch: usize) -> Result<Vec<f64>> {
        let mut out = vec![0.0; batch * self.model.value_sizes[self.model.output_value]];
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

    /// Runs the batch column by column into `out` (`[batch, output features]`); with `timed`,
    /// returns each tile's seconds per layer.
    fn execute(&mut self, input: &[f32], batch: usize, timed: bool, out: &mut [f32]) -> Result<Vec<Vec<f64>>> {
        self.prepare(input, batch)?;
        let model = self.model;
        let plan = self.plan.as_ref().expect("prepared");
        let mut chunks: Vec<&mut [f32]> = self.arena[self.arena_start..].chunks_mut(plan.chunk.max(1)).take(plan.chunks()).collect();
        // Chunks past the tiles' hold the band parts of a one-tile batch.
        let mut spare = chunks.split_off(plan.n_tiles());
        let mut times = vec![vec![0.0; if timed { model.layers.len() } else { 0 }]; chunks.len()];
        let f_out = model.value_sizes[model.output_value];
        let outs: Vec<&mut [f32]> = out.chunks_mut((plan.tile * f_out).max(1)).collect();
        let columns = plan.schedule.columns.len();
        // Tile `t` through column `c`, its unbanded layers splitting their rows over `team`; after the
        // last column, the tile's outputs go to its samples' rows of `out`.
        let solo = &self.solo;
        let run = |c: usize, t: usize, chunk: &mut [f32], times: &mut [f64], out: &mut [f32], team: &Team| {
            let column = &plan.schedule.columns[c];
            if c == 0 {
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
            if c + 1 == columns {
                store_output(model, plan, t, chunk, out);
            }
        };
        let threads = self.team.threads();
        if chunks.len() >= 2 && threads > 1 {
            // Each thread takes its own tiles (tile t to thread t mod threads, the same every run,
            // so a tile's data stays in one core's cache) through every column, layers unsplit:
            // tiles never wait for each other.
            let mut shares: Vec<Vec<TileJob>> = (0..threads).map(|_| Vec::new()).collect();
            for (t, ((chunk, times), out)) in chunks.into_iter().zip(times.iter_mut()).zip(outs).enumerate() {
                shares[t % threads].push((t, chunk, times, out));
            }
            let shares: Vec<Mutex<_>> = shares.into_iter().map(Mutex::new).collect();
            // Members without a tile are left out (batches of fewer tiles than threads).
            let members = shares.iter().filter(|s| !s.lock().unwrap_or_else(|e| e.into_inner()).is_empty()).count();
            self.team.run_some(members, &|member| {
                let mut mine = shares[member].lock().unwrap_or_else(|e| e.into_inner());
                for c in 0..columns {
                    for (t, chunk, times, out) in mine.iter_mut() {
                        run(c, *t, chunk, times, out, solo);
                    }
                }
            });
        } else {
            // One tile (or one thread): the layers split their rows over the team where they are
            // large enough to gain from it, and otherwise run on the calling thread.
            let mut tiles: Vec<_> = chunks.into_iter().zip(times.iter_mut()).zip(outs).collect();
            for c in 0..columns {
                if let [((chunk, _), out)] = &mut tiles[..]
                    && !plan.band_parts[c].is_empty()
                    && !timed
                {
                    // A banded column of the one tile: a part of its bands per thread.
                    if c == 0 {
                        load_input(model, plan, 0, chunk, input);
                    }
                    run_band_parts(model, plan, c, chunk, &mut spare, &self.team, solo);
                    if c + 1 == columns {
                        store_output(model, plan, 0, chunk, out);
                    }
                    continue;
                }
                for (t, ((chunk, times), out)) in tiles.iter_mut().enumerate() {
                    run(c, t, chunk, times, out, &self.team);
                }
            }
        }
        Ok(times)
    }
}

/// Banded column `c` of a one-tile batch as parts on the team's threads (`Plan::band_parts`):
/// part 0 on the tile's chunk, part k on `spare[k - 1]`. The column's inputs are copied into the
/// spare chunks first, and after the parts, each one's rows of the column's last output are
/// copied into the tile's chunk.
fn run_band_parts(model: &Model, plan: &Plan, c: usize, chunk: &mut [f32], spare: &mut [&mut [f32]], team: &Team, solo: &Team) {
    let (column, parts) = (&plan.schedule.columns[c], &plan.band_parts[c]);
    let ld = plan.ld(0);
    let region = |v: usize| plan.offsets[v]..plan.offsets[v] + model.value_sizes[v] * ld;
    let produced: Vec<usize> = column.layers.clone().map(|l| model.layers[l].output).collect();
    let mut inputs: Vec<usize> =
        column.layers.clone().flat_map(|l| model.layers[l].inputs.clone()).filter(|v| !produced.contains(v)).collect();
    inputs.sort_unstable();
    inputs.dedup();
    let spare = &mut spare[..parts.len() - 1];
    for part in spare.iter_mut() {
        for &v in &inputs {
            part[region(v)].copy_from_slice(&chunk[region(v)]);
        }
    }
    {
        let chunks: Vec<Mutex<&mut [f32]>> =
            std::iter::once(&mut *chunk).chain(spare.iter_mut().map(|s| &mut **s)).map(Mutex::new).collect();
        team.run_some(parts.len(), &|k| {
            let mut part = chunks[k].lock().unwrap_or_else(|e| e.into_inner());
            for (l, rows) in &parts[k] {
                run_layer_rows(model, plan, *l, 0, &mut part, solo, rows.clone());
            }
        });
    }
    let last = column.layers.end - 1;
    let (v, shape) = (model.layers[last].output, &model.layers[last].out_shape);
    let (height, row) = (shape[1], shape[2] * ld);
    for (part, steps) in spare.iter().zip(&parts[1..]) {
        for (_, rows) in steps.iter().filter(|(l, _)| *l == last) {
            for ch in 0..shape[0] {
                let at = plan.offsets[v] + (ch * height + rows.start) * row..plan.offsets[v] + (ch * height + rows.end) * row;
                chunk[at.clone()].copy_from_slice(&part[at]);
            }
        }
    }
}

/// A tile handed to a thread: its index, its chunk of the arena, its per-layer times and its
/// samples' rows of the output.
type TileJob<'a> = (usize, &'a mut [f32], &'a mut Vec<f64>, &'a mut [f32]);

/// Transposes tile `t`'s output value back to sample-major rows, `out` holding the tile's samples.
fn store_output(model: &Model, plan: &Plan, t: usize, chunk: &[f32], out: &mut [f32]) {
    let f_out = model.value_sizes[model.output_value];
    let (w, ld) = (plan.width(t), plan.ld(t));
    let off = plan.offsets[model.output_value];
    transpose::transpose(model.options.isa, &chunk[off..off + f_out * ld], f_out, w, ld, &mut out[..w * f_out], f_out);
}

/// The regions of `chunk` for the layer's inputs (read) and output (written); the output never
/// overlaps an input because every value has its own region.
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
        && let Some(q) = &m.int8
    {
        let qx: &mut [u8] = bytemuck::cast_slice_mut(&mut chunk[plan.quantized_slot(plan.int8_flow[0].slot)]);
        return q8::quantize_samples(model.options.isa, samples, f_in, w, ld, q.input_scale, q.input_zero, qx);
    }
    let x0 = &mut chunk[plan.offsets[0]..plan.offsets[0] + f_in * ld];
    transpose::transpose(model.options.isa, samples, w, f_in, f_in, x0, ld);
}

fn run_layer_on_tile(model: &Model, plan: &Plan, l: usize, t: usize, chunk: &mut [f32], team: &Team) {
    // Padding columns are computed along with the samples: they hold finite values derived from
    // zeros and are never read back.
    let layer = &model.layers[l];
    let w = plan.ld(t);
    let isa = model.options.isa;
    let range = |v: usize| plan.offsets[v]..plan.offsets[v] + model.value_sizes[v] * w;
    let ins: Vec<Range<usize>> = layer.inputs.iter().map(|&v| range(v)).collect();
    let out_range = range(layer.output);
    if let Exec::MatMul(m) = &layer.exec
        && let Some(q) = &m.int8
    {
        // Quantize the input (after im2col for a convolution) into the layer's quantized slot
        // unless it is there already, then run the int8 kernel into the output region, or
        // requantized into the next layer's slot.
        let flow = plan.int8_flow[l];
        let cols_w = columns(m, w);
        let (values, rest) = chunk.split_at_mut(plan.scratch.start);
        let (im2col_buf, slots) = rest.split_at_mut(plan.quantized - plan.scratch.start);
        let (slot0, slot1) = slots.split_at_mut(plan.quantized_len);
        let (input_slot, output_slot) = if flow.slot == 0 { (slot0, slot1) } else { (slot1, slot0) };
        let (codes_in, codes_out) = (plan.codes(isa, layer.inputs[0], w), plan.codes(isa, layer.output, w));
        if let Some(g) = m.conv
            && uses_int8_direct(isa, m, w)
        {
            let (xs, y) = regions(values, &ins, out_range);
            let x = match codes_in {
                Some((_, zero)) => q8direct::Source::Codes { x: bytemuck::cast_slice(xs[0]), zero },
                None => q8direct::Source::F32 { x: xs[0], scale: q.input_scale, zero: q.input_zero },
            };
            let y = match codes_out {
                Some((scale, zero)) => q8direct::Out::codes(bytemuck::cast_slice_mut(y), scale, zero),
                None => q8direct::Out::F32(y),
            };
            let bufs = (bytemuck::cast_slice_mut(im2col_buf), bytemuck::cast_slice_mut(input_slot));
            return conv_q8_direct(isa, m, &Geometry { w, ..g }, x, y, 0..g.out_hw[0], bufs, team);
        }
        let qx: &mut [u8] = bytemuck::cast_slice_mut(&mut input_slot[..q8::quantized_len(m.cols, cols_w).div_ceil(4)]);
        if !flow.prequantized {
            let x = &values[ins[0].clone()];
            match (m.conv, codes_in) {
                (Some(g), _) => quantized_im2col(isa, m, &Geometry { w, ..g }, x, 0..g.out_hw[0], im2col_buf, qx),
                (None, Some((_, zero))) => q8::group_codes(bytemuck::cast_slice(x), m.cols, cols_w, zero, qx),
                (None, None) => q8::quantize(isa, x, m.cols, cols_w, q.input_scale, q.input_zero, qx),
            }
        }
        let out = match &model.layers[l + 1..].first().map(|n| &n.exec) {
            Some(Exec::MatMul(next)) if flow.requantize => {
                let next = next.int8.as_ref().expect("requantizing into an int8 layer");
                let y: &mut [u8] = bytemuck::cast_slice_mut(output_slot);
                q8::Output::quantized(&mut y[..q8::quantized_len(m.rows, cols_w)], next.input_scale, next.input_zero)
            }
            _ => q8::Output::F32(&mut values[out_range]),
        };
        int8_matmul(isa, m, qx, cols_w, out, team);
        return;
    }
    if let Exec::MatMul(m) = &layer.exec
        && let Some(g) = m.conv
    {
        let positions = g.out_hw[0] * g.out_hw[1];
        let (before, rest) = chunk.split_at_mut(plan.scratch.start);
        if uses_direct(isa, m, w) {
            let (xs, y) = regions(before, &ins, out_range);
            return conv_direct(isa, m, &Geometry { w, ..g }, xs[0], y, 0..g.out_hw[0], team);
        }
        let scratch = &mut rest[..m.cols * positions * w];
        window::im2col(&Geometry { w, ..g }, &before[ins[0].clone()], scratch);
        matmul(isa, m, scratch, positions * w, &mut before[out_range], team);
        return;
    }
    let (xs, y) = regions(chunk, &ins, out_range);
    if plan.codes(isa, layer.output, w).is_some() {
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

/// A banded column's bands in one part per thread (see `Plan::band_parts`), for a batch of one
/// tile on several threads; none where the column has one band, or where a value it computes
/// other than its last layer's output is read after it (parts compute only the rows their bands
/// need, and only the last layer's rows are gathered back).
fn band_parts(model: &Model, column: &schedule::Column, tiles: usize, threads: usize) -> Vec<Steps> {
    let parts = threads.min(column.bands);
    if tiles != 1 || parts < 2 {
        return Vec::new();
    }
    let last = model.layers[column.layers.end - 1].output;
    let escapes = |l: usize| {
        let v = model.layers[l].output;
        v == model.output_value
            || model.layers.iter().enumerate().any(|(r, reader)| !column.layers.contains(&r) && reader.inputs.contains(&v))
    };
    if column.layers.clone().any(|l| model.layers[l].output != last && escapes(l)) {
        return Vec::new();
    }
    (0..parts).map(|k| band_steps(model, column, k * column.bands / parts..(k + 1) * column.bands / parts)).collect()
}

/// The steps of bands `bands` of a banded column (see `Plan::band_steps`).
fn band_steps(model: &Model, column: &schedule::Column, bands: Range<usize>) -> Steps {
    let layers = column.layers.clone();
    let mut done = vec![0usize; layers.len()];
    let mut steps = Vec::new();
    for band in bands {
        let need = schedule::band_rows(model, layers.clone(), column.bands, band);
        for (i, l) in layers.clone().enumerate() {
            // Bands move down the image, so the rows a band needs never start above those an
            // earlier band needed: everything above `done` is already there.
            let rows = need[i].start.max(done[i])..need[i].end;
            if !rows.is_empty() {
                done[i] = rows.end;
                steps.push((l, rows));
            }
        }
    }
    steps
}

/// Output rows `rows` of a spatial layer (convolution, pool or element-wise) on tile `t`.
fn run_layer_rows(model: &Model, plan: &Plan, l: usize, t: usize, chunk: &mut [f32], team: &Team, rows: Range<usize>) {
    let layer = &model.layers[l];
    let w = plan.ld(t);
    let isa = model.options.isa;
    let range = |v: usize| plan.offsets[v]..plan.offsets[v] + model.value_sizes[v] * w;
    let ins: Vec<Range<usize>> = layer.inputs.iter().map(|&v| range(v)).collect();
    // Output rows of every channel: `[channels, height, width, w]`, one band per channel.
    let (height, row_len) = (layer.out_shape[1], layer.out_shape[2] * w);
    let band = |c: usize| c * height * row_len + rows.start * row_len..c * height * row_len + rows.end * row_len;
    let channels = layer.out_shape[0];
    if let Exec::MatMul(m) = &layer.exec {
        let g = Geometry { w, ..m.conv.expect("a spatial matmul is a convolution") };
        let band_cols = rows.len() * g.out_hw[1] * w;
        let (values, rest) = chunk.split_at_mut(plan.scratch.start);
        if uses_direct(isa, m, w) {
            let (xs, y) = regions(values, &ins, range(layer.output));
            return conv_direct(isa, m, &g, xs[0], y, rows, team);
        }
        let (scratch, slots) = rest.split_at_mut(plan.quantized - plan.scratch.start);
        if uses_int8_direct(isa, m, w) {
            // Banded columns hold no codes (`code_values`).
            let (xs, y) = regions(values, &ins, range(layer.output));
            let q = m.int8.as_ref().expect("an int8 convolution");
            let x = q8direct::Source::F32 { x: xs[0], scale: q.input_scale, zero: q.input_zero };
            let bufs = (bytemuck::cast_slice_mut(scratch), bytemuck::cast_slice_mut(&mut slots[..plan.quantized_len]));
            return conv_q8_direct(isa, m, &g, x, q8direct::Out::F32(y), rows, bufs, team);
        }
        // The band's output goes to scratch space first, then the f32 columns (or for int8, the
        // quantized image).
        let (band_out, cols) = scratch.split_at_mut(m.rows * band_cols);
        let x = &values[ins[0].clone()];
        match m.int8 {
            Some(_) => {
                // The int8 kernel writes the band's rows of each channel straight into the image.
                let qx: &mut [u8] = bytemuck::cast_slice_mut(&mut slots[..q8::quantized_len(m.cols, band_cols).div_ceil(4)]);
                quantized_im2col(isa, m, &g, x, rows.clone(), cols, qx);
                let (_, y) = regions(values, &ins, range(layer.output));
                let out = q8::Output::F32Rows { y: &mut y[band(0).start..], stride: height * row_len };
                return int8_matmul(isa, m, qx, band_cols, out, team);
            }
            None => {
                window::im2col_rows(&g, x, rows.clone(), cols);
                matmul(isa, m, cols, band_cols, band_out, team)
            }
        }
        let y = &mut values[range(layer.output)];
        for (c, part) in band_out.chunks_exact(band_cols).enumerate() {
            y[band(c)].copy_from_slice(part);
        }
        return;
    }
    let (xs, y) = regions(chunk, &ins, range(layer.output));
    let relu = |v: f32, on: bool| if on { v.max(0.0) } else { v };
    match &layer.exec {
        Exec::Pool { geometry, avg } => window::pool_rows(isa, &Geometry { w, ..*geometry }, xs[0], y, *avg, rows),
        Exec::Affine { scale, shift, relu: r, .. } => {
            for c in 0..channels {
                let (s, b) = (scale[c], shift[c]);
                y[band(c)].iter_mut().zip(&xs[0][band(c)]).for_each(|(o, i)| *o = relu(i * s + b, *r));
            }
        }
        Exec::Relu => (0..channels).for_each(|c| y[band(c)].iter_mut().zip(&xs[0][band(c)]).for_each(|(o, i)| *o = i.max(0.0))),
        Exec::Add { relu: r } => {
            for c in 0..channels {
                y[band(c)].iter_mut().zip(xs[0][band(c)].iter().zip(&xs[1][band(c)])).for_each(|(o, (a, b))| *o = relu(a + b, *r));
            }
        }
        _ => unreachable!("only spatial layers run in row bands"),
    }
}

/// An int8 convolution's quantized columns for output rows `rows`. Tiles of a multiple of 16
/// samples at stride 1 quantize the input rows the band reads into `scratch` (an image, at its
/// own offsets) and unfold its bytes (`q8conv`); other cases (batch 1: rows of a few bytes)
/// unfold f32 columns into `scratch` and quantize those.
fn quantized_im2col(isa: Isa, m: &MatMul, g: &Geometry, x: &[f32], rows: Range<usize>, scratch: &mut [f32], qx: &mut [u8]) {
    let (q, cols) = (m.int8.as_ref().expect("an int8 convolution"), m.cols);
    if !g.w.is_multiple_of(16) || g.window.stride[1] != 1 {
        let band = rows.len() * g.out_hw[1] * g.w;
        window::im2col_rows(g, x, rows, &mut scratch[..cols * band]);
        return q8::quantize(isa, &scratch[..cols * band], cols, band, q.input_scale, q.input_zero, qx);
    }
    let image: &mut [u8] = bytemuck::cast_slice_mut(&mut scratch[..x.len().div_ceil(4)]);
    let (plane, row) = (g.in_hw[0] * g.in_hw[1] * g.w, g.in_hw[1] * g.w);
    let input = g.input_rows(rows.clone());
    for c in 0..g.channels {
        let span = c * plane + input.start * row..c * plane + input.end * row;
        q8::quantize_values(isa, &x[span.clone()], q.input_scale, q.input_zero, &mut image[span]);
    }
    q8conv::im2col_u8(isa, g, image, rows, q.input_zero, qx);
}

/// Whether a convolution runs its direct kernel on tiles of `w` samples (else im2col and CSR).
fn uses_direct(isa: Isa, m: &MatMul, w: usize) -> bool {
    m.batched == Kernel::Direct && m.conv.is_some_and(|g| direct::takes(isa, w, &g))
}

/// Output rows `rows` of a direct convolution, output channels split over `threads`.
fn conv_direct(isa: Isa, m: &MatMul, g: &Geometry, x: &[f32], y: &mut [f32], rows: Range<usize>, team: &Team) {
    let threads = team.threads();
    let csr = m.csr.as_ref().expect("CSR weights packed for a direct convolution");
    let plane = g.out_hw[0] * g.out_hw[1] * g.w;
    if !splits(m, rows.len() * g.out_hw[1] * g.w, threads) {
        return direct::conv_direct(isa, csr, &m.bias, g, x, y, 0..m.rows, rows, m.relu);
    }
    let per_part = m.rows.div_ceil(threads * 2);
    team.for_each(y[..m.rows * plane].chunks_mut(per_part * plane).enumerate().collect(), |(p, y)| {
        let channels = p * per_part..((p + 1) * per_part).min(m.rows);
        direct::conv_direct(isa, csr, &m.bias, g, x, y, channels, rows.clone(), m.relu)
    });
}

/// An int8 layer's weights regrouped for the direct convolution, if it has them.
fn int8_shift(m: &MatMul) -> Option<&q8direct::ShiftConv> {
    m.int8.as_ref().and_then(|q| q.shift.as_ref())
}

/// Whether an int8 convolution runs the direct kernel on tiles of `w` samples (else im2col and
/// the grouped kernel).
fn uses_int8_direct(isa: Isa, m: &MatMul, w: usize) -> bool {
    m.batched == Kernel::Int8Direct && q8direct::vectorized(isa, w)
}

/// Output rows `rows` of an int8 convolution by the direct kernel: the input rows they read are
/// quantized into the shifted image (`bufs`: a row buffer and the image), then the output
/// channels split over the team.
#[allow(clippy::too_many_arguments)] // conv_direct's arguments plus the two buffers
fn conv_q8_direct(
    isa: Isa,
    m: &MatMul,
    g: &Geometry,
    x: q8direct::Source,
    y: q8direct::Out,
    rows: Range<usize>,
    bufs: (&mut [u8], &mut [u8]),
    team: &Team,
) {
    let (q, threads) = (m.int8.as_ref().expect("an int8 convolution"), team.threads());
    let sc = q.shift.as_ref().expect("weights regrouped for the direct kernel");
    let (row_buf, xs) = bufs;
    q8direct::shift_image(isa, g, sc, x, rows.clone(), row_buf, xs);
    let xs = &*xs;
    if !splits(m, rows.len() * g.out_hw[1] * g.w, threads) {
        return q8direct::conv_q8_direct(isa, sc, &q.dequant, g, xs, y, 0..m.rows, rows);
    }
    let per_part = m.rows.div_ceil(threads * 2);
    team.for_each(y.split(per_part * g.out_hw[0] * g.out_hw[1] * g.w).into_iter().enumerate().collect(), |(p, y)| {
        let channels = p * per_part..((p + 1) * per_part).min(m.rows);
        q8direct::conv_q8_direct(isa, sc, &q.dequant, g, xs, y, channels, rows.clone())
    });
}

/// Below about this much work (a few microseconds) handing half of a layer to another thread
/// costs more than it saves, so small layers run on the calling thread. Counted in multiply-adds
/// for the kernels that run over a tile of samples (tens of them per nanosecond), and in
/// gathered weights for the batch-1 kernels (a few per nanosecond).
const PARALLEL_WORK: usize = 256 * 1024;
const PARALLEL_GATHERS: usize = 32 * 1024;

/// Whether `work` (multiply-adds over `w` columns) is worth splitting over threads.
fn worth_splitting(threads: usize, work: usize, w: usize) -> bool {
    threads > 1 && work >= if w == 1 { PARALLEL_GATHERS } else { PARALLEL_WORK }
}

/// Whether a weighted layer splits its rows (or channels) over `threads` on a `[cols, cols_w]`
/// input (a convolution's output positions times the tile width): one rule for every kernel, and
/// for the executor deciding whether a run needs the thread pool at all.
fn splits(m: &MatMul, cols_w: usize, threads: usize) -> bool {
    let work = match (&m.int8, m.kernel(cols_w == 1)) {
        // At batch 1 the int8 kernel gathers one 4-byte group per stored group.
        (Some(q), _) if cols_w == 1 => q.matrix.stored_groups(),
        (Some(q), _) => 4 * q.matrix.stored_groups() * cols_w,
        (None, Kernel::Dense) if m.rows < 64 => 0,
        (None, Kernel::Dense) => m.rows * m.cols * cols_w,
        (None, Kernel::Blocked) => m.bcsr.as_ref().map_or(0, |b| b.blk_ptr.last().map_or(0, |&n| n as usize) * bcsr::BR) * cols_w,
        (None, _) => m.csr.as_ref().map_or(0, |c| c.nnz()) * cols_w,
    };
    worth_splitting(threads, work, cols_w)
}

/// The int8 kernel on a quantized `[groups, w, 4]` tile, splitting rows over `threads` (in
/// whole groups of four when the output is requantized).
fn int8_matmul(isa: Isa, layer: &MatMul, x: &[u8], w: usize, out: q8::Output, team: &Team) {
    let threads = team.threads();
    let q = layer.int8.as_ref().expect("an int8 layer");
    let m = &q.matrix;
    if !splits(layer, w, threads) {
        return q8::spmm_q8_into(isa, m, x, w, out, 0..m.rows, &q.dequant);
    }
    match out {
        // Band rows come from band steps, which run on one thread (see `Session::execute`).
        rows @ q8::Output::F32Rows { .. } => q8::spmm_q8_into(isa, m, x, w, rows, 0..m.rows, &q.dequant),
        q8::Output::F32(y) => team.for_each(row_parts(&m.row_ptr, threads, y, w), |(r, y)| q8::spmm_q8(isa, m, x, w, y, r, &q.dequant)),
        q8::Output::Quantized { y, inv_scale, zero } => {
            let mut parts = Vec::new();
            let mut rest = y;
            for r in balanced_ranges(&m.row_ptr, threads * 4).into_iter().filter_map(|r| whole_groups(r, m.rows)) {
                let (head, tail) = rest.split_at_mut(q8::quantized_len(r.len(), w));
                parts.push((r, head));
                rest = tail;
            }
            team.for_each(parts, |(r, y)| q8::spmm_q8_into(isa, m, x, w, q8::Output::Quantized { y, inv_scale, zero }, r, &q.dequant));
        }
    }
}

/// A range of rows widened to whole groups of four: each start moves down to a multiple of 4,
/// each end too (or stays at `rows`); a range left empty is dropped. Applied to consecutive
/// ranges that cover `0..rows`, the results still cover it without overlapping.
fn whole_groups(r: Range<usize>, rows: usize) -> Option<Range<usize>> {
    let end = if r.end == rows { rows } else { r.end / 4 * 4 };
    let start = r.start / 4 * 4;
    (end > start).then_some(start..end)
}

/// Rows (described by cumulative entry counts `row_ptr`) cut into ranges of about equal work,
/// several per thread so that work stealing evens out rows of unequal cost, each with its slice
/// of the `[rows, w]` output.
fn row_parts<'y>(row_ptr: &[u32], threads: usize, y: &'y mut [f32], w: usize) -> Vec<(Range<usize>, &'y mut [f32])> {
    let rows = row_ptr.len().saturating_sub(1);
    let mut parts = Vec::new();
    let mut rest = &mut y[..rows * w];
    for r in balanced_ranges(row_ptr, threads * 4) {
        let (head, tail) = rest.split_at_mut(r.len() * w);
        parts.push((r, head));
        rest = tail;
    }
    parts
}

/// `y = layer(x)` for one weighted layer on a `[cols, w]` tile, splitting rows over `threads`.
fn matmul(isa: Isa, m: &MatMul, x: &[f32], w: usize, y: &mut [f32], team: &Team) {
    let threads = team.threads();
    let batch1 = w == 1;
    match m.kernel(batch1) {
        Kernel::Int8 | Kernel::Int8Direct => unreachable!("int8 layers run through int8_matmul"),
        Kernel::Dense => {
            let wt = m.dense.as_deref().expect("dense weights packed for a dense choice");
            if !splits(m, w, threads) {
                return dense::dense(isa, wt, m.rows, m.cols, &m.bias, x, w, y, m.relu, 1);
            }
            // Slabs of rows, a multiple of 16 each, one GEMM per slab.
            let slab = m.rows.div_ceil(threads * 2).next_multiple_of(16);
            let k = m.cols;
            let slabs = y[..m.rows * w].chunks_mut(slab * w).zip(wt.chunks(slab * k)).zip(m.bias.chunks(slab)).collect();
            team.for_each(slabs, |((y, wt), bias)| dense::dense(isa, wt, bias.len(), k, bias, x, w, y, m.relu, 1));
        }
        Kernel::Blocked => {
            let b = m.bcsr.as_ref().expect("blocks packed for a blocked choice");
            let rows_of = |blocks: &Range<usize>| (blocks.start * bcsr::BR).min(m.rows)..(blocks.end * bcsr::BR).min(m.rows);
            if !splits(m, w, threads) {
                return bcsr::spmm_bcsr(isa, b, &m.bias, x, w, y, 0..b.blocks(), m.relu);
            }
            let mut parts = Vec::new();
            let mut rest = &mut y[..m.rows * w];
            for blocks in balanced_ranges(&b.blk_ptr, threads * 4) {
                let (head, tail) = rest.split_at_mut(rows_of(&blocks).len() * w);
                parts.push((blocks, head));
                rest = tail;
            }
            team.for_each(parts, |(blocks, y)| bcsr::spmm_bcsr(isa, b, &m.bias, x, w, y, blocks, m.relu));
        }
        // A direct convolution's tiles that its kernel does not take run im2col and CSR.
        Kernel::Sparse | Kernel::Direct => {
            let csr = m.csr.as_ref().expect("CSR weights packed for a sparse choice");
            let run = |rows: Range<usize>, y: &mut [f32]| {
                if batch1 {
                    spmv::spmv(isa, csr, &m.bias, x, y, rows, m.relu)
                } else {
                    spmm::spmm(isa, csr, &m.bias, x, w, y, rows, m.relu)
                }
            };
            if !splits(m, w, threads) {
                return run(0..m.rows, y);
            }
            team.for_each(row_parts(&csr.row_ptr, threads, y, w), |(r, y)| run(r, y));
        }
    }
}

fn run_layer(isa: Isa, exec: &Exec, xs: &[&[f32]], y: &mut [f32], w: usize, team: &Team) {
    let x = xs[0];
    let relu = |v: f32, on: bool| if on { v.max(0.0) } else { v };
    match exec {
        Exec::MatMul(m) => matmul(isa, m, x, w, y, team),
        Exec::Affine { scale, shift, relu: r, per_channel } => {
            let n = per_channel * w;
            for (c, (s, b)) in scale.iter().zip(shift).enumerate() {
                for (o, i) in y[c * n..(c + 1) * n].iter_mut().zip(&x[c * n..(c + 1) * n]) {
                    *o = relu(i * s + b, *r);
                }
            }
        }
        Exec::Relu => y.iter_mut().zip(x).for_each(|(o, i)| *o = i.max(0.0)),
        Exec::Flatten => y.copy_from_slice(x),
        Exec::Add { relu: r } => y.iter_mut().zip(x.iter().zip(xs[1])).for_each(|(o, (a, b))| *o = relu(a + b, *r)),
        Exec::Pool { geometry, avg } => window::pool(isa, &Geometry { w, ..*geometry }, x, y, *avg),
        Exec::GlobalAvgPool { channels, pixels } => {
            for c in 0..*channels {
                let out = &mut y[c * w..(c + 1) * w];
                out.fill(0.0);
                for p in 0..*pixels {
                    out.iter_mut().zip(&x[(c * pixels + p) * w..][..w]).for_each(|(o, i)| *o += i);
                }
                out.iter_mut().for_each(|o| *o /= *pixels as f32);
            }
        }
        Exec::Softmax => {
            let features = x.len() / w;
            for s in 0..w {
                let max = (0..features).map(|f| x[f * w + s]).fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0;
                for f in 0..features {
                    let e = (x[f * w + s] - max).exp();
                    y[f * w + s] = e;
                    sum += e;
                }
                (0..features).for_each(|f| y[f * w + s] /= sum);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::whole_groups;

    #[test]
    fn row_ranges_widen_to_whole_groups_of_four_and_still_cover_the_rows() {
        assert_eq!(whole_groups(0..6, 10), Some(0..4));
        assert_eq!(whole_groups(6..10, 10), Some(4..10));
        assert_eq!(whole_groups(5..7, 10), None);
        assert_eq!(whole_groups(0..3, 3), Some(0..3));
        for rows in 1..40 {
            for cut in 0..=rows {
                let parts: Vec<_> =
                    [0..cut, cut..rows].into_iter().filter(|r| !r.is_empty()).filter_map(|r| whole_groups(r, rows)).collect();
                assert_eq!(parts.first().unwrap().start, 0);
                assert_eq!(parts.last().unwrap().end, rows);
                assert!(parts.windows(2).all(|p| p[0].end == p[1].start && p[1].start % 4 == 0));
            }
        }
    }
}
