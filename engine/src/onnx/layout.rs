//! ONNX's layout operators on activations, as the engine's per-sample `Reshape`, `Transpose` and
//! `Select`: Reshape, Flatten-like Reshape, Squeeze, Unsqueeze, Transpose, Slice, Split, Gather
//! with constant indices, and nearest-neighbour Resize and Upsample. The batch axis stays first and
//! whole. Shapes of activations are inferred as the nodes arrive (`Importer::shape_of`).

use super::fold::{self, BATCH, OTHER_BATCH};
use super::import::{Constant, Importer, attr_i};
use super::proto::NodeProto;
use crate::error::{EngineError, Result};
use crate::graph::{self, Node, Op};

impl Importer {
    /// The per-sample shape of activation `value`, inferred over the nodes imported so far.
    pub(super) fn shape_of(&mut self, value: &str, node: &str) -> Result<Vec<usize>> {
        for attempt in 0..2 {
            if attempt == 1 {
                // A node's output was renamed (a bias folded into it): infer again from the start.
                self.shapes.retain(|k, _| *k == self.input.0);
                self.shaped = 0;
            }
            while self.shaped < self.nodes.len() {
                let n = &self.nodes[self.shaped];
                let get = |name: &str| {
                    self.shapes
                        .get(name)
                        .cloned()
                        .ok_or_else(|| EngineError::graph(&n.name, format!("input '{name}' is not produced by any earlier node")))
                };
                let x = get(&n.inputs[0])?;
                let y = graph::node_output_shape(n, &x, |i| get(&n.inputs[i]))?;
                self.shapes.insert(n.output.clone(), y);
                self.shaped += 1;
            }
            if let Some(s) = self.shapes.get(value) {
                return Ok(s.clone());
            }
        }
        Err(EngineError::graph(node, format!("the shape of '{value}' is not known")))
    }

    /// The constant inputs of `node` (`None` for an activation or an omitted input).
    pub(super) fn constant_inputs(&self, node: &NodeProto) -> Vec<Option<&Constant>> {
        node.input.iter().map(|i| if i.is_empty() { None } else { self.constants.get(&self.resolve(i)) }).collect()
    }

    fn push_as(&mut self, name: String, op: Op, input: String, output: String) {
        self.nodes.push(Node { name, op, inputs: vec![input], output });
    }

    /// The per-sample shape of `x` and the axis of `node`'s `axis` attribute counted in it; an
    /// error for the batch axis.
    fn sample_axis(&mut self, node: &NodeProto, name: &str, x: &str) -> Result<(Vec<usize>, usize)> {
        let dims = self.shape_of(x, name)?;
        let axis = fold::normalize(attr_i(node, "axis", 0), dims.len() + 1).map_err(|e| EngineError::graph(name, e))?;
        if axis == 0 {
            return Err(EngineError::graph(name, format!("{} along the batch axis is not supported", node.op_type)));
        }
        Ok((dims, axis - 1))
    }

    pub(super) fn reshape(&mut self, node: &NodeProto, name: &str, x: String) -> Result<()> {
        let target = self.shape_constant(node, 1)?;
        let (values, other) = (target.values.clone(), target.other_batch.clone());
        let allowzero = attr_i(node, "allowzero", 0) != 0;
        let dims = self.shape_of(&x, name)?;
        let merged = self.merged.contains(&x);
        let batch_first = match &other {
            Some(o) => values.first() == Some(&BATCH) && o.first() == Some(&OTHER_BATCH) && o[1..] == values[1..],
            None => {
                values.first().is_some_and(|&v| v == -1.0 || (v == 0.0 && !allowzero) || self.static_batch.is_some_and(|b| b as f32 == v))
            }
        };
        if self.static_batch == Some(1) && other.is_none() {
            return self.reshape_whole(name, x, &values, allowzero, node.output[0].clone());
        }
        if !batch_first || merged {
            return Err(EngineError::graph(name, format!("Reshape to {values:?} is not supported: its first dimension must be the batch")));
        }
        let mut full = values.clone();
        full[0] = 1.0;
        let with_batch: Vec<usize> = [1].into_iter().chain(dims.iter().copied()).collect();
        let shape = fold::reshaped(&with_batch, &full, allowzero)
            .map_err(|_| EngineError::graph(name, format!("cannot reshape samples of {dims:?} to {values:?}")))?[1..]
            .to_vec();
        let op = if shape.len() == 1 { Op::Flatten } else { Op::Reshape { shape } };
        self.push_as(name.to_string(), op, x, node.output[0].clone());
        Ok(())
    }

