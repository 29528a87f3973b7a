//! ONNX's operators of sequence models (BERT as `transformers` and PyTorch export it): embedding
//! Gather, LayerNormalization, MatMul of a `[.., rows, features]` value by weights or of two
//! values, GatherND and Expand with constant indices, Where and the logical operators.

use super::fold;
use super::import::{Constant, Importer, attr_f, attr_i};
use super::proto::NodeProto;
use crate::error::{EngineError, Result};
use crate::graph::{Node, Op, Operand, Weight, Window, broadcast};

impl Importer {
    fn push_named(&mut self, name: String, op: Op, inputs: Vec<String>, output: String) {
        self.nodes.push(Node { name, op, inputs, output });
    }

    /// Gather from constant `table` by an activation's values: an embedding lookup.
    pub(super) fn embed(&mut self, node: &NodeProto, name: &str, table: &str) -> Result<()> {
        let c = &self.constants[table];
        if attr_i(node, "axis", 0) != 0 || c.dims.len() != 2 {
            return Err(EngineError::graph(
                name,
                format!("Gather from a constant of shape {:?} by an activation is supported along axis 0 of a 2-D table only", c.dims),
            ));
        }
        let weight = Weight::dense(c.dims.clone(), c.values.clone());
        let rows = c.dims[0];
        let indices = self.resolve(node.input.get(1).ok_or_else(|| EngineError::graph(name, "Gather needs indices"))?);
        if let Some(port) = self.ports.inputs.iter_mut().find(|p| p.name == indices) {
            port.rows = Some(port.rows.map_or(rows, |r| r.min(rows)));
        }
        self.push_named(name.to_string(), Op::Embed { table: weight }, vec![indices], node.output[0].clone());
        Ok(())
    }

    /// LayerNormalization over the last axis (scale and bias constants).
    pub(super) fn layer_norm(&mut self, node: &NodeProto, name: &str, x: String) -> Result<()> {
        let dims = self.shape_of(&x, name)?;
        let axis = fold::normalize(attr_i(node, "axis", -1), dims.len() + 1).map_err(|e| EngineError::graph(name, e))?;
        if axis != dims.len() || node.output.iter().skip(1).any(|o| !o.is_empty()) {
            return Err(EngineError::graph(
                name,
                "LayerNormalization is supported over the last axis, without its mean and deviation outputs",
            ));
        }
        let last = dims[dims.len() - 1];
        let per_feature = |c: &Constant| -> Result<Vec<f32>> {
            match c.values.len() {
                1 => Ok(vec![c.values[0]; last]),
                n if n == last => Ok(c.values.clone()),
                n => Err(EngineError::graph(name, format!("{n} scales or biases for a last axis of {last}"))),
            }
        };
        let scale = per_feature(self.constant(node, 1)?)?;
        let bias = match node.input.get(2).filter(|b| !b.is_empty()) {
            Some(_) => per_feature(self.constant(node, 2)?)?,
            None => vec![0.0; last],
        };
        let epsilon = attr_f(node, "epsilon", 1e-5);
        self.push_named(name.to_string(), Op::LayerNorm { scale, bias, epsilon, columns: false }, vec![x], node.output[0].clone());
        Ok(())
    }

    /// MatMul of two activations: attention's products.
    pub(super) fn matmul_values(&mut self, node: &NodeProto, name: &str, x: String) -> Result<()> {
        let b = self.resolve(&node.input[1]);
        if self.constants.contains_key(&x) {
            return Err(EngineError::graph(name, "MatMul of a constant by an activation is not supported"));
        }
        self.push_named(name.to_string(), Op::BatchMatMul { swapped: Default::default() }, vec![x, b], node.output[0].clone());
        Ok(())
    }

    /// MatMul of a `[.., rows, k]` activation by weights `weight` (`[n, k]`): each row is a sample
    /// of a linear layer. The rows become the positions of a 1x1 convolution (`[k, 1, rows]`), so
    /// the sparse kernels run over all of them at once; picks move the features first and back.
    pub(super) fn row_linear(&mut self, name: &str, x: String, dims: &[usize], weight: Weight, out: String) {
        let (k, n) = (weight.shape[1], weight.shape[0]);
        let rows = dims.iter().product::<usize>() / k;
        let features_first = (0..k).flat_map(|f| (0..rows).map(move |r| r * k + f)).collect();
        let image = format!("{out}.features_first");
        self.push_named(
            format!("{name}.features_first"),
            Op::Pick { shape: vec![k, 1, rows], sources: features_first },
            vec![x],
            image.clone(),
        );
        let weight = Weight { shape: vec![n, k, 1, 1], ..weight };
        let conv = Op::Conv { weight, bias: vec![0.0; n], window: Window::square(1, 1, 0), act: Default::default() };
        let products = format!("{out}.products");
        self.push_named(name.to_string(), conv, vec![image], products.clone());
        let rows_first = (0..rows).flat_map(|r| (0..n).map(move |f| f * rows + r)).collect();
        let shape = dims[..dims.len() - 1].iter().copied().chain([n]).collect();
        self.push_named(format!("{name}.rows_first"), Op::Pick { shape, sources: rows_first }, vec![products], out);
    }

