//! ONNX Runtime's QOperator form (`QuantFormat.QOperator`, SparseML's int8 exports): QLinearConv,
//! QLinearMatMul, QGemm, QLinearAdd, QLinearGlobalAveragePool, QLinearConcat, QLinearSigmoid,
//! QLinearLeakyRelu, QLinearSoftmax, QLinearAveragePool, and MaxPool, Flatten and Reshape on codes. A quantized activation (uint8
//! codes in the file) is held as the fp32 value of its codes, made by a `QuantDequant`; each
//! QLinear operator becomes its fp32 operator on those values (int8 weights dequantized, marked
//! int8 with the input's quantization, so the int8 kernels run them) followed by a
//! `QuantDequant` with the output's scale and zero point: the same graph as the QDQ form.
//! Dynamic quantization (scales computed from each input) is refused.

use super::import::{Importer, QuantizedActivation, attr_i, node_name};
use super::proto::NodeProto;
use crate::error::{EngineError, Result};
use crate::graph::{Activation, Node, Op};

impl Importer {
    /// Input `i` of `node` as a quantized activation, whose scale and zero point (inputs `i + 1`
    /// and `i + 2`) must be those it was quantized with.
    fn quantized_input(&self, node: &NodeProto, i: usize, name: &str) -> Result<QuantizedActivation> {
        let raw = node.input.get(i).map(|n| self.resolve(n)).unwrap_or_default();
        let q = self.quantized.get(&raw).cloned().ok_or_else(|| {
            EngineError::graph(
                name,
                format!("input '{raw}' must be a quantized activation (the output of QuantizeLinear or a QLinear operator)"),
            )
        })?;
        let (scale, zero) = self.activation_qparams(node, i + 1, name)?;
        if scale != q.scale || zero != q.zero {
            return Err(EngineError::graph(
                name,
                format!("input '{raw}' is read with another scale or zero point than it was quantized with"),
            ));
        }
        Ok(q)
    }

    /// Quantizes the fp32 value `value` with the scale and zero point at inputs `i`, `i + 1` into
    /// the node's output (a `QuantDequant`, recorded as a quantized activation).
    fn quantized_output(&mut self, node: &NodeProto, value: String, i: usize, name: &str) -> Result<()> {
        let (scale, zero) = self.activation_qparams(node, i, name)?;
        let out = node.output[0].clone();
        let codes = format!("{out}:dequantized");
        self.nodes.push(Node { name: name.to_string(), op: Op::QuantDequant { scale, zero }, inputs: vec![value], output: codes.clone() });
        self.quantized.insert(out, QuantizedActivation { source: codes, scale, zero });
        Ok(())
    }

    /// A name that reads as the fp32 value of quantized activation `q` and carries its
    /// quantization to the weighted layer that reads it.
    fn float_view(&mut self, q: &QuantizedActivation, tag: &str) -> String {
        let view = format!("{}:{tag}", q.source);
        self.aliases.insert(view.clone(), q.source.clone());
        self.dequantized.insert(view.clone(), q.clone());
        view
    }

    /// Dequantizes the constant at input `i` with scale and zero point at `i + 1`, `i + 2` along
    /// `axis`, as a constant named after the node; returns its name.
    fn dequantized_constant(&mut self, node: &NodeProto, i: usize, axis: i64, name: &str, tag: &str) -> Result<String> {
        let c = self.dequantize(node, [i, i + 1, i + 2], axis, name)?;
        let const_name = format!("{name}:{tag}");
        self.constants.insert(const_name.clone(), c);
        Ok(const_name)
    }

    /// An int32 bias at input `i` whose scale is the input's times each output row's weight scale.
    fn int32_bias(
        &mut self,
        node: &NodeProto,
        i: usize,
        input_scale: f32,
        weight: &str,
        rows: usize,
        name: &str,
    ) -> Result<Option<String>> {
        if node.input.get(i).is_none_or(|b| b.is_empty()) {
            return Ok(None);
        }
        let b = self.constant(node, i)?;
        let scales = self.constants[weight].int8_scales.as_ref().map(|(s, _)| s.clone());
        let scales = scales.ok_or_else(|| EngineError::graph(name, "an int32 bias needs int8 weights with zero points of 0"))?;
        if b.values.len() != rows || !(scales.len() == 1 || scales.len() == rows) {
            return Err(EngineError::graph(name, format!("bias of {} values for {rows} outputs", b.values.len())));
        }
        let values = b.values.iter().enumerate().map(|(r, v)| v * input_scale * scales[if scales.len() == 1 { 0 } else { r }]).collect();
        let bias_name = format!("{name}:bias");
        self.constants.insert(bias_name.clone(), super::import::Constant::floats(vec![rows], values));
        Ok(Some(bias_name))
    }

