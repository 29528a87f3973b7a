//! Helpers shared by the engine's integration tests: random graphs and ONNX Runtime as the
//! reference implementation.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use engine::graph::{Activation, Graph, Node, Op, Weight, Window};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The Python with ONNX Runtime that `scripts/test` prepares. Without it the ORT comparisons
/// are skipped locally with a note, and fail under CI (CI=true), where it must exist.
pub fn ort_python() -> Option<PathBuf> {
    let found = std::env::var_os("ENGINE_TEST_PYTHON").map(PathBuf::from).filter(|p| p.exists());
    if found.is_none() {
        assert!(std::env::var("CI").is_err(), "ENGINE_TEST_PYTHON must name a Python with onnxruntime under CI");
        engine::testing::record_skip("the ONNX Runtime comparison (ENGINE_TEST_PYTHON not set; scripts/test sets it up)");
    }
    found
}

/// Runs `model` on `input` in ONNX Runtime.
pub fn ort_run(python: &Path, model: &Path, input: &engine::npy::Array, dir: &Path) -> engine::npy::Array {
    ort_run_with(python, model, input, dir, false)
}

/// `ort_run`; with `literal`, graph optimisations are off (QDQ nodes run as written).
pub fn ort_run_with(python: &Path, model: &Path, input: &engine::npy::Array, dir: &Path, literal: bool) -> engine::npy::Array {
    let (inp, out) = (dir.join("ort_in.npy"), dir.join("ort_out.npy"));
    engine::npy::write(&inp, input).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ort_run.py");
    let mut cmd = Command::new(python);
    cmd.arg(script).arg(model).arg(&inp).arg(&out);
    if literal {
        cmd.arg("--literal");
    }
    let status = cmd.status().expect("running python");
    assert!(status.success(), "ONNX Runtime failed on {}", model.display());
    engine::npy::read(&out).unwrap()
}

/// Max |a - b| over max |b|: the relative error the issue bounds by 1e-4.
pub fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// A random weight of `shape`, with `sparsity` of it zero (smallest magnitudes).
pub fn weight(rng: &mut StdRng, shape: &[usize], sparsity: f64) -> Weight {
    let n: usize = shape.iter().product();
    let fan_in = n / shape[0];
    let scale = (2.0 / fan_in as f32).sqrt();
    let mut data: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0f32) * scale * 1.7).collect();
    let mut mags: Vec<f32> = data.iter().map(|v| v.abs()).collect();
    mags.sort_by(f32::total_cmp);
    let k = (n as f64 * sparsity).round() as usize;
    if k > 0 {
        let threshold = mags[k - 1];
        let mut pruned = 0;
        for v in data.iter_mut() {
            if v.abs() <= threshold && pruned < k {
                *v = 0.0;
                pruned += 1;
            }
        }
    }
    Weight::dense(shape.to_vec(), data)
}