    /// A Reshape in a batch-1 file, on the sample's values as the file's whole tensor: the file may
    /// fold the batch into its first axis and out again (attention heads as `[heads, rows,
    /// features]`), which `merged` tracks.
    fn reshape_whole(&mut self, name: &str, x: String, target: &[f32], allowzero: bool, output: String) -> Result<()> {
        let (dims, whole) = self.whole_shape(&x, name)?;
        let out = fold::reshaped(&whole, target, allowzero)
            .map_err(|_| EngineError::graph(name, format!("cannot reshape samples of {dims:?} to {target:?}")))?;
        let shape = if out.first() == Some(&1) && out.len() > 1 {
            out[1..].to_vec()
        } else {
            self.merged.insert(output.clone());
            out
        };
        let op = if shape.len() == 1 && !self.merged.contains(&output) { Op::Flatten } else { Op::Reshape { shape } };
        self.push_as(name.to_string(), op, x, output);
        Ok(())
    }

    /// The per-sample shape of `x` and the file's whole shape of it in a batch-1 file: the batch of
    /// 1 first, unless folded into the first axis already (`merged`).
    fn whole_shape(&mut self, x: &str, name: &str) -> Result<(Vec<usize>, Vec<usize>)> {
        let dims = self.shape_of(x, name)?;
        let whole = if self.merged.contains(x) { dims.clone() } else { [1].into_iter().chain(dims.iter().copied()).collect() };
        Ok((dims, whole))
    }

    /// Flatten at an axis other than 1 in a batch-1 file: a Reshape of the whole tensor.
    pub(super) fn flatten_whole(&mut self, node: &NodeProto, name: &str, x: String) -> Result<()> {
        let (_, whole) = self.whole_shape(&x, name)?;
        let axis = attr_i(node, "axis", 1);
        let axis = if axis < 0 { axis + whole.len() as i64 } else { axis }.clamp(0, whole.len() as i64) as usize;
        let target = [whole[..axis].iter().product::<usize>() as f32, whole[axis..].iter().product::<usize>() as f32];
        self.reshape_whole(name, x, &target, false, node.output[0].clone())
    }

    pub(super) fn squeeze(&mut self, node: &NodeProto, name: &str, x: String) -> Result<()> {
        let dims = self.shape_of(&x, name)?;
        let axes = fold::axes(node, &self.constant_inputs(node)).map_err(|e| EngineError::graph(name, e))?;
        let with_batch: Vec<usize> = [usize::MAX].into_iter().chain(dims.iter().copied()).collect();
        let shape = if node.op_type == "Unsqueeze" { fold::unsqueezed(&with_batch, &axes) } else { fold::squeezed(&with_batch, &axes) };
        let shape = shape.map_err(|e| EngineError::graph(name, e))?;
        if shape.first() != Some(&usize::MAX) {
            return Err(EngineError::graph(name, format!("{} along the batch axis (axes {axes:?}) is not supported", node.op_type)));
        }
        self.push_as(name.to_string(), Op::Reshape { shape: shape[1..].to_vec() }, x, node.output[0].clone());
        Ok(())
    }

    pub(super) fn transpose(&mut self, node: &NodeProto, name: &str, x: String) -> Result<()> {
        if self.merged.contains(&x) {
            // The batch (of 1) is inside axis 0: every axis is the sample's.
            let rank = self.shape_of(&x, name)?.len();
            let perm: Vec<usize> = match node.attribute.iter().find(|a| a.name == "perm") {
                Some(a) => a
                    .ints
                    .iter()
                    .map(|&p| fold::normalize(p, rank))
                    .collect::<std::result::Result<_, _>>()
                    .map_err(|e| EngineError::graph(name, e))?,
                None => (0..rank).rev().collect(),
            };
            self.merged.insert(node.output[0].clone());
            self.push_as(name.to_string(), Op::Transpose { perm }, x, node.output[0].clone());
            return Ok(());
        }
        let rank = self.shape_of(&x, name)?.len() + 1;
        let perm: Vec<i64> = match node.attribute.iter().find(|a| a.name == "perm") {
            Some(a) => a.ints.clone(),
            None => (0..rank as i64).rev().collect(),
        };
        if perm.first() != Some(&0) || perm.len() != rank || perm[1..].iter().any(|&p| p < 1) {
            return Err(EngineError::graph(name, format!("Transpose with perm {perm:?} is not supported: the batch axis must stay first")));
        }
        let perm = perm[1..].iter().map(|&p| p as usize - 1).collect();
        self.push_as(name.to_string(), Op::Transpose { perm }, x, node.output[0].clone());
        Ok(())
    }

    pub(super) fn slice(&mut self, node: &NodeProto, name: &str, x: String) -> Result<()> {
        let dims = self.shape_of(&x, name)?;
        let with_batch: Vec<usize> = [1].into_iter().chain(dims.iter().copied()).collect();
        let ranges = fold::slice_ranges(node, &self.constant_inputs(node), &with_batch, false).map_err(|e| EngineError::graph(name, e))?;
        let mut indices = fold::whole(&dims);
        for (axis, ix) in ranges {
            indices[axis - 1] = ix;
        }
        self.push_as(name.to_string(), Op::Select { indices }, x, node.output[0].clone());
        Ok(())
    }

