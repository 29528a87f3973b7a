//! Graph passes for the row-wise layers of sequence models (BERT): a linear layer over rows is a
//! 1x1 convolution between two picks (`onnx::sequence`); these passes fold what exporters write
//! around it into the convolution and merge the data movement between layers:
//! - a bias added after the rows-first pick goes into the convolution's bias, and a scalar product
//!   after any pick (attention's scaling of queries and keys) into its weights;
//! - GELU as `x * 0.5 * (1 + erf(x / sqrt 2))` becomes one `Gelu`;
//! - an element-wise function after a pick moves before it, where the convolution applies it;
//! - consecutive picks, transposes, selections and reshapes become one pick (none where they
//!   undo each other);
//! - attention's `Where(IsNaN(x), 0, x)` after its softmax becomes one `ZeroNaN`, and the mask
//!   added before the softmax and that `ZeroNaN` become flags of the softmax;
//! - attention's per-head transposes become strides of its products (`BatchMatMul { swapped }`);
//! - a residual added after a rows-first pick is added by the convolution before it;
//! - a layer normalization after a rows-first pick normalizes the features-first value before
//!   it, so that the picks around it cancel;
//! - the same operator on the same values, made twice (the query, key and value layers each
//!   moving the normalized rows features-first, the attention mask of every layer), is made once.

use crate::graph::{BinaryKind, Graph, Node, Op, Unary};
use crate::ops::{Erf, Gelu, IsNaN, ZeroNaN};
use crate::passes::consumers;

pub fn optimize(graph: &mut Graph) -> bool {
    fuse_gelu(graph)
        || fold_row_bias(graph)
        || fold_row_scale(graph)
        || unary_before_pick(graph)
        || compose_moves(graph)
        || share_nodes(graph)
        || swap_into_products(graph)
        || fuse_zero_nan(graph)
        || residual_before_pick(graph)
        || layer_norm_before_pick(graph)
        || fuse_masked_softmax(graph)
}

/// `Softmax(Add(scores, mask))`, the mask repeating over the scores' leading axes (attention's,
/// over the heads), and a `ZeroNaN` after a softmax: one softmax with its `masked` and
/// `zero_nan` flags, one pass over the scores instead of three.
fn fuse_masked_softmax(graph: &mut Graph) -> bool {
    for i in 0..graph.nodes.len() {
        let Some(s) = producer(graph, graph.nodes[i].inputs.first().map_or("", |v| v.as_str()), i) else { continue };
        if consumers(graph, &graph.nodes[s].output) != 1 {
            continue;
        }
        match (&graph.nodes[i].op, &graph.nodes[s].op) {
            (Op::Unary(Unary::ZeroNaN(_)), Op::Softmax { masked, zero_nan: false }) => {
                graph.nodes[s].op = Op::Softmax { masked: *masked, zero_nan: true };
                let removed = graph.nodes.remove(i);
                graph.nodes[s].output = removed.output;
                return true;
            }
            (Op::Softmax { masked: false, zero_nan }, Op::Binary { kind: BinaryKind::Add, constant: None, .. }) => {
                let zero_nan = *zero_nan;
                let Ok(shapes) = graph.infer_shapes() else { return false };
                let shape = |v: &str| shapes.iter().rev().find(|(n, _)| n == v).map(|(_, s)| s.clone()).unwrap_or_default();
                let [a, b] = [0, 1].map(|k| graph.nodes[s].inputs[k].clone());
                let is_row = |mask: &[usize], scores: &[usize]| crate::sequence::repeats_over_leading_axes(mask, scores);
                let (scores, mask) = if is_row(&shape(&b), &shape(&a)) {
                    (a, b)
                } else if is_row(&shape(&a), &shape(&b)) {
                    (b, a)
                } else {
                    continue;
                };
                graph.nodes[i].op = Op::Softmax { masked: true, zero_nan };
                graph.nodes[i].inputs = vec![scores, mask];
                graph.nodes.remove(s);
                return true;
            }
            _ => {}
        }
    }
    false
}