pub fn vector(rng: &mut StdRng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

pub fn node(name: &str, op: Op, inputs: &[&str]) -> Node {
    Node { name: name.into(), op, inputs: inputs.iter().map(|s| s.to_string()).collect(), output: name.into() }
}

/// 784-64-32-10 MLP with ReLUs and a softmax, at `sparsity`.
pub fn mlp(seed: u64, sparsity: f64) -> Graph {
    mlp_with(seed, sparsity, [784, 64, 32, 10])
}

/// A three-layer MLP with the given widths (input first).
pub fn mlp_with(seed: u64, sparsity: f64, dims: [usize; 4]) -> Graph {
    let mut r = rng(seed);
    let mut nodes = vec![];
    let mut prev = "input".to_string();
    for i in 0..3 {
        let name = format!("fc{i}");
        let act = if i < 2 { Activation::Relu } else { Activation::None };
        let op =
            Op::Linear { weight: weight(&mut r, &[dims[i + 1], dims[i]], sparsity), bias: vector(&mut r, dims[i + 1], -0.1, 0.1), act };
        nodes.push(node(&name, op, &[&prev]));
        prev = name;
    }
    nodes.push(node("probs", Op::Softmax { masked: false, zero_nan: false }, &["fc2"]));
    Graph { input: "input".into(), input_shape: vec![dims[0]], output: "probs".into(), nodes, ports: None }
}

#[allow(clippy::too_many_arguments)]
fn conv(r: &mut StdRng, name: &str, input: &str, cin: usize, cout: usize, window: Window, sparsity: f64, act: Activation) -> Node {
    let w = weight(r, &[cout, cin, window.kernel[0], window.kernel[1]], sparsity);
    node(name, Op::Conv { weight: w, bias: vector(r, cout, -0.1, 0.1), window, act }, &[input])
}

fn win(k: usize, stride: usize, pad: usize, dilation: usize) -> Window {
    Window { kernel: [k, k], stride: [stride, stride], pads: [pad; 4], dilation: [dilation, dilation], ceil_mode: false }
}

/// A CNN on 1x28x28 images with every operator the engine supports: convolutions (stride,
/// padding, dilation), an unfolded BatchNorm, max and average pooling, a residual block,
/// global average pooling, flatten, linear and softmax.
pub fn cnn(seed: u64, sparsity: f64) -> Graph {
    let mut r = rng(seed);
    let nodes = vec![
        conv(&mut r, "conv1", "input", 1, 8, win(3, 1, 1, 1), sparsity * 0.5, Activation::None),
        node(
            "bn1",
            Op::Affine { scale: vector(&mut r, 8, 0.5, 1.5), shift: vector(&mut r, 8, -0.2, 0.2), act: Activation::None },
            &["conv1"],
        ),
        node("relu1", Op::Relu, &["bn1"]),
        node("pool1", Op::MaxPool { window: win(2, 2, 0, 1) }, &["relu1"]),
        conv(&mut r, "conv2", "pool1", 8, 16, win(3, 1, 2, 2), sparsity, Activation::Relu),
        conv(&mut r, "res_a", "conv2", 16, 16, win(3, 1, 1, 1), sparsity, Activation::Relu),
        conv(&mut r, "res_b", "res_a", 16, 16, win(3, 1, 1, 1), sparsity, Activation::None),
        node("res_add", Op::Add { act: Activation::Relu }, &["res_b", "conv2"]),
        node("pool2", Op::AvgPool { window: win(2, 2, 0, 1), count_include_pad: false }, &["res_add"]),
        conv(&mut r, "conv3", "pool2", 16, 24, win(3, 2, 1, 1), sparsity, Activation::Relu),
        node("gap", Op::GlobalAvgPool, &["conv3"]),
        node("flat", Op::Flatten, &["gap"]),
        node(
            "fc",
            Op::Linear { weight: weight(&mut r, &[10, 24], sparsity), bias: vector(&mut r, 10, -0.1, 0.1), act: Activation::None },
            &["flat"],
        ),
        node("probs", Op::Softmax { masked: false, zero_nan: false }, &["fc"]),
    ];
    Graph { input: "input".into(), input_shape: vec![1, 28, 28], output: "probs".into(), nodes, ports: None }
}

/// A stack of four 3x3 convolutions (8 channels, stride 1, padding 1) on 3x32x32 images, then a
/// max pool: output rows of 32, two whole vectors, as the 96x96 benchmark stack's rows of 96.
pub fn conv_stack(seed: u64, sparsity: f64) -> Graph {
    let mut r = rng(seed);
    let mut nodes = vec![conv(&mut r, "conv0", "input", 3, 8, win(3, 1, 1, 1), 0.0, Activation::Relu)];
    for i in 1..4 {
        nodes.push(conv(&mut r, &format!("conv{i}"), &format!("conv{}", i - 1), 8, 8, win(3, 1, 1, 1), sparsity, Activation::Relu));
    }
    nodes.push(node("pool", Op::MaxPool { window: win(2, 2, 0, 1) }, &["conv3"]));
    Graph { input: "input".into(), input_shape: vec![3, 32, 32], output: "pool".into(), nodes, ports: None }
}

/// LeNet-5 style: conv-pool-conv-pool, flatten, three linear layers (logits out).
pub fn lenet(seed: u64, sparsity: f64) -> Graph {
    let mut r = rng(seed);
    let lin = |r: &mut StdRng, name: &str, input: &str, i: usize, o: usize, act| {
        node(name, Op::Linear { weight: weight(r, &[o, i], sparsity), bias: vector(r, o, -0.1, 0.1), act }, &[input])
    };
    let nodes = vec![
        conv(&mut r, "c1", "input", 1, 6, win(5, 1, 2, 1), sparsity, Activation::Relu),
        node("s2", Op::MaxPool { window: win(2, 2, 0, 1) }, &["c1"]),
        conv(&mut r, "c3", "s2", 6, 16, win(5, 1, 0, 1), sparsity, Activation::Relu),
        node("s4", Op::MaxPool { window: win(2, 2, 0, 1) }, &["c3"]),
        node("flat", Op::Flatten, &["s4"]),
        lin(&mut r, "f5", "flat", 400, 120, Activation::Relu),
        lin(&mut r, "f6", "f5", 120, 84, Activation::Relu),
        lin(&mut r, "f7", "f6", 84, 10, Activation::None),
    ];
    Graph { input: "input".into(), input_shape: vec![1, 28, 28], output: "f7".into(), nodes, ports: None }
}

pub fn random_input(seed: u64, batch: usize, per_sample: &[usize]) -> engine::npy::Array {
    let mut r = rng(seed);
    let n: usize = per_sample.iter().product::<usize>() * batch;
    let mut shape = vec![batch];
    shape.extend(per_sample);
    engine::npy::Array { shape, data: vector(&mut r, n, -1.0, 1.0) }
}

/// The graph with every linear layer and convolution quantized: int8 weights with per-row
/// scales, inputs quantized to uint8 over [-2, 2] (zero point 128).
pub fn quantized(mut g: Graph) -> Graph {
    for n in &mut g.nodes {
        if let Op::Linear { weight, .. } | Op::Conv { weight, .. } = &mut n.op {
            let cols = weight.cols();
            let scales: Vec<f32> =
                weight.data.chunks(cols).map(|r| (r.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0).max(1e-6)).collect();
            for (i, v) in weight.data.iter_mut().enumerate() {
                *v = (*v / scales[i / cols]).round() * scales[i / cols];
            }
            weight.quant = Some(engine::graph::Quant { scales, input_scale: 4.0 / 255.0, input_zero: 128 });
        }
    }
    g
}

/// Quantizes `model` with ONNX Runtime's own quantizer into `out` (`format`: qdq, qoperator or
/// dynamic; see `tests/ort_quantize.py`).
pub fn ort_quantize(python: &Path, model: &Path, out: &Path, format: &str, per_channel: bool) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ort_quantize.py");
    let status = Command::new(python)
        .arg(script)
        .arg(model)
        .arg(out)
        .arg(format)
        .arg(if per_channel { "1" } else { "0" })
        .stderr(std::process::Stdio::null())
        .status()
        .expect("running python");
    assert!(status.success(), "ONNX Runtime's quantizer failed on {}", model.display());
}