    /// Each output of a Split is a selection of consecutive coordinates along its axis.
    pub(super) fn split(&mut self, node: &NodeProto, name: &str, x: String) -> Result<()> {
        let (dims, axis) = self.sample_axis(node, name, &x)?;
        let d = dims[axis];
        let parts = node.output.len();
        let sizes: Vec<usize> = match (node.input.get(1).filter(|s| !s.is_empty()), node.attribute.iter().find(|a| a.name == "split")) {
            (Some(_), _) => self.constant(node, 1)?.values.iter().map(|&v| if v >= 0.0 { v as usize } else { usize::MAX }).collect(),
            (None, Some(a)) => a.ints.iter().map(|&v| usize::try_from(v).unwrap_or(usize::MAX)).collect(),
            // Equal parts, the last one smaller where they do not divide evenly (opset 18).
            (None, None) => (0..parts).map(|k| d.div_ceil(parts).min(d.saturating_sub(k * d.div_ceil(parts)))).collect(),
        };
        let total = sizes.iter().try_fold(0usize, |a, &s| a.checked_add(s));
        if sizes.len() != parts || total != Some(d) || sizes.contains(&0) {
            return Err(EngineError::graph(name, format!("Split of {d} into {sizes:?} for {parts} outputs")));
        }
        let mut start = 0;
        for (k, (size, output)) in sizes.iter().zip(&node.output).enumerate() {
            let mut indices = fold::whole(&dims);
            indices[axis] = (start..start + size).collect();
            start += size;
            self.push_as(format!("{name}.{k}"), Op::Select { indices }, x.clone(), output.clone());
        }
        Ok(())
    }

    /// Gather of an activation with constant indices: a selection along the axis, reshaped where
    /// the indices are not one list.
    pub(super) fn gather(&mut self, node: &NodeProto, name: &str, x: String) -> Result<()> {
        if self.constants.contains_key(&x) {
            return self.embed(node, name, &x);
        }
        if self.merged.contains(&x) {
            return self.gather_whole(node, name, x);
        }
        let (dims, axis) = self.sample_axis(node, name, &x)?;
        let indices = self.constant(node, 1)?;
        let ix = indices.values.iter().map(|&i| fold::index(i, dims[axis])).collect::<std::result::Result<Vec<_>, _>>();
        let ix = ix.map_err(|e| EngineError::graph(name, e))?;
        let shape = [&dims[..axis], &indices.dims[..], &dims[axis + 1..]].concat();
        let mut select = fold::whole(&dims);
        select[axis] = ix;
        let out = node.output[0].clone();
        if indices.dims.len() == 1 {
            self.push_as(name.to_string(), Op::Select { indices: select }, x, out);
        } else {
            let picked = format!("{out}.picked");
            self.push_as(format!("{name}.select"), Op::Select { indices: select }, x, picked.clone());
            self.push_as(name.to_string(), Op::Reshape { shape }, picked, out);
        }
        Ok(())
    }

    /// Gather with constant indices on a value whose batch (of 1) is folded into its first axis:
    /// every axis is the sample's; the result is a sample again where its first axis is 1.
    fn gather_whole(&mut self, node: &NodeProto, name: &str, x: String) -> Result<()> {
        let dims = self.shape_of(&x, name)?;
        let axis = fold::normalize(attr_i(node, "axis", 0), dims.len()).map_err(|e| EngineError::graph(name, e))?;
        let indices = self.constant(node, 1)?;
        let ix = indices.values.iter().map(|&i| fold::index(i, dims[axis])).collect::<std::result::Result<Vec<_>, _>>();
        let mut select = fold::whole(&dims);
        select[axis] = ix.map_err(|e| EngineError::graph(name, e))?;
        let whole: Vec<f32> = [&dims[..axis], &indices.dims[..], &dims[axis + 1..]].concat().iter().map(|&d| d as f32).collect();
        let out = node.output[0].clone();
        let picked = format!("{out}.picked");
        self.merged.insert(picked.clone());
        self.push_as(format!("{name}.select"), Op::Select { indices: select }, x, picked.clone());
        self.reshape_whole(name, picked, &whole, true, out)
    }