/// `LayerNorm(pick(v))`, the pick moving `v`'s first axis (the features of a features-first
/// value, `[F, R..]`) last: `pick(LayerNorm_columns(v))`, which normalizes `v` down its columns.
/// The pick then meets the features-first pick after the normalization (the next linear layers'
/// input) and the two cancel (`compose_moves`): BERT's layers move no rows at all.
fn layer_norm_before_pick(graph: &mut Graph) -> bool {
    let transposes = |sources: &[usize], features: usize| {
        let rows = sources.len() / features.max(1);
        features > 0
            && sources.len() == rows * features
            && sources.iter().enumerate().all(|(i, &s)| s == i % features * rows + i / features)
    };
    let candidates: Vec<(usize, usize)> = (0..graph.nodes.len())
        .filter_map(|i| {
            let Op::LayerNorm { ref scale, columns: false, .. } = graph.nodes[i].op else { return None };
            let p = producer(graph, &graph.nodes[i].inputs[0], i)?;
            let Op::Pick { ref sources, ref shape } = graph.nodes[p].op else { return None };
            (shape.last() == Some(&scale.len()) && transposes(sources, scale.len())).then_some((i, p))
        })
        .collect();
    if candidates.is_empty() {
        return false;
    }
    let Ok(shapes) = graph.infer_shapes() else { return false };
    for (i, p) in candidates {
        let v = graph.nodes[p].inputs[0].clone();
        let Op::LayerNorm { ref scale, .. } = graph.nodes[i].op else { continue };
        if shapes.iter().find(|(name, _)| *name == v).map(|(_, s)| s.first()) != Some(Some(&scale.len())) {
            continue;
        }
        let mut norm = graph.nodes.remove(i);
        let Op::LayerNorm { ref mut columns, .. } = norm.op else { unreachable!("a LayerNorm") };
        *columns = true;
        let mut pick = graph.nodes[p].clone();
        let normalized = format!("{}.before_pick", norm.output);
        pick.name = format!("{}.rows_first", norm.name);
        pick.inputs = vec![normalized.clone()];
        pick.output = std::mem::replace(&mut norm.output, normalized);
        norm.inputs = vec![v];
        graph.nodes.insert(i, pick);
        graph.nodes.insert(i, norm);
        if consumers(graph, &graph.nodes[p].output) == 0 {
            graph.nodes.remove(p);
        }
        return true;
    }
    false
}

/// `Add(pick(c), r)`, `c` a 1x1 convolution's output, where an earlier pick `g` of `r` is its
/// inverse (`pick(g(r)) == r`, the features-first copy of a residual stream that the next linear
/// layers read): `pick(Add(c, g(r)))`, so that the convolution adds the residual itself
/// (`compile::fuse_residuals`) instead of a pass over the rows.
fn residual_before_pick(graph: &mut Graph) -> bool {
    for i in 0..graph.nodes.len() {
        let Op::Add { act: crate::graph::Activation::None } = graph.nodes[i].op else { continue };
        for side in 0..2 {
            let (x, r) = (graph.nodes[i].inputs[side].clone(), graph.nodes[i].inputs[1 - side].clone());
            let Some(p) = producer(graph, &x, i) else { continue };
            let Op::Pick { sources: ref pick, .. } = graph.nodes[p].op else { continue };
            let Some(q) = producer(graph, &graph.nodes[p].inputs[0], p) else { continue };
            let conv = matches!(&graph.nodes[q].op, Op::Conv { weight, window, .. } if weight.quant.is_none() && window.is_pointwise());
            if !conv || consumers(graph, &x) != 1 || consumers(graph, &graph.nodes[q].output) != 1 {
                continue;
            }
            // The inverse pick of `r`, made before the pick of the convolution's output.
            let inverse = graph.nodes[..p].iter().position(|n| {
                matches!(&n.op, Op::Pick { sources, .. }
                    if n.inputs == [r.clone()] && sources.len() == pick.len() && pick.iter().enumerate().all(|(e, &s)| sources.get(s) == Some(&e)))
            });
            let Some(g) = inverse else { continue };
            let Op::Pick { shape: ref g_shape, .. } = graph.nodes[g].op else { continue };
            let Ok(shapes) = graph.infer_shapes() else { return false };
            if shapes.iter().find(|(v, _)| *v == graph.nodes[q].output).map(|(_, s)| s) != Some(g_shape) {
                continue;
            }
            let (sum, conv_out, features_first) =
                (format!("{}.before_pick", graph.nodes[i].output), graph.nodes[q].output.clone(), graph.nodes[g].output.clone());
            let add = graph.nodes.remove(i);
            graph.nodes[p].inputs = vec![sum.clone()];
            graph.nodes[p].output = add.output;
            graph.nodes.insert(p, Node { name: add.name, op: add.op, inputs: vec![conv_out, features_first], output: sum });
            return true;
        }
    }
    false
}

