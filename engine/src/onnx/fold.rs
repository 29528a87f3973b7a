//! Constant folding at import: an operator whose inputs are all constants becomes a constant. This
//! is mostly shape arithmetic: with a dynamic batch, PyTorch's exporter computes a Reshape's target
//! as `Shape -> Gather -> Unsqueeze -> Concat` (and `Mul` for products of dimensions). A value that
//! depends on the batch size is evaluated twice, with the batch taken as `BATCH` and as
//! `OTHER_BATCH`, so that a Reshape can tell where the batch went.

use super::import::{Constant, attr_i, node_name};
use super::proto::{NodeProto, data_type};
use crate::error::{EngineError, Result};
use crate::graph::{BinaryKind, MAX_WEIGHT_ELEMENTS, Op, broadcast, checked_numel, is_permutation};
use crate::kernels::elementwise::truth;

/// The batch size a batch-dependent constant is evaluated with, and the other one.
pub(super) const BATCH: f32 = 1.0;
pub(super) const OTHER_BATCH: f32 = 2.0;

/// `[BATCH, dims...]` for a value of per-sample shape `dims`, as ONNX's Shape (with its `start` and
/// `end` attributes) returns it.
pub(super) fn shape_of_value(node: &NodeProto, dims: &[usize]) -> Result<Constant> {
    let full = |batch: f32| -> Vec<f32> { [batch].into_iter().chain(dims.iter().map(|&d| d as f32)).collect() };
    let rank = dims.len() as i64 + 1;
    let clamp = |v: i64| (if v < 0 { v + rank } else { v }).clamp(0, rank) as usize;
    let (start, end) = (clamp(attr_i(node, "start", 0)), clamp(attr_i(node, "end", rank)));
    let part = |v: Vec<f32>| v[start..end.max(start)].to_vec();
    let mut c = Constant::new(vec![end.saturating_sub(start)], part(full(BATCH)), data_type::INT64);
    let other = part(full(OTHER_BATCH));
    c.other_batch = (other != c.values).then_some(other);
    Ok(c)
}

/// `node` evaluated on constant `inputs` (`None` for an omitted optional input), with batch-
/// dependent inputs evaluated a second time with their other-batch values.
pub(super) fn fold(node: &NodeProto, inputs: &[Option<&Constant>]) -> Result<Constant> {
    let name = node_name(node);
    let mut value = eval(node, inputs).map_err(|e| EngineError::graph(&name, e))?;
    if inputs.iter().flatten().any(|c| c.other_batch.is_some()) {
        let other: Vec<Option<Constant>> = inputs
            .iter()
            .map(|c| c.map(|c| Constant::new(c.dims.clone(), c.other_batch.clone().unwrap_or_else(|| c.values.clone()), c.data_type)))
            .collect();
        let again = eval(node, &other.iter().map(Option::as_ref).collect::<Vec<_>>()).map_err(|e| EngineError::graph(&name, e))?;
        if again.dims != value.dims {
            return Err(EngineError::graph(&name, format!("a constant {} is not supported", super::import::BATCH_DEPENDENT)));
        }
        value.other_batch = (again.values != value.values).then_some(again.values);
    }
    Ok(value)
}

type Folded = std::result::Result<Constant, String>;