/// A MobileNet / EfficientNet-style network on 3x20x20 images with the operators of those
/// exports: ReLU6 (Clip), depth-wise and grouped convolutions, a squeeze-and-excitation block
/// (global pooling, 1x1 convolutions, Sigmoid, a broadcast Mul), SiLU as `x * Sigmoid(x)`,
/// HardSwish, LeakyRelu, Tanh, Erf, GELU, Sqrt, constants on either side of Sub, Div and Add,
/// and a channel Concat; logits out (no Softmax to hide errors).
/// A ResNet-50-style network at reduced width on 3x24x24 images: a 7x7 stride-2 stem, a 3x3
/// stride-2 max pool, then two bottleneck blocks (1x1, 3x3, 1x1 convolutions and a residual add
/// with ReLU), the second at stride 2 with a stride-2 1x1 projection, global average pooling and
/// a linear classifier. The first convolution stays dense, as pruned ResNets keep it.
pub fn bottleneck(seed: u64, sparsity: f64) -> Graph {
    let mut r = rng(seed);
    let mut nodes = vec![
        conv(&mut r, "stem", "input", 3, 16, win(7, 2, 3, 1), 0.0, Activation::Relu),
        node("pool", Op::MaxPool { window: win(3, 2, 1, 1) }, &["stem"]),
    ];
    let mut input = "pool".to_string();
    for (b, (cin, mid, out, stride)) in [(16, 8, 32, 1), (32, 16, 48, 2)].into_iter().enumerate() {
        let name = |part: &str| format!("b{b}_{part}");
        nodes.push(conv(&mut r, &name("reduce"), &input, cin, mid, win(1, 1, 0, 1), sparsity, Activation::Relu));
        nodes.push(conv(&mut r, &name("conv"), &name("reduce"), mid, mid, win(3, stride, 1, 1), sparsity, Activation::Relu));
        nodes.push(conv(&mut r, &name("expand"), &name("conv"), mid, out, win(1, 1, 0, 1), sparsity, Activation::None));
        nodes.push(conv(&mut r, &name("project"), &input, cin, out, win(1, stride, 0, 1), sparsity, Activation::None));
        nodes.push(node(&name("add"), Op::Add { act: Activation::None }, &[&name("expand"), &name("project")]));
        nodes.push(node(&name("relu"), Op::Relu, &[&name("add")]));
        input = name("relu");
    }
    nodes.push(node("gap", Op::GlobalAvgPool, &[&input]));
    nodes.push(node("flat", Op::Flatten, &["gap"]));
    let fc = Op::Linear { weight: weight(&mut r, &[10, 48], sparsity), bias: vector(&mut r, 10, -0.1, 0.1), act: Activation::None };
    nodes.push(node("fc", fc, &["flat"]));
    Graph { input: "input".into(), input_shape: vec![3, 24, 24], output: "fc".into(), nodes, ports: None }
}

