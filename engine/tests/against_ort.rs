//! The engine's outputs against ONNX Runtime on the same ONNX files (dense and pruned MLPs and
//! CNNs, every kernel policy, batch sizes that do and do not divide into tiles), within 1e-4
//! relative (on the logits too where a Softmax ends the model); and the native file against the
//! ONNX file of the same graph.

mod common;

use common::*;
use engine::compile::{self, KernelPolicy, Options};
use engine::exec::Session;

fn run_engine(path: &std::path::Path, policy: KernelPolicy, input: &engine::npy::Array, threads: usize) -> Vec<f32> {
    let model = compile::compile(engine::load(path).unwrap(), Options::new(policy).unwrap()).unwrap();
    Session::new(&model, threads).unwrap().run(&input.data, input.shape[0]).unwrap()
}

fn check_graph(name: &str, graph: engine::graph::Graph) {
    check_graph_within(name, graph, 1e-4)
}

fn check_graph_within(name: &str, graph: engine::graph::Graph, tolerance: f32) {
    let Some(python) = ort_python() else { return };
    // Errors relative to the largest output hide in small probabilities after a Softmax: the
    // logits before it are checked the same way.
    if let Some(last) = graph.nodes.last().filter(|n| matches!(n.op, engine::graph::Op::Softmax { .. }) && n.output == graph.output) {
        let mut logits = graph.clone();
        logits.output = last.inputs[0].clone();
        logits.nodes.pop();
        check_graph_within(&format!("{name}_logits"), logits, tolerance);
    }
    let dir = tempfile::tempdir().unwrap();
    let onnx = dir.path().join(format!("{name}.onnx"));
    let native = dir.path().join(format!("{name}.sparse"));
    let out_shape = graph.output_shape().unwrap();
    std::fs::write(&onnx, engine::onnx::export::export(&graph, &out_shape)).unwrap();
    engine::format::save(&graph, &native).unwrap();
    for batch in [1, 3, 64, 100] {
        let input = random_input(batch as u64, batch, &graph.input_shape);
        // The dense policy runs quantized layers in fp32 (the baseline of `--compare dense`).
        let quantized = graph.nodes.iter().any(|n| n.op.weight().is_some_and(|w| w.quant.is_some()));
        let reference = ort_run(&python, &onnx, &input, dir.path());
        if quantized {
            // QDQ as written (no integer fusion): the definition the int8 kernels implement.
            let literal = ort_run_with(&python, &onnx, &input, dir.path(), true);
            let err = rel_err(&run_engine(&onnx, KernelPolicy::Auto, &input, 2), &literal.data);
            assert!(err < 1e-4, "{name} batch {batch}: relative error {err} against ONNX Runtime without fusion");
        }
        let policies = if quantized {
            &[KernelPolicy::Auto, KernelPolicy::Sparse][..]
        } else {
            &[KernelPolicy::Auto, KernelPolicy::Dense, KernelPolicy::Sparse]
        };
        for &policy in policies {
            for threads in [1, 2] {
                let got = run_engine(&onnx, policy, &input, threads);
                let err = rel_err(&got, &reference.data);
                assert!(err < tolerance, "{name} onnx batch {batch} {policy:?} {threads} threads: relative error {err}");
            }
        }
        let got = run_engine(&native, KernelPolicy::Auto, &input, 2);
        let err = rel_err(&got, &reference.data);
        assert!(err < tolerance, "{name} native file batch {batch}: relative error {err}");
    }
}

#[test]
fn dense_mlp_matches_onnx_runtime() {
    check_graph("mlp_dense", mlp(1, 0.0));
}

#[test]
fn pruned_mlp_matches_onnx_runtime() {
    check_graph("mlp_s90", mlp(2, 0.9));
}

#[test]
fn dense_cnn_matches_onnx_runtime() {
    check_graph("cnn_dense", cnn(3, 0.0));
}

#[test]
fn pruned_cnn_matches_onnx_runtime() {
    check_graph("cnn_s80", cnn(4, 0.8));
}

/// ResNet-50's bottleneck blocks at reduced width: pointwise convolutions, stride-2 projections,
/// residual adds, dense and 90% pruned.
#[test]
fn bottleneck_resnet_matches_onnx_runtime() {
    check_graph("bottleneck_dense", bottleneck(15, 0.0));
    check_graph("bottleneck_s90", bottleneck(16, 0.9));
}