fn eval(node: &NodeProto, inputs: &[Option<&Constant>]) -> Folded {
    let input = |i: usize| inputs.get(i).copied().flatten().ok_or_else(|| format!("missing input {i}"));
    let x = input(0)?;
    let axis_of = |rank: usize, default: i64| normalize(attr_i(node, "axis", default), rank);
    match node.op_type.as_str() {
        "Shape" => {
            let dims = x.dims.iter().map(|&d| d as f32).collect::<Vec<_>>();
            Ok(Constant::new(vec![dims.len()], dims, data_type::INT64))
        }
        "Gather" => {
            let axis = axis_of(x.dims.len(), 0)?;
            let indices = input(1)?;
            let ix = indices.values.iter().map(|&i| index(i, x.dims[axis])).collect::<std::result::Result<Vec<_>, _>>()?;
            let picked = select_along(x, axis, &ix)?;
            let dims = [&x.dims[..axis], &indices.dims[..], &x.dims[axis + 1..]].concat();
            Ok(Constant::new(dims, picked.values, x.data_type))
        }
        "Unsqueeze" | "Squeeze" => {
            let axes = axes(node, inputs)?;
            let dims = if node.op_type == "Unsqueeze" { unsqueezed(&x.dims, &axes)? } else { squeezed(&x.dims, &axes)? };
            Ok(Constant::new(dims, x.values.clone(), x.data_type))
        }
        "Concat" => {
            let axis = axis_of(x.dims.len(), 0)?;
            let parts: Vec<&Constant> = (0..inputs.len()).map(&input).collect::<std::result::Result<_, _>>()?;
            concat(&parts, axis)
        }
        "Cast" => {
            let to = attr_i(node, "to", data_type::FLOAT as i64) as i32;
            // To bool: non-zero is true (0.5 too); to another integer type: toward zero.
            let values = x.values.iter().map(|&v| match to {
                data_type::FLOAT | data_type::DOUBLE => v,
                data_type::BOOL => truth(v != 0.0),
                _ => v.trunc(),
            });
            let values = values.collect();
            Ok(Constant::new(x.dims.clone(), values, to))
        }
        "Slice" => {
            let ranges = slice_ranges(node, inputs, &x.dims, true)?;
            let mut value = Constant::new(x.dims.clone(), x.values.clone(), x.data_type);
            for (axis, ix) in ranges {
                value = select_along(&value, axis, &ix)?;
            }
            Ok(value)
        }
        "Reshape" => {
            let target = input(1)?;
            let dims = reshaped(&x.dims, &target.values, attr_i(node, "allowzero", 0) != 0)?;
            Ok(Constant::new(dims, x.values.clone(), x.data_type))
        }
        "Transpose" => {
            let default: Vec<usize> = (0..x.dims.len()).rev().collect();
            let perm = match node.attribute.iter().find(|a| a.name == "perm") {
                Some(a) => a.ints.iter().map(|&p| normalize(p, x.dims.len())).collect::<std::result::Result<Vec<_>, _>>()?,
                None => default,
            };
            if !is_permutation(&perm, x.dims.len()) {
                return Err(format!("perm {perm:?} of a {}-D constant", x.dims.len()));
            }
            let sources = crate::layout::sources(&Op::Transpose { perm: perm.clone() }, &x.dims).expect("a transpose");
            let values = sources.iter().map(|&s| x.values[s as usize]).collect();
            Ok(Constant::new(perm.iter().map(|&a| x.dims[a]).collect(), values, x.data_type))
        }
        "ConstantOfShape" => {
            let dims: Vec<usize> = x.values.iter().map(|&d| d.max(0.0) as usize).collect();
            let n = checked_numel(&dims, MAX_WEIGHT_ELEMENTS).ok_or("too large")?;
            let (value, data_type) = match node.attribute.iter().find(|a| a.name == "value").and_then(|a| a.t.as_ref()) {
                Some(t) => (super::tensor::decode(t, None)?.1.first().copied().unwrap_or(0.0), t.data_type),
                None => (0.0, data_type::FLOAT),
            };
            Ok(Constant::new(dims, vec![value; n], data_type))
        }
        "Range" => {
            let (start, limit, delta) = (x.values.first().copied(), input(1)?.values.first().copied(), input(2)?.values.first().copied());
            let (Some(start), Some(limit), Some(delta)) = (start, limit, delta) else { return Err("Range needs three scalars".into()) };
            let n = ((limit - start) / delta).ceil().max(0.0);
            if delta == 0.0 || n > MAX_WEIGHT_ELEMENTS as f32 {
                return Err(format!("Range from {start} to {limit} by {delta}"));
            }
            Ok(Constant::new(vec![n as usize], (0..n as usize).map(|i| start + i as f32 * delta).collect(), x.data_type))
        }
        "Expand" => {
            let shape: Vec<usize> = input(1)?.values.iter().map(|&d| d.max(1.0) as usize).collect();
            let ones = Constant::new(shape, vec![], x.data_type);
            elementwise(&[x, &ones], x.data_type, |v| v[0])
        }
        "Where" => elementwise(&[x, input(1)?, input(2)?], input(1)?.data_type, |v| if v[0] != 0.0 { v[1] } else { v[2] }),
        "Max" | "Min" => {
            let operands: Vec<&Constant> = (0..inputs.len()).map(&input).collect::<std::result::Result<_, _>>()?;
            let max = node.op_type == "Max";
            elementwise(&operands, x.data_type, |v| v.iter().copied().reduce(if max { f32::max } else { f32::min }).unwrap_or(0.0))
        }
        op => {
            let kind = BinaryKind::from_onnx(op).ok_or_else(|| format!("{op} of constants is not supported"))?;
            // Shape arithmetic on integers divides as integers do.
            let integer_division = kind == BinaryKind::Div && !matches!(x.data_type, data_type::FLOAT | data_type::DOUBLE);
            let data_type = if kind.is_boolean() { data_type::BOOL } else { x.data_type };
            elementwise(&[x, input(1)?], data_type, |v| {
                let r = kind.value(v[0], v[1]);
                if integer_division { r.trunc() } else { r }
            })
        }
    }
}

