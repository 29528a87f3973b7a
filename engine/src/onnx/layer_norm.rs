//! The layer norm that PyTorch's exporter writes below opset 17 as nine nodes — `ReduceMean`,
//! `Sub`, `Pow` (or `Mul` of the difference by itself), `ReduceMean`, `Add` of epsilon, `Sqrt`,
//! `Div`, then `Mul` by the scale and `Add` of the bias — found in the file's nodes and replaced by
//! the one `LayerNormalization` node it computes, before import.

use super::import::{Constant, attr_i, constant_node};
use super::proto::{AttributeProto, NodeProto, attr_type, data_type};
use std::collections::HashMap;

/// `nodes` with every decomposed layer norm over the last axis replaced by one
/// LayerNormalization node (at the place of its last node); a missing scale is added to
/// `constants` as ones.
pub(super) fn fuse_decomposed(nodes: &[NodeProto], outputs: &[String], constants: &mut HashMap<String, Constant>) -> Vec<NodeProto> {
    let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        for input in &n.input {
            let readers = consumers.entry(input.as_str()).or_default();
            if readers.last() != Some(&i) {
                readers.push(i);
            }
        }
    }
    let constant_nodes: HashMap<&str, &NodeProto> =
        nodes.iter().filter(|n| n.op_type == "Constant").filter_map(|n| Some((n.output.first()?.as_str(), n))).collect();
    let finder = Finder { nodes, outputs, consumers, constant_nodes, constants };
    let mut fused: Vec<(Vec<usize>, NodeProto)> = Vec::new();
    let mut missing_scales = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        if let Some((chain, node, scale)) = finder.layer_norm(i, n) {
            fused.push((chain, node));
            missing_scales.extend(scale);
        }
    }
    for name in missing_scales {
        constants.insert(name, Constant::new(vec![1], vec![1.0], data_type::FLOAT));
    }
    let mut replaced: HashMap<usize, Option<NodeProto>> = HashMap::new();
    for (chain, node) in fused {
        let last = *chain.iter().max().expect("a chain has nodes");
        for i in chain {
            replaced.insert(i, None);
        }
        replaced.insert(last, Some(node));
    }
    nodes
        .iter()
        .enumerate()
        .filter_map(|(i, n)| match replaced.remove(&i) {
            Some(node) => node,
            None => Some(n.clone()),
        })
        .collect()
}

struct Finder<'a> {
    nodes: &'a [NodeProto],
    outputs: &'a [String],
    consumers: HashMap<&'a str, Vec<usize>>,
    /// The Constant nodes by output, decoded only where the pattern asks for a value.
    constant_nodes: HashMap<&'a str, &'a NodeProto>,
    constants: &'a HashMap<String, Constant>,
}

impl<'a> Finder<'a> {
    /// The one node that reads `value` (which is no graph output), if it is an `op` node.
    fn only_reader(&self, value: &str, op: &str) -> Option<(usize, &'a NodeProto)> {
        match self.consumers.get(value).map(Vec::as_slice) {
            Some(&[i]) if self.nodes[i].op_type == op && !self.outputs.iter().any(|o| o == value) => Some((i, &self.nodes[i])),
            _ => None,
        }
    }

    fn is_constant(&self, name: &str) -> bool {
        self.constants.contains_key(name) || self.constant_nodes.contains_key(name)
    }

    /// The values of constant `name` (an initializer or a Constant node's).
    fn values(&self, name: &str) -> Option<Vec<f32>> {
        match self.constants.get(name) {
            Some(c) => Some(c.values.clone()),
            None => constant_node(self.constant_nodes.get(name)?).ok().map(|c| c.values),
        }
    }

    /// A single value `name` holds, if it is a constant.
    fn scalar(&self, name: &str) -> Option<f32> {
        self.values(name).filter(|v| v.len() == 1).map(|v| v[0])
    }