/// `Where(IsNaN(x), 0, x)`, the condition read only there -> `ZeroNaN(x)`.
fn fuse_zero_nan(graph: &mut Graph) -> bool {
    for i in 0..graph.nodes.len() {
        let Op::Where { x: Some(zero), y: None } = &graph.nodes[i].op else { continue };
        let [condition, x] = graph.nodes[i].inputs.clone().try_into().unwrap_or_default();
        if zero.values != [0.0] || condition.is_empty() || consumers(graph, &condition) != 1 {
            continue;
        }
        let Some(c) = producer(graph, &condition, i) else { continue };
        if graph.nodes[c].op != Op::Unary(Unary::IsNaN(IsNaN)) || graph.nodes[c].inputs[0] != x {
            continue;
        }
        graph.nodes[i].op = Op::Unary(Unary::ZeroNaN(ZeroNaN));
        graph.nodes[i].inputs = vec![x];
        graph.nodes.remove(c);
        return true;
    }
    false
}

/// A node equal to an earlier one (the same operator on the same values: a move of a value made
/// twice, BERT's attention mask made again in every layer): its readers read the earlier one's
/// output instead.
fn share_nodes(graph: &mut Graph) -> bool {
    for i in 0..graph.nodes.len() {
        let node = &graph.nodes[i];
        if graph.output == node.output {
            continue;
        }
        let Some(j) = graph.nodes[..i].iter().position(|e| e.inputs == node.inputs && e.op == node.op) else { continue };
        let (gone, kept) = (node.output.clone(), graph.nodes[j].output.clone());
        graph.nodes.remove(i);
        for n in &mut graph.nodes[i..] {
            n.inputs.iter_mut().filter(|v| **v == gone).for_each(|v| *v = kept.clone());
        }
        return true;
    }
    false
}

/// The node writing `value`, before `before`.
fn producer(graph: &Graph, value: &str, before: usize) -> Option<usize> {
    graph.nodes[..before].iter().rposition(|n| n.output == value)
}

/// The one constant of a `Binary` of `kind` on one value, if it is a scalar: (input, constant).
fn scalar_binary(node: &Node, kind: BinaryKind) -> Option<(&str, f32)> {
    match &node.op {
        Op::Binary { kind: k, constant: Some(c), .. } if *k == kind && c.values.len() == 1 => Some((&node.inputs[0], c.values[0])),
        _ => None,
    }
}

/// `Mul(Mul(x, Add(Erf(Div(x, sqrt 2)), 1)), 0.5)` (or with 0.5 in the first product) -> `Gelu(x)`.
fn fuse_gelu(graph: &mut Graph) -> bool {
    let close = |a: f32, b: f32| (a - b).abs() <= 1e-6 * b.abs();
    for i in 0..graph.nodes.len() {
        let Some((product, half)) = scalar_binary(&graph.nodes[i], BinaryKind::Mul) else { continue };
        let Some(p) = producer(graph, product, i) else { continue };
        if !close(half, 0.5) || consumers(graph, product) != 1 {
            continue;
        }
        let Op::Binary { kind: BinaryKind::Mul, constant: None, .. } = graph.nodes[p].op else { continue };
        // One factor is `x`, the other `1 + erf(x / sqrt 2)`.
        let factors = graph.nodes[p].inputs.clone();
        let chain = |sum: &str, x: &str| -> Option<Vec<usize>> {
            let a = producer(graph, sum, p)?;
            let (erf_out, one) = scalar_binary(&graph.nodes[a], BinaryKind::Add)?;
            let e = producer(graph, erf_out, a)?;
            (graph.nodes[e].op == Op::Unary(Unary::Erf(Erf))).then_some(())?;
            let d = producer(graph, &graph.nodes[e].inputs[0], e)?;
            let scaled = match scalar_binary(&graph.nodes[d], BinaryKind::Div) {
                Some((input, c)) if close(c, std::f32::consts::SQRT_2) => input,
                _ => scalar_binary(&graph.nodes[d], BinaryKind::Mul).filter(|(_, c)| close(*c, std::f32::consts::FRAC_1_SQRT_2))?.0,
            };
            let single = [sum, erf_out, &graph.nodes[e].inputs[0]].iter().all(|v| consumers(graph, v) == 1);
            (close(one, 1.0) && scaled == x && single && !matches!(graph.nodes[d].op, Op::Binary { constant_first: true, .. }))
                .then(|| vec![a, e, d])
        };
        let found = chain(&factors[1], &factors[0]).map(|c| (c, 0)).or_else(|| chain(&factors[0], &factors[1]).map(|c| (c, 1)));
        let Some((mut dead, x_at)) = found else { continue };
        let x = factors[x_at].clone();
        graph.nodes[i].op = Op::Unary(Unary::Gelu(Gelu { tanh: false }));
        graph.nodes[i].inputs = vec![x];
        dead.push(p);
        dead.sort_unstable();
        for d in dead.into_iter().rev() {
            graph.nodes.remove(d);
        }
        return true;
    }
    false
}