    /// Reads one QOperator node (`registry::QOPERATORS`).
    pub(super) fn qoperator(&mut self, node: &NodeProto) -> Result<()> {
        let name = node_name(node);
        let out = node.output[0].clone();
        let real = format!("{out}:real");
        let rewritten = |op: &str, inputs: Vec<String>, output: &str| NodeProto {
            input: inputs,
            output: vec![output.to_string()],
            name: name.clone(),
            op_type: op.into(),
            attribute: node.attribute.clone(),
            domain: String::new(),
        };
        match node.op_type.as_str() {
            "QLinearConv" => {
                let x = self.quantized_input(node, 0, &name)?;
                let w = self.dequantized_constant(node, 3, 0, &name, "weight")?;
                let rows = self.constants[&w].dims.first().copied().unwrap_or(0);
                let bias = self.int32_bias(node, 8, x.scale, &w, rows, &name)?;
                let view = self.float_view(&x, "conv_input");
                let inputs = [view, w].into_iter().chain(bias).collect();
                self.conv(&rewritten("Conv", inputs, &real), &name, x.source.clone())?;
                self.quantized_output(node, real, 6, &name)
            }
            "QLinearMatMul" => {
                let a = self.quantized_input(node, 0, &name)?;
                let b = self.dequantized_constant(node, 3, 1, &name, "weight")?;
                let view = self.float_view(&a, "matmul_input");
                self.node(&rewritten("MatMul", vec![view, b], &real))?;
                self.quantized_output(node, real, 6, &name)
            }
            "QGemm" => {
                let a = self.quantized_input(node, 0, &name)?;
                let axis = if attr_i(node, "transB", 0) != 0 { 0 } else { 1 };
                let b = self.dequantized_constant(node, 3, axis, &name, "weight")?;
                let rows = self.constants[&b].dims.get(axis as usize).copied().unwrap_or(0);
                let bias = self.int32_bias(node, 6, a.scale, &b, rows, &name)?;
                let view = self.float_view(&a, "gemm_input");
                let quantized_out = node.input.get(7).is_some_and(|s| !s.is_empty());
                let target = if quantized_out { real.clone() } else { out.clone() };
                self.node(&rewritten("Gemm", [view, b].into_iter().chain(bias).collect(), &target))?;
                if quantized_out { self.quantized_output(node, real, 7, &name) } else { Ok(()) }
            }
            "QLinearAdd" => {
                let (a, b) = (self.quantized_input(node, 0, &name)?, self.quantized_input(node, 3, &name)?);
                self.nodes.push(Node {
                    name: name.clone(),
                    op: Op::Add { act: Activation::None },
                    inputs: vec![a.source, b.source],
                    output: real.clone(),
                });
                self.quantized_output(node, real, 6, &name)
            }
            "QLinearGlobalAveragePool" => {
                if attr_i(node, "channels_last", 0) != 0 {
                    return Err(EngineError::graph(&name, "QLinearGlobalAveragePool with channels_last=1 is not supported"));
                }
                let x = self.quantized_input(node, 0, &name)?;
                self.nodes.push(Node { name: name.clone(), op: Op::GlobalAvgPool, inputs: vec![x.source], output: real.clone() });
                self.quantized_output(node, real, 3, &name)
            }
            "QLinearSigmoid" | "QLinearLeakyRelu" => {
                let x = self.quantized_input(node, 0, &name)?;
                let float_op = node.op_type.trim_start_matches("QLinear");
                self.node(&rewritten(float_op, vec![x.source], &real))?;
                self.quantized_output(node, real, 3, &name)
            }
            "QLinearAveragePool" => {
                if attr_i(node, "channels_last", 0) != 0 {
                    return Err(EngineError::graph(&name, "QLinearAveragePool with channels_last=1 is not supported"));
                }
                let x = self.quantized_input(node, 0, &name)?;
                self.node(&rewritten("AveragePool", vec![x.source], &real))?;
                self.quantized_output(node, real, 3, &name)
            }
            "QLinearSoftmax" => {
                let axis = attr_i(node, "axis", -1);
                if axis != 1 && axis != -1 {
                    return Err(EngineError::graph(
                        &name,
                        format!("QLinearSoftmax over axis {axis} is not supported (only the feature axis)"),
                    ));
                }
                let x = self.quantized_input(node, 0, &name)?;
                self.nodes.push(Node {
                    name: name.clone(),
                    op: Op::Softmax { masked: false, zero_nan: false },
                    inputs: vec![x.source],
                    output: real.clone(),
                });
                self.quantized_output(node, real, 3, &name)
            }
            "QLinearConcat" => {
                let axis = attr_i(node, "axis", 1);
                if axis < 1 || node.input.len() < 5 || !(node.input.len() - 2).is_multiple_of(3) {
                    return Err(EngineError::graph(
                        &name,
                        format!("QLinearConcat along axis {axis} with {} inputs is not supported", node.input.len()),
                    ));
                }
                let parts = (2..node.input.len())
                    .step_by(3)
                    .map(|i| self.quantized_input(node, i, &name).map(|q| q.source))
                    .collect::<Result<Vec<_>>>()?;
                self.nodes.push(Node {
                    name: name.clone(),
                    op: Op::Concat { axis: axis as usize - 1 },
                    inputs: parts,
                    output: real.clone(),
                });
                self.quantized_output(node, real, 0, &name)
            }
            other => Err(EngineError::graph(
                &name,
                format!(
                    "{other} quantizes with scales computed from each input (dynamic quantization); the engine runs statically quantized models: quantize with quantize_static"
                ),
            )),
        }
    }

    /// MaxPool, Flatten or Reshape of a quantized activation: the same operator on its value (the
    /// maximum of codes is the code of the maximum), and the output keeps its quantization.
    pub(super) fn on_codes(&mut self, node: &NodeProto, q: QuantizedActivation) -> Result<()> {
        let out = node.output[0].clone();
        let value = format!("{out}:dequantized");
        let mut rewritten = node.clone();
        rewritten.input[0] = q.source.clone();
        rewritten.output[0] = value.clone();
        self.node(&rewritten)?;
        self.quantized.insert(out, QuantizedActivation { source: value, ..q });
        Ok(())
    }
}