/// `f` of the operands' broadcast elements (NumPy rules); an operand without values (`Expand`'s
/// target) only takes part in the shape.
fn elementwise(operands: &[&Constant], data_type: i32, f: impl Fn(&[f32]) -> f32) -> Folded {
    let dims = operands[1..]
        .iter()
        .try_fold(operands[0].dims.clone(), |d, c| broadcast(&d, &c.dims))
        .ok_or_else(|| format!("shapes {:?} do not broadcast", operands.iter().map(|c| &c.dims).collect::<Vec<_>>()))?;
    let n = checked_numel(&dims, MAX_WEIGHT_ELEMENTS).ok_or("too large")?;
    let strides: Vec<Vec<usize>> = operands.iter().map(|c| crate::kernels::elementwise::broadcast_strides(&c.dims, dims.len())).collect();
    let mut v = vec![0.0; operands.len()];
    let values = (0..n)
        .map(|i| {
            for (k, c) in operands.iter().enumerate() {
                let (mut rest, mut at) = (i, 0);
                for d in (0..dims.len()).rev() {
                    at += (rest % dims[d]) * strides[k][d];
                    rest /= dims[d];
                }
                v[k] = c.values.get(at).copied().unwrap_or(0.0);
            }
            f(&v)
        })
        .collect();
    Ok(Constant::new(dims, values, data_type))
}

/// `axis` counted from the end where negative, within `rank`.
pub(super) fn normalize(axis: i64, rank: usize) -> std::result::Result<usize, String> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    usize::try_from(a).ok().filter(|&a| a < rank).ok_or_else(|| format!("axis {axis} of a {rank}-D value"))
}

/// An index into a dimension of `dim`, counted from the end where negative.
pub(super) fn index(i: f32, dim: usize) -> std::result::Result<usize, String> {
    let j = if i < 0.0 { i + dim as f32 } else { i };
    (j >= 0.0 && j < dim as f32 && j.fract() == 0.0).then_some(j as usize).ok_or_else(|| format!("index {i} outside a dimension of {dim}"))
}

/// The axes of Squeeze or Unsqueeze: the second input (opset 13) or the attribute.
pub(super) fn axes(node: &NodeProto, inputs: &[Option<&Constant>]) -> std::result::Result<Vec<i64>, String> {
    match inputs.get(1).copied().flatten() {
        Some(c) => Ok(c.values.iter().map(|&v| v as i64).collect()),
        None => Ok(node.attribute.iter().find(|a| a.name == "axes").map(|a| a.ints.clone()).unwrap_or_default()),
    }
}