/// MobileNet / EfficientNet operators: depth-wise and grouped convolutions, ReLU6, SiLU,
/// squeeze-and-excitation, HardSwish, Concat, broadcast constants, GELU and friends.
#[test]
fn mobile_operators_match_onnx_runtime() {
    check_graph("mobile_dense", mobile(13, 0.0));
    check_graph("mobile_s80", mobile(14, 0.8));
}

/// Strided convolutions run as stride-1 ones on their input's phase images (a 7x7/2 stem, a 3x3/2
/// convolution and a 1x1/2 projection, dense and pruned) give ONNX Runtime's results.
#[test]
fn strided_convolutions_on_phase_images_match_onnx_runtime() {
    let Some(python) = ort_python() else { return };
    for (seed, sparsity) in [(31, 0.0), (32, 0.8)] {
        let graph = bottleneck(seed, sparsity);
        let dir = tempfile::tempdir().unwrap();
        let onnx = dir.path().join("strided.onnx");
        std::fs::write(&onnx, engine::onnx::export::export(&graph, &graph.output_shape().unwrap())).unwrap();
        let mut options = Options::new(KernelPolicy::Auto).unwrap();
        options.phases = Some(true);
        let model = compile::compile(graph.clone(), options).unwrap();
        let phased = model.layers.iter().filter(|l| l.kind == "phases").count();
        if options_have_direct_one_sample_kernels() {
            assert_eq!(phased, 3, "every strided convolution on phase images");
            // The stem's phase rows (12 values) are gathered by runs, the later ones (3) by element.
            let by_runs = |l: &&compile::Layer| matches!(&l.exec, compile::Exec::Gather { runs: Some(_), .. });
            assert_eq!(model.layers.iter().filter(|l| l.kind == "phases").filter(by_runs).count(), 1, "the stem's phases by runs");
        }
        for batch in [1, 3, 17] {
            let input = random_input(batch as u64 + seed, batch, &graph.input_shape);
            let reference = ort_run(&python, &onnx, &input, dir.path());
            for threads in [1, 2] {
                let got = Session::new(&model, threads).unwrap().run(&input.data, batch).unwrap();
                let err = rel_err(&got, &reference.data);
                assert!(err < 1e-4, "sparsity {sparsity} batch {batch} {threads} threads: relative error {err}");
            }
        }
    }
}

/// YOLOv5's stem, a dense 6x6/2 convolution with pads of 2: on its input's phase images a dense
/// 3x3 convolution over 12 channels, which Winograd's products take where they time faster
/// (YOLOv5s's stem); ONNX Runtime's results whichever form runs, at batches 1 to 100.
#[test]
fn a_6x6_stride_2_stem_matches_onnx_runtime() {
    check_graph("stem_6x6", yolo_stem(41));
}

/// The direct convolution takes one sample (stride 1) with AVX-512 only.
fn options_have_direct_one_sample_kernels() -> bool {
    engine::kernels::active_isa() == Ok(engine::kernels::Isa::Avx512)
}

/// The layout operators in the engine's own graph (a detection head's permute, a selection along
/// two axes, a reshape), written to ONNX and to the native file.
#[test]
fn layout_operators_match_onnx_runtime() {
    use engine::graph::{Graph, Op};
    let mut r = rng(21);
    let nodes = vec![
        node("permuted", Op::Transpose { perm: vec![2, 0, 1] }, &["input"]),
        node("picked", Op::Select { indices: vec![vec![4, 0, 2], vec![1, 1, 3], (0..6).rev().collect()] }, &["permuted"]),
        node("viewed", Op::Reshape { shape: vec![6, 3, 3] }, &["picked"]),
        node("flat", Op::Flatten, &["viewed"]),
        node(
            "fc",
            Op::Linear { weight: weight(&mut r, &[10, 54], 0.5), bias: vector(&mut r, 10, -0.1, 0.1), act: Default::default() },
            &["flat"],
        ),
    ];
    check_graph("layout", Graph { input: "input".into(), input_shape: vec![4, 6, 5], output: "fc".into(), nodes, ports: None });
}

#[test]
fn pruned_lenet5_matches_onnx_runtime() {
    check_graph("lenet5_s90", lenet(5, 0.9));
}

// Int8 layers compute exactly what QuantizeLinear/DequantizeLinear and fp32 Gemm/Conv define, but
// ONNX Runtime fuses QDQ groups into integer operators that requantize with fixed-point
// arithmetic, so an activation can land one quantization step away; hence the looser tolerance
// for the fused run. Against the unfused run (the definition) the bound stays 1e-4.
const INT8_TOLERANCE: f32 = 5e-2;

#[test]
fn quantized_mlp_matches_onnx_runtime() {
    check_graph_within("mlp_q8_s90", quantized(mlp(6, 0.9)), INT8_TOLERANCE);
}