/// YOLOv5's (v6.0) stem alone: a dense 6x6 convolution at stride 2 with pads of 2, 3 channels
/// to 32, on 3x64x64 images.
pub fn yolo_stem(seed: u64) -> Graph {
    let nodes = vec![conv(&mut rng(seed), "stem", "input", 3, 32, win(6, 2, 2, 1), 0.0, Activation::Relu)];
    Graph { input: "input".into(), input_shape: vec![3, 64, 64], output: "stem".into(), nodes, ports: None }
}

/// Two of ResNet-50's identity bottleneck blocks (1x1, 3x3 and 1x1 convolutions, the block's
/// input added back, ReLU) after a 3x3 stem on 3x20x20 images, then the classifier: each block's
/// input is read by its first convolution and again by its addition.
pub fn identity_bottlenecks(seed: u64, sparsity: f64) -> Graph {
    let mut r = rng(seed);
    let mut nodes = vec![conv(&mut r, "stem", "input", 3, 16, win(3, 1, 1, 1), 0.0, Activation::Relu)];
    let mut input = "stem".to_string();
    for b in ["a", "b"] {
        let name = |part: &str| format!("{b}_{part}");
        nodes.push(conv(&mut r, &name("reduce"), &input, 16, 8, win(1, 1, 0, 1), sparsity, Activation::Relu));
        nodes.push(conv(&mut r, &name("conv"), &name("reduce"), 8, 8, win(3, 1, 1, 1), sparsity, Activation::Relu));
        nodes.push(conv(&mut r, &name("expand"), &name("conv"), 8, 16, win(1, 1, 0, 1), sparsity, Activation::None));
        nodes.push(node(&name("add"), Op::Add { act: Activation::None }, &[&name("expand"), &input]));
        nodes.push(node(&name("relu"), Op::Relu, &[&name("add")]));
        input = name("relu");
    }
    nodes.extend(classifier(&mut r, &input, 16, sparsity));
    Graph { input: "input".into(), input_shape: vec![3, 20, 20], output: "fc".into(), nodes, ports: None }
}

/// Global average pooling, flattening and a linear layer to 10 logits on the `features`
/// channels of `input` (the nodes `gap`, `flat` and `fc`).
fn classifier(r: &mut StdRng, input: &str, features: usize, sparsity: f64) -> Vec<Node> {
    let fc = Op::Linear { weight: weight(r, &[10, features], sparsity), bias: vector(r, 10, -0.1, 0.1), act: Activation::None };
    vec![node("gap", Op::GlobalAvgPool, &[input]), node("flat", Op::Flatten, &["gap"]), node("fc", fc, &["flat"])]
}

