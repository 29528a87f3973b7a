//! Graph rewrites applied to every loaded model: fold a per-channel affine (an unfolded
//! BatchNormalization) into the linear layer or convolution before it, fuse ReLU into the
//! operator that produces its input, and drop an activation's quantize-dequantize pair that only
//! int8 layers quantizing their input alike read. Each computes exactly the same function.

use crate::graph::{Activation, BinaryKind, Graph, Node, Op, Unary};
use crate::ops::{Sigmoid, Silu};

/// Runs every pass until nothing changes.
pub fn optimize(graph: &mut Graph) {
    while fold_affine(graph) || fuse_relu(graph) || drop_qdq_before_int8(graph) || fuse_silu(graph) || crate::row_passes::optimize(graph) {}
}

/// How many inputs of nodes read `value`, plus one where it is the graph's output.
pub(crate) fn consumers(graph: &Graph, value: &str) -> usize {
    graph.nodes.iter().flat_map(|n| &n.inputs).filter(|i| *i == value).count() + usize::from(graph.output == value)
}

/// Index of the node producing the single-consumer input of `nodes[i]`, if any.
fn sole_producer(graph: &Graph, i: usize) -> Option<usize> {
    let input = graph.nodes[i].inputs.first()?;
    let p = graph.nodes[..i].iter().rposition(|n| &n.output == input)?;
    (consumers(graph, input) == 1).then_some(p)
}

/// Removes `nodes[i]` and lets `nodes[producer]` write its output instead.
fn merge_into_producer(graph: &mut Graph, producer: usize, i: usize) {
    let removed: Node = graph.nodes.remove(i);
    graph.nodes[producer].output = removed.output;
}

fn fold_affine(graph: &mut Graph) -> bool {
    for i in 0..graph.nodes.len() {
        let Op::Affine { scale, shift, act } = &graph.nodes[i].op else { continue };
        let Some(p) = sole_producer(graph, i) else { continue };
        let (scale, shift, act) = (scale.clone(), shift.clone(), *act);
        let (Op::Linear { weight, bias, act: prev @ Activation::None }
        | Op::Conv { weight, bias, act: prev @ Activation::None, .. }
        | Op::GroupConv { weight, bias, act: prev @ Activation::None, .. }) = &mut graph.nodes[p].op
        else {
            continue;
        };
        if scale.len() != weight.rows() {
            continue;
        }
        let cols = weight.cols();
        for (r, (s, t)) in scale.iter().zip(&shift).enumerate() {
            weight.data[r * cols..(r + 1) * cols].iter_mut().for_each(|w| *w *= s);
            bias[r] = bias[r] * s + t;
            // A quantized row keeps its int8 values: the scale absorbs the factor.
            if let Some(q) = weight.quant.as_mut() {
                q.scales[r] *= s;
            }
        }
        *prev = act;
        merge_into_producer(graph, p, i);
        return true;
    }
    false
}

/// A `QuantDequant` whose every reader is an int8 layer with the same input scale and zero point:
/// those layers quantize the value themselves, and quantizing a dequantized code gives the code
/// back, so they read the pair's input instead and the pair goes.
fn drop_qdq_before_int8(graph: &mut Graph) -> bool {
    for i in 0..graph.nodes.len() {
        let Op::QuantDequant { scale, zero } = graph.nodes[i].op else { continue };
        let out = graph.nodes[i].output.clone();
        let readers: Vec<usize> = (0..graph.nodes.len()).filter(|&j| graph.nodes[j].inputs.contains(&out)).collect();
        let same_quantization = |j: &usize| {
            graph.nodes[*j].inputs.len() == 1
                && graph.nodes[*j]
                    .op
                    .weight()
                    .and_then(|w| w.quant.as_ref())
                    .is_some_and(|q| q.input_scale == scale && q.input_zero == zero)
        };
        if graph.output == out || readers.is_empty() || !readers.iter().all(same_quantization) {
            continue;
        }
        let source = graph.nodes[i].inputs[0].clone();
        for j in readers {
            graph.nodes[j].inputs[0] = source.clone();
        }
        graph.nodes.remove(i);
        return true;
    }
    false
}

/// `x * Sigmoid(x)` (how exporters write SiLU) as one element-wise `Silu`, where the sigmoid's
/// output has no other reader.
fn fuse_silu(graph: &mut Graph) -> bool {
    for i in 0..graph.nodes.len() {
        let Op::Binary { kind: BinaryKind::Mul, constant: None, .. } = graph.nodes[i].op else { continue };
        let inputs = graph.nodes[i].inputs.clone();
        let gate = graph.nodes[..i].iter().rposition(|n| {
            n.op == Op::Unary(Unary::Sigmoid(Sigmoid))
                && inputs.contains(&n.output)
                && inputs.contains(&n.inputs[0])
                && n.inputs[0] != n.output
        });
        let Some(s) = gate else { continue };
        if consumers(graph, &graph.nodes[s].output) != 1 {
            continue;
        }
        let x = graph.nodes[s].inputs[0].clone();
        graph.nodes[i].op = Op::Unary(Unary::Silu(Silu));
        graph.nodes[i].inputs = vec![x];
        graph.nodes.remove(s);
        return true;
    }
    false
}

fn fuse_relu(graph: &mut Graph) -> bool {
    for i in 0..graph.nodes.len() {
        if graph.nodes[i].op != Op::Relu {
            continue;
        }
        let Some(p) = sole_producer(graph, i) else { continue };
        match &mut graph.nodes[p].op {
            Op::Linear { act, .. } | Op::Conv { act, .. } | Op::GroupConv { act, .. } | Op::Affine { act, .. } | Op::Add { act }
                if *act == Activation::None =>
            {
                *act = Activation::Relu;
                merge_into_producer(graph, p, i);
                return true;
            }
            _ => {}
        }
    }
    false
}