    /// The input of `node` other than `value`, where `value` is one of its two inputs.
    fn other(node: &'a NodeProto, value: &str) -> Option<&'a str> {
        match node.input.as_slice() {
            [a, b] if a == value => Some(b),
            [a, b] if b == value => Some(a),
            _ => None,
        }
    }

    /// Where the one reader of `*out` is an `op` node with a constant, that constant's name: the
    /// node joins `chain` and its output becomes `*out`.
    fn by_constant(&self, out: &mut &'a str, op: &str, chain: &mut Vec<usize>) -> Option<&'a str> {
        let (i, node) = self.only_reader(out, op)?;
        let constant = Self::other(node, out).filter(|c| self.is_constant(c))?;
        chain.push(i);
        *out = node.output[0].as_str();
        Some(constant)
    }

    /// Whether `node` is a ReduceMean over the last axis that keeps it.
    fn mean_over_last_axis(&self, node: &NodeProto) -> bool {
        if node.op_type != "ReduceMean" || attr_i(node, "keepdims", 1) == 0 {
            return false;
        }
        let axes: Option<Vec<f32>> = match node.input.get(1).filter(|a| !a.is_empty()) {
            Some(a) => self.values(a),
            None => node.attribute.iter().find(|a| a.name == "axes").map(|a| a.ints.iter().map(|&v| v as f32).collect()),
        };
        axes.as_deref() == Some(&[-1.0])
    }

    /// The decomposed layer norm starting at node `i` (its first ReduceMean): the chain's node
    /// indices, the LayerNormalization node, and the name of a scale of ones to add if the chain
    /// has no `Mul`.
    fn layer_norm(&self, i: usize, mean: &'a NodeProto) -> Option<(Vec<usize>, NodeProto, Option<String>)> {
        if !self.mean_over_last_axis(mean) {
            return None;
        }
        let x = mean.input.first()?;
        let (sub_i, sub) = self.only_reader(&mean.output[0], "Sub")?;
        if sub.input.as_slice() != [x.clone(), mean.output[0].clone()] {
            return None;
        }
        let centered = sub.output[0].as_str();
        // The centered value is read twice: squared, and divided by the deviation.
        let readers = self.consumers.get(centered)?;
        let (square_i, div_i) = match *readers.as_slice() {
            [a, b] if self.nodes[a].op_type == "Div" => (b, a),
            [a, b] => (a, b),
            _ => return None,
        };
        let (square, div) = (&self.nodes[square_i], &self.nodes[div_i]);
        let squares = match square.op_type.as_str() {
            "Pow" => square.input.first().map(String::as_str) == Some(centered) && self.scalar(square.input.get(1)?) == Some(2.0),
            "Mul" => square.input.iter().all(|v| v == centered) && square.input.len() == 2,
            _ => false,
        };
        if !squares || div.op_type != "Div" || div.input.first().map(String::as_str) != Some(centered) {
            return None;
        }
        let (var_i, var) = self.only_reader(&square.output[0], "ReduceMean")?;
        if !self.mean_over_last_axis(var) {
            return None;
        }
        let (eps_i, add_eps) = self.only_reader(&var.output[0], "Add")?;
        let epsilon = self.scalar(Self::other(add_eps, &var.output[0])?)?;
        let (sqrt_i, sqrt) = self.only_reader(&add_eps.output[0], "Sqrt")?;
        if div.input.get(1) != Some(&sqrt.output[0]) || self.consumers.get(sqrt.output[0].as_str())?.len() != 1 {
            return None;
        }
        let mut chain = vec![i, sub_i, square_i, var_i, eps_i, sqrt_i, div_i];
        let mut out = div.output[0].as_str();
        let scale = self.by_constant(&mut out, "Mul", &mut chain);
        let bias = self.by_constant(&mut out, "Add", &mut chain);
        let ones = scale.is_none().then(|| format!("{out}.layer_norm_scale"));
        let scale = scale.map(str::to_string).or_else(|| ones.clone())?;
        let attribute = vec![
            AttributeProto { name: "axis".into(), i: -1, r#type: attr_type::INT, ..Default::default() },
            AttributeProto { name: "epsilon".into(), f: epsilon, r#type: attr_type::FLOAT, ..Default::default() },
        ];
        let node = NodeProto {
            input: vec![x.clone(), scale, bias.unwrap_or_default().to_string()],
            output: vec![out.to_string()],
            name: if mean.name.is_empty() { String::new() } else { format!("{}.layer_norm", mean.name) },
            op_type: "LayerNormalization".into(),
            attribute,
            domain: String::new(),
        };
        Some((chain, node, ones))
    }
}