    /// GatherND of an activation with constant indices whose first coordinate is the batch's, 0 in
    /// every row (`batch_dims` 0, as a batch-1 export writes it): each sample picks from itself.
    pub(super) fn gather_nd(&mut self, node: &NodeProto, name: &str, x: String) -> Result<()> {
        let dims = self.shape_of(&x, name)?;
        let indices = self.constant(node, 1)?;
        let bad = || {
            EngineError::graph(name, format!("GatherND with indices of shape {:?} on {dims:?} per sample is not supported", indices.dims))
        };
        let (&r, lead) = indices.dims.split_last().ok_or_else(bad)?;
        if attr_i(node, "batch_dims", 0) != 0 || lead.first() != Some(&1) || r < 1 || r - 1 > dims.len() {
            return Err(bad());
        }
        // Coordinates after the batch's address the sample's axes.
        let r = r - 1;
        let inner: usize = dims[r..].iter().product();
        let strides = crate::kernels::elementwise::broadcast_strides(&dims, dims.len());
        let mut sources = Vec::new();
        for row in indices.values.chunks(r + 1) {
            if row[0] != 0.0 {
                return Err(bad());
            }
            let mut at = 0;
            for (a, &i) in row[1..].iter().enumerate() {
                at += fold::index(i, dims[a]).map_err(|e| EngineError::graph(name, e))? * strides[a];
            }
            sources.extend(at..at + inner);
        }
        let shape: Vec<usize> = lead[1..].iter().chain(&dims[r..]).copied().collect();
        let shape = if shape.is_empty() { vec![1] } else { shape };
        self.push_named(name.to_string(), Op::Pick { shape, sources }, vec![x], node.output[0].clone());
        Ok(())
    }

    /// Expand of an activation to a constant shape: a broadcast copy.
    pub(super) fn expand(&mut self, node: &NodeProto, name: &str, x: String) -> Result<()> {
        let dims = self.shape_of(&x, name)?;
        let target: Vec<usize> = self.shape_constant(node, 1)?.values.iter().map(|&v| v.max(1.0) as usize).collect();
        let per_sample = if target.len() > dims.len() { &target[1..] } else { &target[..] };
        let shape = broadcast(&dims, per_sample)
            .filter(|_| target.len() <= dims.len() + 1)
            .ok_or_else(|| EngineError::graph(name, format!("cannot expand {dims:?} per sample to {target:?}")))?;
        let strides = crate::kernels::elementwise::broadcast_strides(&dims, shape.len());
        let sources = (0..shape.iter().product::<usize>())
            .map(|mut o| {
                let mut at = 0;
                for d in (0..shape.len()).rev() {
                    at += (o % shape[d]) * strides[d];
                    o /= shape[d];
                }
                at
            })
            .collect();
        self.push_named(name.to_string(), Op::Pick { shape, sources }, vec![x], node.output[0].clone());
        Ok(())
    }

    /// `Where(condition, x, y)`: the condition an activation, `x` and `y` constants or activations.
    pub(super) fn where_(&mut self, node: &NodeProto, name: &str) -> Result<()> {
        let inputs: Vec<String> = node.input.iter().map(|i| self.resolve(i)).collect();
        if inputs.len() != 3 || self.constants.contains_key(&inputs[0]) {
            return Err(EngineError::graph(name, "Where is supported on an activation's condition (three inputs)"));
        }
        let operand = |v: &str| self.constants.get(v).map(|c| Operand { shape: c.dims.clone(), values: c.values.clone() });
        let (on, off) = (operand(&inputs[1]), operand(&inputs[2]));
        let mut values = vec![inputs[0].clone()];
        values.extend(inputs[1..].iter().filter(|v| !self.constants.contains_key(*v)).cloned());
        self.push_named(name.to_string(), Op::Where { x: on, y: off }, values, node.output[0].clone());
        Ok(())
    }
}
