//! Graph rewrites applied to every loaded model: fold a per-channel affine (an unfolded
//! BatchNormalization) into the linear layer or convolution before it, fuse ReLU into the
//! operator that produces its input, run a quantized expansion before a depth-wise convolution in
//! fp32, and drop an activation's quantize-dequantize pair that only int8 layers quantizing their
//! input alike read. Each computes the same function (the fp32 expansion up to the order of its
//! sums).

use crate::graph::{Activation, BinaryKind, Graph, Node, Op, Unary};
use crate::ops::{Sigmoid, Silu};

/// Runs every pass until nothing changes.
pub fn optimize(graph: &mut Graph) {
    while fold_affine(graph)
        || fuse_relu(graph)
        || expansions_in_fp32(graph)
        || drop_qdq_before_int8(graph)
        || fuse_silu(graph)
        || crate::row_passes::optimize(graph)
    {}
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

/// A quantized 1x1 convolution between two quantize-dequantize pairs whose second pair only a
/// depth-wise convolution reads (an inverted residual block's expansion in a QDQ file) runs in
/// fp32 as written: its dequantized weights on the first pair's values, the second pair applied
/// to its outputs as it stores them. The compiler then runs it inside the depth-wise convolution,
/// chunk by chunk of channels (`compile::fuse_expansions`), so the expanded image is never
/// written to memory: in int8 MobileNetV2 90%'s 16 -> 96 expansion at 112x112 alone had taken
/// longer than the fp32 file's expansion and depth-wise convolution together (7.2 against 6.0 ms
/// at batch 16, results/int8-mobilenet.md). Returns whether it changed a layer.
fn expansions_in_fp32(graph: &mut Graph) -> bool {
    let producer = |graph: &Graph, value: &str| graph.nodes.iter().position(|n| n.output == value);
    let reader = |graph: &Graph, value: &str| {
        let readers: Vec<usize> = (0..graph.nodes.len()).filter(|&j| graph.nodes[j].inputs.iter().any(|i| i == value)).collect();
        (readers.len() == 1 && graph.output != value).then(|| readers[0])
    };
    for i in 0..graph.nodes.len() {
        let Op::Conv { weight, window, .. } = &graph.nodes[i].op else { continue };
        let Some(q) = weight.quant.as_ref().filter(|_| window.is_pointwise()) else { continue };
        let input_pair = producer(graph, &graph.nodes[i].inputs[0]).map(|p| &graph.nodes[p].op);
        let quantized_alike =
            matches!(input_pair, Some(Op::QuantDequant { scale, zero }) if *scale == q.input_scale && *zero == q.input_zero);
        let output_pair = reader(graph, &graph.nodes[i].output).filter(|&j| matches!(graph.nodes[j].op, Op::QuantDequant { .. }));
        let depthwise = output_pair.and_then(|j| reader(graph, &graph.nodes[j].output)).is_some_and(|k| {
            matches!(&graph.nodes[k].op, Op::GroupConv { weight, groups, .. } if weight.shape.get(1) == Some(&1) && *groups == weight.rows())
        });
        if quantized_alike && depthwise {
            let Op::Conv { weight, .. } = &mut graph.nodes[i].op else { unreachable!("matched above") };
            weight.quant = None;
            return true;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Quant, Weight, Window};

    fn window(k: usize) -> Window {
        Window { kernel: [k, k], stride: [1, 1], pads: [k / 2; 4], dilation: [1, 1], ceil_mode: false }
    }

    fn node(name: &str, op: Op, input: &str) -> Node {
        Node { name: name.into(), op, inputs: vec![input.into()], output: name.into() }
    }

    /// A quantized 1x1 convolution from 4 to 8 channels between two quantize-dequantize pairs,
    /// the second read by `reader`.
    fn expansion(reader: Op) -> Graph {
        let quant = Quant { scales: vec![0.01; 8], input_scale: 0.02, input_zero: 3 };
        let weight = Weight { shape: vec![8, 4, 1, 1], data: vec![0.01; 32], quant: Some(quant) };
        let nodes = vec![
            node("in_pair", Op::QuantDequant { scale: 0.02, zero: 3 }, "x"),
            node("expand", Op::Conv { weight, bias: vec![0.0; 8], window: window(1), act: Activation::None }, "in_pair"),
            node("out_pair", Op::QuantDequant { scale: 0.05, zero: 0 }, "expand"),
            node("reader", reader, "out_pair"),
        ];
        Graph { input: "x".into(), input_shape: vec![4, 6, 6], output: "reader".into(), nodes, ports: None }
    }

    fn expansion_quantized(graph: &Graph) -> bool {
        graph.nodes.iter().any(|n| matches!(&n.op, Op::Conv { weight, .. } if weight.quant.is_some()))
    }

    fn depthwise() -> Op {
        Op::GroupConv {
            weight: Weight::dense(vec![8, 1, 3, 3], vec![0.1; 72]),
            bias: vec![0.0; 8],
            window: window(3),
            groups: 8,
            act: Activation::None,
        }
    }

    /// Compiled, the fp32 expansion applies the pair after it as it stores its outputs, inside the
    /// depth-wise convolution.
    #[test]
    fn the_fp32_expansion_runs_inside_the_depthwise_convolution_with_its_pair() {
        use crate::compile::{self, Exec, KernelPolicy, Options};
        use crate::ops::{FakeQuant, Unary};
        for policy in [KernelPolicy::Auto, KernelPolicy::Sparse, KernelPolicy::Dense] {
            let model = compile::compile(expansion(depthwise()), Options::new(policy).unwrap()).unwrap();
            let fused = model.layers.iter().find_map(|l| match &l.exec {
                Exec::GroupConv { expand: Some(m), .. } => Some(m),
                _ => None,
            });
            let m = fused.unwrap_or_else(|| panic!("{policy:?}: the expansion is not fused"));
            assert!(m.int8().is_none(), "{policy:?}");
            assert_eq!(m.post, Some(Unary::FakeQuant(FakeQuant { scale: 0.05, zero: 0 })), "{policy:?}");
        }
    }

    /// Read only by a depth-wise convolution, the expansion runs in fp32 with both pairs kept;
    /// read by a full convolution, it stays int8 (and its input pair goes).
    #[test]
    fn only_an_expansion_before_a_depthwise_convolution_runs_in_fp32() {
        let mut graph = expansion(depthwise());
        optimize(&mut graph);
        assert!(!expansion_quantized(&graph), "the expansion runs in fp32");
        assert_eq!(graph.nodes.iter().filter(|n| matches!(n.op, Op::QuantDequant { .. })).count(), 2, "both pairs stay");
        let full = Op::Conv {
            weight: Weight::dense(vec![8, 8, 3, 3], vec![0.1; 576]),
            bias: vec![0.0; 8],
            window: window(3),
            act: Activation::None,
        };
        let mut graph = expansion(full);
        optimize(&mut graph);
        assert!(expansion_quantized(&graph), "the expansion stays int8");
        assert_eq!(graph.nodes.iter().filter(|n| matches!(n.op, Op::QuantDequant { .. })).count(), 1, "its input pair goes");
    }
}