/// For `nodes[i]` reading a pick of an fp32 1x1 convolution's output, each value read only there:
/// the pick's and the convolution's indices.
fn pick_of_conv(graph: &Graph, i: usize) -> Option<(usize, usize)> {
    move_of_conv(graph, i, false)
}

/// `pick_of_conv`, or with `reshape_too` a reshape of the convolution's output in place of the pick.
fn move_of_conv(graph: &Graph, i: usize, reshape_too: bool) -> Option<(usize, usize)> {
    let p = producer(graph, graph.nodes[i].inputs.first()?, i)?;
    let is_move = match graph.nodes[p].op {
        Op::Pick { .. } => true,
        Op::Reshape { .. } => reshape_too,
        _ => false,
    };
    if !is_move {
        return None;
    }
    let q = producer(graph, &graph.nodes[p].inputs[0], p)?;
    let fp32_conv = matches!(&graph.nodes[q].op, Op::Conv { weight, window, .. } if weight.quant.is_none() && window.is_pointwise());
    let single = consumers(graph, &graph.nodes[q].output) == 1 && consumers(graph, &graph.nodes[p].output) == 1;
    (fp32_conv && single).then_some((p, q))
}

/// Removes `nodes[i]`, folded into the convolution behind the pick `nodes[p]`, which writes its
/// output instead.
fn fold_into_pick(graph: &mut Graph, i: usize, p: usize) {
    let removed = graph.nodes.remove(i);
    graph.nodes[p].output = removed.output;
}

/// A constant added over the last axis of a pick that lays a 1x1 convolution's `[channels, 1,
/// rows]` output out as `[.., rows, channels]`: the convolution's bias.
fn fold_row_bias(graph: &mut Graph) -> bool {
    for i in 0..graph.nodes.len() {
        let Op::Binary { kind: BinaryKind::Add, constant: Some(c), .. } = &graph.nodes[i].op else { continue };
        let Some((p, q)) = pick_of_conv(graph, i) else { continue };
        let (Op::Pick { shape, sources }, Op::Conv { bias, .. }) = (&graph.nodes[p].op, &graph.nodes[q].op) else { continue };
        let (channels, last) = (bias.len(), *shape.last().unwrap_or(&0));
        let per_channel = c.shape.iter().rev().skip(1).all(|&d| d == 1) && c.values.len() == channels;
        let rows = sources.len() / channels.max(1);
        // Output element `i` must read channel `i % channels`.
        let rows_first = last == channels && sources.iter().enumerate().all(|(i, &s)| s / rows.max(1) == i % channels);
        if !(per_channel && rows_first) {
            continue;
        }
        let add = c.values.clone();
        if let Op::Conv { bias, .. } = &mut graph.nodes[q].op {
            bias.iter_mut().zip(add).for_each(|(b, a)| *b += a);
        }
        fold_into_pick(graph, i, p);
        return true;
    }
    false
}