/// `dims` with a 1 inserted at each of `axes` (counted in the output's rank).
pub(super) fn unsqueezed(dims: &[usize], axes: &[i64]) -> std::result::Result<Vec<usize>, String> {
    let rank = dims.len() + axes.len();
    let mut at: Vec<usize> = axes.iter().map(|&a| normalize(a, rank)).collect::<std::result::Result<_, _>>()?;
    at.sort_unstable();
    at.dedup();
    if at.len() != axes.len() {
        return Err(format!("repeated axes {axes:?}"));
    }
    let mut rest = dims.iter();
    Ok((0..rank).map(|a| if at.contains(&a) { 1 } else { *rest.next().expect("counted") }).collect())
}

/// `dims` without the axes `axes` (each of size 1), or without every 1 where `axes` is empty.
pub(super) fn squeezed(dims: &[usize], axes: &[i64]) -> std::result::Result<Vec<usize>, String> {
    let at: Vec<usize> = axes.iter().map(|&a| normalize(a, dims.len())).collect::<std::result::Result<_, _>>()?;
    if at.iter().any(|&a| dims[a] != 1) {
        return Err(format!("cannot squeeze axes {axes:?} of {dims:?}"));
    }
    Ok(dims.iter().enumerate().filter(|&(a, &d)| !(if at.is_empty() { d == 1 } else { at.contains(&a) })).map(|(_, &d)| d).collect())
}

/// ONNX Reshape's target `target` for a value of `dims`: 0 copies the dimension (unless
/// `allowzero`), one -1 takes what is left.
pub(super) fn reshaped(dims: &[usize], target: &[f32], allowzero: bool) -> std::result::Result<Vec<usize>, String> {
    let numel: usize = dims.iter().product();
    let mut out = Vec::with_capacity(target.len());
    let mut infer = None;
    for (i, &t) in target.iter().enumerate() {
        match t {
            -1.0 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            0.0 if !allowzero => out.push(*dims.get(i).ok_or_else(|| format!("0 at axis {i} of a {}-D value", dims.len()))?),
            t if t >= 1.0 && t.fract() == 0.0 && t <= MAX_WEIGHT_ELEMENTS as f32 => out.push(t as usize),
            t => return Err(format!("Reshape to {target:?}: {t} is not a dimension")),
        }
    }
    let known = checked_numel(&out, usize::MAX).unwrap_or(0);
    if let Some(i) = infer {
        if known == 0 || !numel.is_multiple_of(known) {
            return Err(format!("cannot reshape {dims:?} to {target:?}"));
        }
        out[i] = numel / known;
    }
    if checked_numel(&out, usize::MAX) != Some(numel) {
        return Err(format!("cannot reshape {dims:?} to {target:?}"));
    }
    Ok(out)
}

/// Per sliced axis of a value of `dims`, the coordinates ONNX's Slice keeps (inputs `starts`,
/// `ends`, `axes`, `steps` from opset 10, attributes before). With `whole_batch` false, axis 0 (the
/// batch) may only be kept whole.
pub(super) fn slice_ranges(
    node: &NodeProto,
    inputs: &[Option<&Constant>],
    dims: &[usize],
    whole_batch: bool,
) -> std::result::Result<Vec<(usize, Vec<usize>)>, String> {
    let list = |i: usize, attr: &str| -> Option<Vec<f32>> {
        match inputs.get(i).copied().flatten() {
            Some(c) => Some(c.values.clone()),
            None => node.attribute.iter().find(|a| a.name == attr).map(|a| a.ints.iter().map(|&v| v as f32).collect()),
        }
    };
    let starts = list(1, "starts").ok_or("Slice needs starts")?;
    let ends = list(2, "ends").ok_or("Slice needs ends")?;
    let axes = list(3, "axes").unwrap_or_else(|| (0..starts.len()).map(|a| a as f32).collect());
    let steps = list(4, "").unwrap_or_else(|| vec![1.0; starts.len()]);
    if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        return Err("Slice's starts, ends, axes and steps differ in length".into());
    }
    let mut ranges = Vec::new();
    for k in 0..starts.len() {
        let axis = normalize(axes[k] as i64, dims.len())?;
        let (start, end, step) = (starts[k] as f64, ends[k] as f64, steps[k] as f64);
        if axis == 0 && !whole_batch {
            if start == 0.0 && step == 1.0 && end >= i32::MAX as f64 {
                continue;
            }
            return Err("Slice along the batch axis is not supported".into());
        }
        let ix = slice_indices(dims[axis], start, end, step)?;
        ranges.push((axis, ix));
    }
    Ok(ranges)
}