/// MobileNetV2's inverted residual blocks at reduced size on 3x18x18 images: pointwise
/// expansions (ReLU6 as Clip, a plain ReLU, and EfficientNet's SiLU as `x * Sigmoid(x)`), each read only by a
/// depth-wise 3x3 convolution (stride 1 and 2), pointwise projections, a residual addition, then
/// global pooling and a linear classifier; the stem and the depth-wise weights dense.
pub fn inverted_residual(seed: u64, sparsity: f64) -> Graph {
    use engine::graph::{BinaryKind, Unary};
    use engine::ops::{Clip, Sigmoid};
    let mut r = rng(seed);
    let depthwise = |r: &mut StdRng, name: &str, input: &str, c: usize, stride: usize| {
        let w = weight(r, &[c, 1, 3, 3], 0.0);
        node(
            name,
            Op::GroupConv { weight: w, bias: vector(r, c, -0.1, 0.1), window: win(3, stride, 1, 1), groups: c, act: Activation::Relu },
            &[input],
        )
    };
    let relu6 = |name: &str, input: &str| node(name, Op::Unary(Unary::Clip(Clip { lo: 0.0, hi: 6.0 })), &[input]);
    let nodes = vec![
        conv(&mut r, "stem", "input", 3, 8, win(3, 1, 1, 1), 0.0, Activation::Relu),
        conv(&mut r, "e1", "stem", 8, 24, win(1, 1, 0, 1), sparsity, Activation::None),
        relu6("e1_relu6", "e1"),
        depthwise(&mut r, "d1", "e1_relu6", 24, 1),
        conv(&mut r, "p1", "d1", 24, 8, win(1, 1, 0, 1), sparsity, Activation::None),
        node("add", Op::Add { act: Activation::None }, &["p1", "stem"]),
        conv(&mut r, "e2", "add", 8, 32, win(1, 1, 0, 1), sparsity, Activation::Relu),
        depthwise(&mut r, "d2", "e2", 32, 2),
        conv(&mut r, "p2", "d2", 32, 16, win(1, 1, 0, 1), sparsity, Activation::None),
        conv(&mut r, "e3", "p2", 16, 48, win(1, 1, 0, 1), sparsity, Activation::None),
        node("e3_sig", Op::Unary(Unary::Sigmoid(Sigmoid)), &["e3"]),
        node("e3_silu", Op::Binary { kind: BinaryKind::Mul, constant: None, constant_first: false }, &["e3", "e3_sig"]),
        depthwise(&mut r, "d3", "e3_silu", 48, 1),
    ];
    let nodes = [nodes, classifier(&mut r, "d3", 48, sparsity)].concat();
    Graph { input: "input".into(), input_shape: vec![3, 18, 18], output: "fc".into(), nodes, ports: None }
}

/// YOLOv5's concatenations on 4x16x16 images: a C3-like block (a convolution's output joined
/// with another that also feeds a later layer), then SPPF (a 1x1 convolution and three 5x5 max
/// pools of stride 1 in a chain, all four joined), a join of three convolutions' outputs, and
/// two convolutions on that join whose residual is one of its inputs.
pub fn concats(seed: u64, sparsity: f64) -> Graph {
    let mut r = rng(seed);
    let pool = |name: &str, input: &str| node(name, Op::MaxPool { window: win(5, 1, 2, 1) }, &[input]);
    let nodes = vec![
        conv(&mut r, "stem", "input", 4, 8, win(3, 1, 1, 1), 0.0, Activation::Relu),
        conv(&mut r, "a", "stem", 8, 8, win(1, 1, 0, 1), sparsity, Activation::Relu),
        conv(&mut r, "b", "a", 8, 8, win(3, 1, 1, 1), sparsity, Activation::Relu),
        conv(&mut r, "c", "stem", 8, 8, win(1, 1, 0, 1), sparsity, Activation::Relu),
        node("c3", Op::Concat { axis: 0 }, &["b", "c"]),
        conv(&mut r, "sppf_in", "c3", 16, 8, win(1, 1, 0, 1), sparsity, Activation::Relu),
        pool("m1", "sppf_in"),
        pool("m2", "m1"),
        pool("m3", "m2"),
        node("sppf", Op::Concat { axis: 0 }, &["sppf_in", "m1", "m2", "m3"]),
        conv(&mut r, "sppf_out", "sppf", 32, 8, win(1, 1, 0, 1), sparsity, Activation::Relu),
        node("joined", Op::Concat { axis: 0 }, &["sppf_out", "a", "stem"]),
        conv(&mut r, "tail", "joined", 24, 8, win(3, 1, 1, 1), sparsity, Activation::Relu),
        conv(&mut r, "tail2", "tail", 8, 8, win(3, 1, 1, 1), sparsity, Activation::None),
        node("residual", Op::Add { act: Activation::Relu }, &["tail2", "sppf_out"]),
    ];
    let nodes = [nodes, classifier(&mut r, "residual", 8, sparsity)].concat();
    Graph { input: "input".into(), input_shape: vec![4, 16, 16], output: "fc".into(), nodes, ports: None }
}