/// A scalar product after a pick or reshape of a 1x1 convolution's output: the convolution's
/// weights and bias scaled instead.
fn fold_row_scale(graph: &mut Graph) -> bool {
    for i in 0..graph.nodes.len() {
        let Some((_, factor)) = scalar_binary(&graph.nodes[i], BinaryKind::Mul) else { continue };
        let Some((p, q)) = move_of_conv(graph, i, true) else { continue };
        let Op::Conv { weight, bias, act: crate::graph::Activation::None, .. } = &mut graph.nodes[q].op else { continue };
        if !factor.is_finite() {
            continue;
        }
        weight.data.iter_mut().for_each(|w| *w *= factor);
        bias.iter_mut().for_each(|b| *b *= factor);
        fold_into_pick(graph, i, p);
        return true;
    }
    false
}

/// `f(pick(x))` is `pick(f(x))` for an element-wise `f`: moved before the pick, `f` can run inside
/// the convolution that writes `x` (`compile::fusable_unary`).
fn unary_before_pick(graph: &mut Graph) -> bool {
    for i in 0..graph.nodes.len() {
        let Op::Unary(_) = graph.nodes[i].op else { continue };
        let Some((p, _)) = pick_of_conv(graph, i) else { continue };
        // conv -> f -> pick, under the names the values had.
        let f = graph.nodes.remove(i);
        let pick_input = graph.nodes[p].inputs[0].clone();
        let moved = format!("{}.before_pick", f.output);
        graph.nodes[p].inputs = vec![moved.clone()];
        graph.nodes[p].output = f.output.clone();
        graph.nodes.insert(p, Node { name: f.name, op: f.op, inputs: vec![pick_input], output: moved });
        return true;
    }
    false
}

/// An operator that only moves a sample's elements, as the map from each output element to the
/// input element it copies (`None` for a reshape or flatten, which keep the order).
fn moves(op: &Op, input: &[usize]) -> Option<Option<Vec<usize>>> {
    match op {
        Op::Pick { sources, .. } => Some(Some(sources.clone())),
        Op::Transpose { .. } | Op::Select { .. } => {
            Some(crate::layout::sources(op, input).map(|s| s.into_iter().map(|v| v as usize).collect()))
        }
        Op::Reshape { .. } | Op::Flatten => Some(None),
        _ => None,
    }
}

/// Two element moves in a row, the first's output read by the second only, as one `Pick` (or a
/// `Reshape` where together they keep the order), at least one of them a pick, or both reshapes. Every such pair
/// in one sweep: shapes are inferred once (a merge changes no surviving value's shape).
fn compose_moves(graph: &mut Graph) -> bool {
    let is_move = |op: &Op| matches!(op, Op::Pick { .. } | Op::Transpose { .. } | Op::Select { .. } | Op::Reshape { .. } | Op::Flatten);
    let candidate = |graph: &Graph, i: usize| -> Option<usize> {
        let p = producer(graph, graph.nodes[i].inputs.first()?, i)?;
        let any_pick = matches!(graph.nodes[i].op, Op::Pick { .. }) || matches!(graph.nodes[p].op, Op::Pick { .. });
        let reshapes = [i, p].iter().all(|&n| matches!(graph.nodes[n].op, Op::Reshape { .. } | Op::Flatten));
        let fits = (any_pick || reshapes) && is_move(&graph.nodes[i].op) && is_move(&graph.nodes[p].op) && graph.nodes[i].inputs.len() == 1;
        (fits && consumers(graph, &graph.nodes[p].output) == 1).then_some(p)
    };
    if !(0..graph.nodes.len()).any(|i| candidate(graph, i).is_some()) {
        return false;
    }
    let Ok(shapes) = graph.infer_shapes() else { return false };
    let shapes: std::collections::HashMap<String, Vec<usize>> = shapes.into_iter().collect();
    let mut merged = false;
    let mut i = 0;
    while i < graph.nodes.len() {
        let Some(p) = candidate(graph, i) else {
            i += 1;
            continue;
        };
        let (x, mid, out) = (&shapes[&graph.nodes[p].inputs[0]], &shapes[&graph.nodes[p].output], &shapes[&graph.nodes[i].output]);
        let (Some(first), Some(second)) = (moves(&graph.nodes[p].op, x), moves(&graph.nodes[i].op, mid)) else {
            i += 1;
            continue;
        };
        let n: usize = out.iter().product();
        let sources: Vec<usize> = match (first, second) {
            (Some(a), Some(b)) => b.iter().map(|&s| a[s]).collect(),
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => (0..n).collect(),
        };
        let identity = sources.len() == x.iter().product::<usize>() && sources.iter().enumerate().all(|(k, &s)| k == s);
        let op = if identity { Op::Reshape { shape: out.clone() } } else { Op::Pick { shape: out.clone(), sources } };
        let first = graph.nodes.remove(p);
        let node = &mut graph.nodes[i - 1];
        node.op = op;
        node.inputs = first.inputs;
        merged = true;
        i = p;
    }
    merged
}