/// The coordinates `start, start + step, ...` before `end` of a dimension of `dim`, clamped as
/// ONNX's Slice clamps them (negative values count from the end).
pub(super) fn slice_indices(dim: usize, start: f64, end: f64, step: f64) -> std::result::Result<Vec<usize>, String> {
    if dim == 0 || step == 0.0 || step.fract() != 0.0 {
        return Err(format!("Slice step {step}"));
    }
    let d = dim as f64;
    let from_end = |v: f64| if v < 0.0 { v + d } else { v };
    let (start, end) = (from_end(start), from_end(end));
    let (start, end) =
        if step > 0.0 { (start.clamp(0.0, d), end.clamp(0.0, d)) } else { (start.clamp(0.0, d - 1.0), end.clamp(-1.0, d - 1.0)) };
    let mut ix = Vec::new();
    let mut i = start;
    while (step > 0.0 && i < end) || (step < 0.0 && i > end) {
        ix.push(i as usize);
        i += step;
    }
    if ix.is_empty() {
        return Err(format!("Slice [{start}, {end}) by {step} of a dimension of {dim} keeps nothing"));
    }
    Ok(ix)
}

/// A selection of every coordinate of every axis of `dims`.
pub(super) fn whole(dims: &[usize]) -> Vec<Vec<usize>> {
    dims.iter().map(|&d| (0..d).collect()).collect()
}

/// The coordinates `ix` of `c` along `axis`.
fn select_along(c: &Constant, axis: usize, ix: &[usize]) -> Folded {
    let mut indices = whole(&c.dims);
    indices[axis] = ix.to_vec();
    let dims: Vec<usize> = indices.iter().map(Vec::len).collect();
    if checked_numel(&dims, MAX_WEIGHT_ELEMENTS).is_none() {
        return Err(format!("a constant of {dims:?} is too large"));
    }
    if dims.contains(&0) {
        return Ok(Constant::new(dims, Vec::new(), c.data_type));
    }
    let sources = crate::layout::sources(&Op::Select { indices }, &c.dims).expect("a selection");
    Ok(Constant::new(dims, sources.iter().map(|&s| c.values[s as usize]).collect(), c.data_type))
}

fn concat(parts: &[&Constant], axis: usize) -> Folded {
    let first = parts[0];
    let same = parts
        .iter()
        .all(|p| p.dims.len() == first.dims.len() && p.dims.iter().zip(&first.dims).enumerate().all(|(a, (x, y))| a == axis || x == y));
    if !same {
        return Err(format!("cannot join constants along axis {axis}"));
    }
    let outer: usize = first.dims[..axis].iter().product();
    let mut dims = first.dims.clone();
    dims[axis] = parts.iter().map(|p| p.dims[axis]).sum();
    if checked_numel(&dims, MAX_WEIGHT_ELEMENTS).is_none() {
        return Err(format!("a constant of {dims:?} is too large"));
    }
    let mut values = Vec::new();
    for o in 0..outer {
        for p in parts {
            let block: usize = p.dims[axis..].iter().product();
            values.extend_from_slice(&p.values[o * block..(o + 1) * block]);
        }
    }
    Ok(Constant::new(dims, values, first.data_type))
}
