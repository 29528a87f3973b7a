//! Runs of columns with one tile width each (`schedule::Column::tile`): every segment has its own
//! memory plan and arena, and the values made before a segment that it (or a later one) reads are
//! copied from the previous segment's tiles into its own before it runs (`retile`).

use std::ops::Range;

use super::{ARENA_GUARD, Plan};
use crate::compile::Model;
use crate::error::Result;
use crate::kernels::lines::line_offset;
use crate::kernels::transpose;
use crate::schedule;
use crate::team::Team;

/// Columns of one tile width, with their memory plan and arena.
pub(super) struct Segment {
    pub plan: Plan,
    /// Values made before this segment's first layer and read in it or after it (the model's
    /// output included): copied into its tiles from the previous segment's.
    pub live_in: Vec<usize>,
    /// Every tile's chunk, from `arena[arena_start..]` (the first 64-byte boundary after
    /// `ARENA_GUARD` floats).
    pub arena: Vec<f32>,
    pub arena_start: usize,
}

/// The segments of `schedule` for `batch` samples on `threads` threads.
pub(super) fn segments(model: &Model, batch: usize, threads: usize, schedule: schedule::Plan) -> Result<Vec<Segment>> {
    let mut runs: Vec<Range<usize>> = Vec::new();
    for (c, column) in schedule.columns.iter().enumerate() {
        match runs.last_mut() {
            Some(run) if schedule.columns[run.start].tile == column.tile => run.end = c + 1,
            _ => runs.push(c..c + 1),
        }
    }
    let n = model.layers.len();
    let mut out = Vec::with_capacity(runs.len());
    for (k, run) in runs.iter().enumerate() {
        let columns = schedule.columns[run.clone()].to_vec();
        let layers = columns[0].layers.start..columns[columns.len() - 1].layers.end;
        let live_in = if k == 0 { Vec::new() } else { live_values(model, layers.start) };
        // The values this segment's tiles hold: what its layers read and write, what passes
        // through to later segments, and the model's input in the first one.
        let mut held = vec![false; model.value_sizes.len()];
        for l in layers.clone() {
            held[model.layers[l].output] = true;
            model.layers[l].inputs.iter().for_each(|&v| held[v] = true);
        }
        live_in.iter().for_each(|&v| held[v] = true);
        if layers.end < n {
            live_values(model, layers.end).into_iter().for_each(|v| held[v] = true);
        }
        held[0] |= k == 0;
        held[model.output_value] |= k + 1 == runs.len();
        let tile = columns[0].tile;
        let part = schedule::Plan { tile, columns, ..schedule.clone() };
        let plan = Plan::new(model, batch, threads, part, layers, &held);
        let len = plan.chunk.checked_mul(plan.chunks()).and_then(|n| n.checked_add(ARENA_GUARD + 16));
        let arena = crate::error::try_zeros(len, || format!("the activations of a batch of {batch}"))?;
        let arena_start = ARENA_GUARD + line_offset(&arena[ARENA_GUARD..]);
        out.push(Segment { plan, live_in, arena, arena_start });
    }
    Ok(out)
}

/// Values made before layer `start` (the model's input counts as made before layer 0) and read
/// by layer `start` or a later one, or the model's output.
fn live_values(model: &Model, start: usize) -> Vec<usize> {
    let made_before = |v: usize| v == 0 || model.layers[..start].iter().any(|l| l.output == v);
    let read_after = |v: usize| v == model.output_value || model.layers[start..].iter().any(|l| l.inputs.contains(&v));
    (0..model.value_sizes.len()).filter(|&v| made_before(v) && read_after(v)).collect()
}

/// Copies `to.live_in` from `from`'s tiles into `to`'s, each thread filling its own destination
/// tiles. Sample `s` is column `s % tile` of tile `s / tile` in each layout.
pub(super) fn retile(model: &Model, from: &Segment, to: &mut Segment, team: &Team) {
    let (fp, src) = (&from.plan, &from.arena[from.arena_start..]);
    let Segment { plan: tp, live_in, arena, arena_start } = to;
    let isa = model.options.isa;
    let tiles: Vec<(usize, &mut [f32])> = arena[*arena_start..].chunks_mut(tp.chunk.max(1)).take(tp.n_tiles()).enumerate().collect();
    team.for_each(tiles, |(u, chunk)| {
        let (w, ld) = (tp.width(u), tp.ld(u));
        for &v in live_in.iter() {
            let features = model.value_sizes[v];
            let dst = &mut chunk[tp.offsets[v]..tp.offsets[v] + features * ld];
            let first = u * tp.tile;
            if fp.tile == 1 {
                // One sample per source tile, its features contiguous: the destination tile is
                // the transpose of `w` rows one source chunk apart.
                let at = first * fp.chunk + fp.offsets[v];
                transpose::transpose(isa, &src[at..], w, features, fp.chunk, dst, ld);
                continue;
            }
            let mut j = 0;
            while j < w {
                let (t, i) = ((first + j) / fp.tile, (first + j) % fp.tile);
                let run = (fp.width(t) - i).min(w - j);
                let src_ld = fp.ld(t);
                let x = &src[t * fp.chunk + fp.offsets[v]..][..features * src_ld];
                for f in 0..features {
                    dst[f * ld + j..f * ld + j + run].copy_from_slice(&x[f * src_ld + i..f * src_ld + i + run]);
                }
                j += run;
            }
        }
    });
}