    /// Nearest-neighbour Resize (opset 10 on) and Upsample: per axis, each output coordinate reads
    /// the input coordinate ONNX's coordinate transformation and rounding mode give.
    pub(super) fn resize(&mut self, node: &NodeProto, name: &str, x: String) -> Result<()> {
        let bad = |reason: String| EngineError::graph(name, reason);
        let text = |attr: &str, default: &str| {
            node.attribute.iter().find(|a| a.name == attr).map_or(default.to_string(), |a| String::from_utf8_lossy(&a.s).into_owned())
        };
        let upsample = node.op_type == "Upsample";
        let mode = text("mode", "nearest");
        let transform = if upsample { "asymmetric".to_string() } else { text("coordinate_transformation_mode", "half_pixel") };
        let rounding = if upsample { "floor".to_string() } else { text("nearest_mode", "round_prefer_floor") };
        if mode != "nearest" {
            return Err(bad(format!("Resize mode {mode} is not supported (only nearest)")));
        }
        if node.attribute.iter().any(|a| a.name == "axes") || text("keep_aspect_ratio_policy", "stretch") != "stretch" {
            return Err(bad("Resize with axes or a kept aspect ratio is not supported".into()));
        }
        let dims = self.shape_of(&x, name)?;
        let inputs = self.constant_inputs(node);
        let scales_at = if upsample || node.input.len() == 2 { 1 } else { 2 };
        let given = |i: usize| inputs.get(i).copied().flatten().filter(|c| !c.values.is_empty());
        let upsample_attr: Option<Vec<f32>> = node.attribute.iter().find(|a| a.name == "scales").map(|a| a.floats.clone());
        // Per axis, batch first: the output size and the scale of the coordinate transformation.
        let axes: Vec<(usize, f32)> = if let Some(sizes) = given(3) {
            if sizes.values.len() != dims.len() + 1 {
                return Err(bad(format!("{} sizes for a {}-D value", sizes.values.len(), dims.len() + 1)));
            }
            let per_sample = sizes.values[1..].iter().zip(&dims);
            per_sample.map(|(&s, &d)| (s.max(0.0) as usize, s / d as f32)).collect()
        } else {
            let scales = match given(scales_at) {
                Some(c) => c.values.clone(),
                None => upsample_attr.ok_or_else(|| bad("Resize needs scales or sizes".into()))?,
            };
            if scales.len() != dims.len() + 1 || scales[0] != 1.0 {
                return Err(bad(format!("Resize scales {scales:?}: one per axis of a {}-D value, 1 for the batch", dims.len() + 1)));
            }
            scales[1..].iter().zip(&dims).map(|(&s, &d)| ((d as f32 * s).max(0.0).floor() as usize, s)).collect()
        };
        let outs: Vec<usize> = axes.iter().map(|a| a.0).collect();
        if graph::checked_numel(&outs, graph::MAX_VALUE_ELEMENTS).is_none() {
            return Err(bad(format!("Resize of {dims:?} to {outs:?} is too large")));
        }
        let mut indices = Vec::with_capacity(dims.len());
        for (&(out, scale), &d) in axes.iter().zip(&dims) {
            if out == 0 || out > graph::MAX_VALUE_ELEMENTS || !(scale.is_finite() && scale > 0.0) {
                return Err(bad(format!("Resize of a dimension of {d} to {out} (scale {scale})")));
            }
            // An axis of scale 1 is copied as it is (ONNX Runtime does so in every mode).
            let ix = (0..out)
                .map(|i| if scale == 1.0 && out == d { Ok(i) } else { nearest(i, out, d, scale, &transform, &rounding) })
                .collect::<std::result::Result<Vec<_>, _>>();
            indices.push(ix.map_err(bad)?);
        }
        self.push_as(name.to_string(), Op::Select { indices }, x, node.output[0].clone());
        Ok(())
    }
}

/// The input coordinate nearest-neighbour resizing reads for output coordinate `i` of `out`,
/// from an axis of `d` scaled by `scale`, as ONNX defines it (in f32, as ONNX Runtime computes, so
/// that ties round alike).
fn nearest(i: usize, out: usize, d: usize, scale: f32, transform: &str, rounding: &str) -> std::result::Result<usize, String> {
    let (x, out_f, d_f) = (i as f32, out as f32, d as f32);
    let original = match transform {
        "half_pixel" => (x + 0.5) / scale - 0.5,
        "pytorch_half_pixel" if out > 1 => (x + 0.5) / scale - 0.5,
        "pytorch_half_pixel" => 0.0,
        "align_corners" if out > 1 => x * (d_f - 1.0) / (out_f - 1.0),
        "align_corners" => 0.0,
        "asymmetric" => x / scale,
        "tf_half_pixel_for_nn" => (x + 0.5) / scale,
        other => return Err(format!("coordinate_transformation_mode {other} is not supported")),
    };
    let near = match rounding {
        "round_prefer_floor" if original.fract() == 0.5 => original.floor(),
        "round_prefer_ceil" if original.fract() == 0.5 => original.ceil(),
        "round_prefer_floor" | "round_prefer_ceil" => original.round(),
        "floor" => original.floor(),
        "ceil" => original.ceil(),
        other => return Err(format!("nearest_mode {other} is not supported")),
    };
    Ok(near.clamp(0.0, d_f - 1.0) as usize)
}
