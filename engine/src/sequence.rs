//! Shape rules of the operators that sequence models (BERT) bring: embeddings, layer
//! normalization, products of two activations, `Where` and element picks.

use crate::compile::Exec;
use crate::error::{EngineError, Result};
use crate::graph::{MAX_VALUE_ELEMENTS, Node, Op, Operand, all_finite, broadcast, checked_numel};
use crate::kernels::sequence::{Product, Swapped};

/// Per-sample output shape of a sequence operator `node` on input shapes `x` and `input(i)`,
/// checking its parameters.
pub fn output_shape(node: &Node, x: &[usize], input: impl Fn(usize) -> Result<Vec<usize>>) -> Result<Vec<usize>> {
    let name = node.name.as_str();
    let bad = |reason: String| Err(EngineError::graph(name, reason));
    match &node.op {
        Op::Pick { shape, sources } => {
            let numel: usize = x.iter().product();
            if checked_numel(shape, MAX_VALUE_ELEMENTS) != Some(sources.len()) || sources.iter().any(|&s| s >= numel) {
                return bad(format!("a pick of {} elements into {shape:?} from {x:?}", sources.len()));
            }
            Ok(shape.clone())
        }
        Op::Embed { table } => {
            let fits = table.shape.len() == 2 && checked_numel(&table.shape, usize::MAX) == Some(table.data.len());
            if !fits || table.shape.contains(&0) || !all_finite(&table.data) {
                return bad(format!("an embedding table of shape {:?} with {} values (all finite)", table.shape, table.data.len()));
            }
            Ok(x.iter().copied().chain([table.shape[1]]).collect())
        }
        Op::LayerNorm { scale, bias, epsilon, columns } => {
            let last = *(if *columns { x.first() } else { x.last() }).unwrap_or(&0);
            if scale.len() != last
                || bias.len() != last
                || !all_finite(scale)
                || !all_finite(bias)
                || !(epsilon.is_finite() && *epsilon >= 0.0)
            {
                return bad(format!(
                    "{} scales and {} biases (finite) for a normalized axis of {last}, epsilon {epsilon}",
                    scale.len(),
                    bias.len()
                ));
            }
            Ok(x.to_vec())
        }
        Op::BatchMatMul { swapped } => {
            let stored = input(1)?;
            if x.len() < 2 || stored.len() < 2 {
                return bad(format!("cannot multiply {x:?} by {stored:?}"));
            }
            let (a, b) = (unswapped(x, swapped.a), unswapped(&stored, swapped.b));
            let (ra, rb) = (a.len(), b.len());
            if a[ra - 1] != b[rb - 2] {
                return bad(format!("cannot multiply {a:?} by {b:?}"));
            }
            let mut out =
                broadcast(&a[..ra - 2], &b[..rb - 2]).ok_or_else(|| EngineError::graph(name, format!("cannot multiply {a:?} by {b:?}")))?;
            out.extend([a[ra - 2], b[rb - 1]]);
            Ok(unswapped(&out, swapped.y))
        }
        Op::Where { x: on, y: off } => {
            let mut next = 1;
            let mut operand = |c: &Option<Operand>| -> Result<Vec<usize>> {
                match c {
                    Some(c) => {
                        // Infinities are allowed: attention masks add -inf to the scores they hide.
                        if checked_numel(&c.shape, crate::graph::MAX_WEIGHT_ELEMENTS) != Some(c.values.len())
                            || c.values.iter().any(|v| v.is_nan())
                        {
                            return bad(format!("constant of shape {:?} with {} values (none NaN)", c.shape, c.values.len()));
                        }
                        let shape = c.per_sample(x.len());
                        shape
                            .map(<[usize]>::to_vec)
                            .ok_or_else(|| EngineError::graph(name, format!("constant {:?} would broadcast along the batch", c.shape)))
                    }
                    None => {
                        next += 1;
                        input(next - 1)
                    }
                }
            };
            let (a, b) = (operand(on)?, operand(off)?);
            broadcast(x, &a)
                .and_then(|s| broadcast(&s, &b))
                .ok_or_else(|| EngineError::graph(name, format!("shapes {x:?}, {a:?} and {b:?} do not broadcast")))
        }
        _ => unreachable!("not a sequence operator"),
    }
}

/// `shape` with its last two axes swapped where `swapped` (a product's matrix as it is stored, and
/// back: the swap is its own inverse). At least two axes.
fn unswapped(shape: &[usize], swapped: bool) -> Vec<usize> {
    let mut shape = shape.to_vec();
    let r = shape.len();
    if swapped {
        shape.swap(r - 2, r - 1);
    }
    shape
}

/// The executable form of a product of two values of per-sample shapes `a` and `b` as stored
/// (`swapped`): each output slice's operands, by the leading axes' broadcast.
pub fn batch_matmul(a: &[usize], b: &[usize], swapped: Swapped) -> Exec {
    let (a, b) = (unswapped(a, swapped.a), unswapped(b, swapped.b));
    let (a, b) = (&a[..], &b[..]);
    let (ra, rb) = (a.len(), b.len());
    let product = Product { m: a[ra - 2], k: a[ra - 1], n: b[rb - 1], swapped };
    let lead = broadcast(&a[..ra - 2], &b[..rb - 2]).expect("checked in infer_shapes");
    let strides = |s: &[usize], size: usize| {
        let mut st = crate::kernels::elementwise::broadcast_strides(s, lead.len());
        st.iter_mut().for_each(|v| *v *= size);
        st
    };
    let (sa, sb) = (strides(&a[..ra - 2], product.m * product.k), strides(&b[..rb - 2], product.k * product.n));
    let count: usize = lead.iter().product();
    let slices = (0..count)
        .map(|mut z| {
            let (mut at_a, mut at_b) = (0, 0);
            for d in (0..lead.len()).rev() {
                let i = z % lead[d];
                z /= lead[d];
                at_a += i * sa[d];
                at_b += i * sb[d];
            }
            (at_a, at_b)
        })
        .collect();
    Exec::BatchMatMul { product, slices }
}

/// Whether `mask` is `x`'s last axes (after leading 1s, at least the last axis), so that it
/// repeats over `x`'s other axes: element `i` of `x` meets element `i % mask's size` of it.
pub fn repeats_over_leading_axes(mask: &[usize], x: &[usize]) -> bool {
    let own = &mask[mask.iter().position(|&d| d != 1).unwrap_or(mask.len())..];
    !own.is_empty() && own.len() <= x.len() && x.ends_with(own)
}