pub fn mobile(seed: u64, sparsity: f64) -> Graph {
    use engine::graph::{BinaryKind, Operand, Unary};
    use engine::ops::{Clip, Erf, Gelu, HardSigmoid, HardSwish, LeakyRelu, Sigmoid, Sqrt, Tanh};
    let mut r = rng(seed);
    let group_conv = |r: &mut StdRng, name: &str, input: &str, c: usize, groups: usize, window: Window| {
        let w = weight(r, &[c, c / groups, window.kernel[0], window.kernel[1]], sparsity * 0.5);
        node(name, Op::GroupConv { weight: w, bias: vector(r, c, -0.1, 0.1), window, groups, act: Activation::None }, &[input])
    };
    let unary = |name: &str, f: Unary, input: &str| node(name, Op::Unary(f), &[input]);
    let binary =
        |name: &str, kind: BinaryKind, inputs: &[&str]| node(name, Op::Binary { kind, constant: None, constant_first: false }, inputs);
    let with_constant = |r: &mut StdRng, name: &str, kind: BinaryKind, shape: &[usize], first: bool, input: &str| {
        let n = shape.iter().product();
        let constant = Some(Operand { shape: shape.to_vec(), values: vector(r, n, 0.5, 1.5) });
        node(name, Op::Binary { kind, constant, constant_first: first }, &[input])
    };
    let nodes = vec![
        conv(&mut r, "stem", "input", 3, 16, win(3, 2, 1, 1), 0.0, Activation::None),
        unary("relu6", Unary::Clip(Clip { lo: 0.0, hi: 6.0 }), "stem"),
        group_conv(&mut r, "dw", "relu6", 16, 16, win(3, 1, 1, 1)),
        unary("dw_sig", Unary::Sigmoid(Sigmoid), "dw"),
        binary("silu", BinaryKind::Mul, &["dw", "dw_sig"]),
        conv(&mut r, "pw", "silu", 16, 24, win(1, 1, 0, 1), sparsity, Activation::None),
        node("se_pool", Op::GlobalAvgPool, &["pw"]),
        conv(&mut r, "se_reduce", "se_pool", 24, 8, win(1, 1, 0, 1), 0.0, Activation::Relu),
        conv(&mut r, "se_expand", "se_reduce", 8, 24, win(1, 1, 0, 1), 0.0, Activation::None),
        unary("se_gate", Unary::HardSigmoid(HardSigmoid { alpha: 0.2, beta: 0.5 }), "se_expand"),
        binary("se", BinaryKind::Mul, &["pw", "se_gate"]),
        unary("hswish", Unary::HardSwish(HardSwish), "se"),
        group_conv(&mut r, "grouped", "hswish", 24, 4, win(3, 2, 1, 1)),
        unary("leaky", Unary::LeakyRelu(LeakyRelu { alpha: 0.1 }), "grouped"),
        unary("tanh", Unary::Tanh(Tanh), "grouped"),
        node("cat", Op::Concat { axis: 0 }, &["leaky", "tanh", "grouped"]),
        with_constant(&mut r, "scale", BinaryKind::Mul, &[1, 72, 1, 1], false, "cat"),
        with_constant(&mut r, "one_minus", BinaryKind::Sub, &[], true, "scale"),
        with_constant(&mut r, "div", BinaryKind::Div, &[72, 1, 1], false, "one_minus"),
        with_constant(&mut r, "shift", BinaryKind::Add, &[5], false, "div"),
        unary("gelu", Unary::Gelu(Gelu { tanh: false }), "shift"),
        unary("erf", Unary::Erf(Erf), "gelu"),
        unary("sig", Unary::Sigmoid(Sigmoid), "erf"),
        unary("sqrt", Unary::Sqrt(Sqrt), "sig"),
    ];
    let nodes = [nodes, classifier(&mut r, "sqrt", 72, sparsity)].concat();
    Graph { input: "input".into(), input_shape: vec![3, 20, 20], output: "fc".into(), nodes, ports: None }
}
