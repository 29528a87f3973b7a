//! Int8 models as ONNX Runtime's quantizer writes them (`quantize_static`, QDQ and QOperator, per
//! tensor and per channel, uint8 activations, int8 weights): the quantizer drops the ReLU that a
//! zero point of 0 makes redundant and quantizes around pools, residual adds, global pooling,
//! flatten and softmax. The engine must compute what ONNX Runtime computes on the same file (run
//! as written), within one quantization step of the output, and still run its int8 kernels where
//! the pattern allows (an inverted residual block's expansion runs in fp32 inside the depth-wise
//! convolution that reads it). Dynamically quantized files are refused at load, never approximated.

mod common;

use common::*;
use engine::compile::{self, KernelPolicy, Options};
use engine::exec::Session;
use engine::onnx::proto::ModelProto;
use prost::Message;

/// The scale of the DequantizeLinear that writes the model's output: one quantization step of it.
fn output_step(path: &std::path::Path) -> Option<f32> {
    let model = ModelProto::decode(std::fs::read(path).unwrap().as_slice()).unwrap();
    let g = model.graph.unwrap();
    let out = &g.output[0].name;
    let dq = g.node.iter().find(|n| &n.output[0] == out && n.op_type == "DequantizeLinear")?;
    let scale = g.initializer.iter().find(|t| t.name == dq.input[1])?;
    Some(if scale.float_data.is_empty() { f32::from_le_bytes(scale.raw_data[..4].try_into().unwrap()) } else { scale.float_data[0] })
}

#[test]
fn static_files_match_onnx_runtime_within_one_step() {
    let Some(python) = ort_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let models = [
        ("mlp", mlp_with(21, 0.9, [64, 48, 32, 10])),
        ("lenet5", lenet(22, 0.8)),
        ("rescnn", cnn(23, 0.7)),
        ("convstack", conv_stack(24, 0.8)),
        ("inverted", inverted_residual(27, 0.8)),
    ];
    for (name, graph) in models {
        let fp32 = dir.path().join(format!("{name}.onnx"));
        std::fs::write(&fp32, engine::onnx::export::export(&graph, &graph.output_shape().unwrap())).unwrap();
        for (format, per_channel) in [("qdq", false), ("qdq", true), ("qoperator", false), ("qoperator", true)] {
            if name == "inverted" && format == "qoperator" {
                // Its SiLU's product becomes a QLinearMul, which the importer refuses by name.
                continue;
            }
            let q = dir.path().join(format!("{name}.{per_channel}.{format}.onnx"));
            ort_quantize(&python, &fp32, &q, format, per_channel);
            let step = output_step(&q).unwrap_or(1e-5) * 1.001 + 1e-6;
            let model = compile::compile(engine::load(&q).unwrap(), Options::new(KernelPolicy::Auto).unwrap()).unwrap();
            let int8_layers = model.layers.iter().filter(|l| matches!(&l.exec, compile::Exec::MatMul(m) if m.int8().is_some())).count();
            assert!(int8_layers >= 2, "{name} {format}: only {int8_layers} layers run in int8");
            if name == "rescnn" && format == "qdq" {
                // The residual additions (with their fake quantization) run inside the int8
                // convolutions that compute one of their operands.
                let fused = model
                    .layers
                    .iter()
                    .filter(|l| matches!(&l.exec, compile::Exec::MatMul(m) if m.int8().is_some() && m.residual.is_some()))
                    .count();
                assert!(fused >= 1, "{name} {format}: no residual addition fused into an int8 layer");
            }
            if name == "inverted" && format == "qdq" {
                // A quantized expansion that only a depth-wise convolution reads runs in fp32
                // inside it, its output's fake quantization applied as it is stored.
                let fused = model.layers.iter().filter(|l| matches!(&l.exec, compile::Exec::GroupConv { expand: Some(_), .. })).count();
                assert!(fused >= 1, "{name} {format} per_channel={per_channel}: no quantized expansion fused");
            }
            for batch in [1, 5] {
                let input = random_input(30 + batch as u64, batch, &graph.input_shape);
                let reference = ort_run_with(&python, &q, &input, dir.path(), true);
                for policy in [KernelPolicy::Auto, KernelPolicy::Sparse] {
                    let model = compile::compile(engine::load(&q).unwrap(), Options::new(policy).unwrap()).unwrap();
                    for threads in [1, 2] {
                        let got = Session::new(&model, threads).unwrap().run(&input.data, batch).unwrap();
                        let err = got.iter().zip(&reference.data).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
                        assert!(
                            err <= step,
                            "{name} {format} per_channel={per_channel} batch {batch} {policy:?} {threads} threads: {err} off ONNX Runtime (step {step})"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn dynamic_files_are_refused_not_approximated() {
    let Some(python) = ort_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    for (name, graph) in [("mlp", mlp_with(25, 0.5, [64, 48, 32, 10])), ("lenet5", lenet(26, 0.5))] {
        let fp32 = dir.path().join(format!("{name}.onnx"));
        std::fs::write(&fp32, engine::onnx::export::export(&graph, &graph.output_shape().unwrap())).unwrap();
        let q = dir.path().join(format!("{name}.dynamic.onnx"));
        ort_quantize(&python, &fp32, &q, "dynamic", false);
        let err = engine::load(&q).expect_err(name).to_string();
        assert!(!err.contains('\n') && (err.contains("dynamic quantization") || err.contains("not supported")), "{name}: {err}");
    }
}

/// Strided int8 convolutions on their input's phase images (ResNet's 7x7/2 stem, a 3x3/2
/// convolution and a 1x1/2 projection, quantized by ONNX Runtime's quantizer) compute what they
/// compute as written: the int32 sums are the same products, so the outputs are equal.
#[test]
fn strided_int8_convolutions_on_phase_images_equal_the_strided_ones() {
    let Some(python) = ort_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let graph = bottleneck(33, 0.8);
    let (fp32, q) = (dir.path().join("strided.onnx"), dir.path().join("strided.qdq.onnx"));
    std::fs::write(&fp32, engine::onnx::export::export(&graph, &graph.output_shape().unwrap())).unwrap();
    ort_quantize(&python, &fp32, &q, "qdq", true);
    let compiled = |phases: bool| {
        let mut options = Options::new(KernelPolicy::Auto).unwrap();
        options.phases = Some(phases);
        compile::compile(engine::load(&q).unwrap(), options).unwrap()
    };
    let (phased, strided) = (compiled(true), compiled(false));
    let phase_layers = phased.layers.iter().filter(|l| l.kind == "phases").count();
    if engine::kernels::q8direct::available(engine::kernels::active_isa().unwrap()) {
        assert!(phase_layers >= 1, "no strided int8 convolution on phase images");
    }
    for batch in [1, 3] {
        let input = random_input(40 + batch as u64, batch, &graph.input_shape);
        for threads in [1, 2] {
            let want = Session::new(&strided, threads).unwrap().run(&input.data, batch).unwrap();
            let got = Session::new(&phased, threads).unwrap().run(&input.data, batch).unwrap();
            assert_eq!(got, want, "batch {batch}, {threads} threads");
        }
    }
}