/// Whether a move (output element `e` copies input element `sources[e]`, of `inputs`) swaps the
/// last two axes: it writes `shape` (`[.., p, q]`) from its input viewed as `[.., q, p]`, or with
/// `reading`, it reads `shape` and writes it as `[.., q, p]` (any shape of those elements).
fn swaps_last_axes(sources: &[usize], inputs: usize, shape: &[usize], reading: bool) -> bool {
    let r = shape.len();
    if r < 2 || sources.len() != inputs || shape.iter().product::<usize>() != inputs || inputs == 0 {
        return false;
    }
    let (p, q) = (shape[r - 2], shape[r - 1]);
    let plane = p * q;
    sources.iter().enumerate().all(|(e, &s)| {
        let (b, at) = (e / plane, e % plane);
        // Element (i, j) of the `[.., p, q]` side is element (j, i) of the other.
        let source = if reading { b * plane + (at % p) * q + at / p } else { b * plane + (at % q) * p + at / q };
        s == source
    })
}

/// Attention's per-head transposes as strides of its products: a batched product reading a move
/// that swaps the last two axes of its input reads the input itself, stored swapped; one whose
/// only reader is such a move writes its output swapped. The moves become reshapes, which share
/// their input's memory (`exec::shared_regions`).
fn swap_into_products(graph: &mut Graph) -> bool {
    if !graph.nodes.iter().any(|n| matches!(n.op, Op::BatchMatMul { .. })) {
        return false;
    }
    // One sweep: a change alters only the shapes of a move and of a product read by nothing else.
    let Ok(shapes) = graph.infer_shapes() else { return false };
    let shapes: std::collections::HashMap<String, Vec<usize>> = shapes.into_iter().collect();
    let numel = |v: &str| shapes[v].iter().product::<usize>();
    let mut changed = false;
    for i in 0..graph.nodes.len() {
        let Op::BatchMatMul { mut swapped } = graph.nodes[i].op else { continue };
        // An operand made by a swapping move read only here.
        for (k, swap) in [&mut swapped.a, &mut swapped.b].into_iter().enumerate() {
            let Some(p) = producer(graph, &graph.nodes[i].inputs[k], i) else { continue };
            let (move_in, move_out) = (&graph.nodes[p].inputs[0], &graph.nodes[p].output);
            if *swap || graph.nodes[p].inputs.len() != 1 || consumers(graph, move_out) != 1 {
                continue;
            }
            let Some(Some(sources)) = moves(&graph.nodes[p].op, &shapes[move_in]) else { continue };
            let out = &shapes[move_out];
            if swaps_last_axes(&sources, numel(move_in), out, false) {
                let mut stored = out.clone();
                let r = stored.len();
                stored.swap(r - 2, r - 1);
                graph.nodes[p].op = Op::Reshape { shape: stored };
                *swap = true;
            }
        }
        // The output's one reader, a move that swaps it.
        let product = &graph.nodes[i].output;
        let reader = graph.nodes.iter().position(|n| n.inputs.contains(product));
        if let Some(c) =
            reader.filter(|&c| !swapped.y && consumers(graph, product) == 1 && graph.output != *product && graph.nodes[c].inputs.len() == 1)
            && let Some(Some(sources)) = moves(&graph.nodes[c].op, &shapes[product])
            && swaps_last_axes(&sources, numel(product), &shapes[product], true)
        {
            graph.nodes[c].op = Op::Reshape { shape: shapes[&graph.nodes[c].output].clone() };
            swapped.y = true;
        }
        if graph.nodes[i].op != (Op::BatchMatMul { swapped }) {
            graph.nodes[i].op = Op::BatchMatMul { swapped };
            changed = true;
        }
    }
    changed
}
