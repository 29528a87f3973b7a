//! What a training tool needs from an ONNX file beyond the engine's graph, by the name of the
//! value each node writes: the name of the weight a Gemm, MatMul or Conv reads (PyTorch writes
//! its parameter names there, `layer1.0.conv1.weight`) and a BatchNormalization's own four
//! parameters, which the graph folds into a scale and a shift.

use std::collections::HashMap;
use std::path::Path;

use prost::Message;

use super::BatchNormState;
use super::import::attr_f;
use super::proto::ModelProto;
use crate::error::{EngineError, Result};

/// Where a layer's parameters come from in the file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LayerSource {
    /// The initializer holding its weight.
    pub weight: Option<String>,
    /// A BatchNormalization's parameters, where all four are initializers.
    pub batch_norm: Option<BatchNormState>,
}

/// The sources of the layers of the ONNX file `path` (its bytes), by output name.
pub fn layer_sources(bytes: &[u8], path: &Path) -> Result<HashMap<String, LayerSource>> {
    let bad = |reason: String| EngineError::Onnx { path: path.display().to_string(), reason };
    let model = ModelProto::decode(bytes).map_err(|e| bad(format!("protobuf decoding failed: {e}")))?;
    let graph = model.graph.ok_or_else(|| bad("the model has no graph".into()))?;
    let folder = path.parent().map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p });
    let initializer = |name: &str| graph.initializer.iter().find(|t| t.name == name);
    let mut sources = HashMap::new();
    for node in &graph.node {
        let Some(output) = node.output.first() else { continue };
        let source = match node.op_type.as_str() {
            "Gemm" | "MatMul" | "Conv" => {
                LayerSource { weight: node.input.get(1).filter(|w| initializer(w).is_some()).cloned(), batch_norm: None }
            }
            "BatchNormalization" => {
                let tensors: Option<Vec<_>> = (1..5).map(|i| node.input.get(i).and_then(|n| initializer(n))).collect();
                let Some(tensors) = tensors else { continue };
                let mut values = Vec::with_capacity(4);
                for t in tensors {
                    values.push(super::tensor::decode(t, folder).map_err(|e| bad(format!("initializer '{}': {e}", t.name)))?.1);
                }
                let [gamma, beta, mean, var]: [Vec<f32>; 4] = values.try_into().expect("four tensors");
                let epsilon = attr_f(node, "epsilon", 1e-5);
                LayerSource { weight: node.input.get(1).cloned(), batch_norm: Some(BatchNormState { gamma, beta, mean, var, epsilon }) }
            }
            _ => continue,
        };
        sources.insert(output.clone(), source);
    }
    Ok(sources)
}