#[test]
fn int8_layers_requantizing_into_the_next_equal_dequantizing_and_quantizing_again() {
    // Consecutive int8 linear layers requantize straight into the next layer's input; a Flatten
    // between them (a copy) makes each write f32 and the next quantize it, as ONNX QDQ defines.
    // The two must agree exactly. 203 and 101 rows leave partial groups of four, and the first two
    // layers are large enough to split over threads.
    let chained = quantized(mlp_with(9, 0.9, [784, 203, 101, 10]));
    let mut separate = chained.clone();
    for (i, fc) in ["fc0", "fc1"].iter().enumerate() {
        let copy = format!("{fc}_copy");
        separate.nodes.iter_mut().filter(|n| n.inputs == [fc.to_string()]).for_each(|n| n.inputs = vec![copy.clone()]);
        separate.nodes.insert(2 * i + 1, node(&copy, engine::graph::Op::Flatten, &[fc]));
    }
    let options = || Options::new(KernelPolicy::Auto).unwrap();
    let (chained, separate) = (compile::compile(chained, options()).unwrap(), compile::compile(separate, options()).unwrap());
    for batch in [1, 3, 64, 100, 130] {
        let input = random_input(batch as u64, batch, &[784]);
        for threads in [1, 2] {
            let a = Session::new(&chained, threads).unwrap().run(&input.data, batch).unwrap();
            let b = Session::new(&separate, threads).unwrap().run(&input.data, batch).unwrap();
            assert_eq!(a, b, "batch {batch}, {threads} threads");
        }
    }
}

#[test]
fn quantized_cnn_matches_onnx_runtime() {
    check_graph_within("cnn_q8_s80", quantized(cnn(7, 0.8)), INT8_TOLERANCE);
}

#[test]
fn quantized_lenet5_matches_onnx_runtime() {
    check_graph_within("lenet5_q8_s90", quantized(lenet(8, 0.9)), INT8_TOLERANCE);
}

#[test]
fn int8_batches_match_one_sample_at_a_time() {
    for (name, graph) in [("mlp", quantized(mlp(6, 0.9))), ("cnn", quantized(cnn(7, 0.8))), ("lenet5", quantized(lenet(8, 0.9)))] {
        let model = compile::compile(graph.clone(), Options::new(KernelPolicy::Auto).unwrap()).unwrap();
        let per: usize = graph.input_shape.iter().product();
        let input = random_input(64, 70, &graph.input_shape);
        let batched = Session::new(&model, 2).unwrap().run(&input.data, 70).unwrap();
        let out = batched.len() / 70;
        let mut one = Session::new(&model, 1).unwrap();
        for s in 0..70 {
            let single = one.run(&input.data[s * per..(s + 1) * per], 1).unwrap();
            let err = rel_err(&single, &batched[s * out..(s + 1) * out]);
            assert!(err < 1e-5, "{name} sample {s}: batch-1 and batched int8 differ by {err}");
        }
    }
}

/// Every instruction-set level this CPU offers (each one `ENGINE_ISA` can force) runs whole
/// models to ONNX Runtime's answers: residual bottlenecks and depth-wise blocks in fp32, LeNet-5
/// in int8 (against the QDQ file run as written), sparse and auto kernels, 1 and 2 threads.
#[test]
fn every_isa_level_matches_onnx_runtime() {
    let Some(python) = ort_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let models =
        [("bottleneck", bottleneck(41, 0.9), false), ("mobile", mobile(42, 0.8), false), ("lenet5_q8", quantized(lenet(43, 0.8)), true)];
    for (name, graph, literal) in models {
        let onnx = dir.path().join(format!("{name}.onnx"));
        std::fs::write(&onnx, engine::onnx::export::export(&graph, &graph.output_shape().unwrap())).unwrap();
        let input = random_input(44, 3, &graph.input_shape);
        let reference = ort_run_with(&python, &onnx, &input, dir.path(), literal);
        for isa in engine::kernels::Isa::available() {
            for policy in [KernelPolicy::Auto, KernelPolicy::Sparse] {
                let options = Options { isa, ..Options::new(policy).unwrap() };
                let model = compile::compile(engine::load(&onnx).unwrap(), options).unwrap();
                for threads in [1, 2] {
                    let err = rel_err(&Session::new(&model, threads).unwrap().run(&input.data, 3).unwrap(), &reference.data);
                    assert!(err < 1e-4, "{name} {isa:?} {policy:?} {threads} threads: relative error {err}");
                }
            }
        }
    }
}
