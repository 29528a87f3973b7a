//! Model files: the native format round-trips and shrinks with sparsity, corrupt or hostile files
//! are errors (never panics), PyTorch-style ONNX graphs import, unsupported operators are named.

mod common;

use common::*;
use engine::onnx::proto::*;
use prost::Message;

#[test]
fn native_round_trip_and_size_shrinks_with_sparsity() {
    let g = mlp(7, 0.9);
    let bytes = engine::format::to_bytes(&g).unwrap();
    let back = engine::format::from_bytes(&bytes, "mem").unwrap();
    assert_eq!(back, g);
    let dense = engine::format::to_bytes(&mlp(7, 0.0)).unwrap().len();
    assert!(bytes.len() * 3 < dense, "90% sparse file {} bytes vs dense {dense}", bytes.len());
    let cnn = cnn(8, 0.5);
    assert_eq!(engine::format::from_bytes(&engine::format::to_bytes(&cnn).unwrap(), "mem").unwrap(), cnn);
}

#[test]
fn int8_weights_round_trip_through_both_formats_and_shrink_the_file() {
    let g = quantized(mlp(11, 0.9));
    let bytes = engine::format::to_bytes(&g).unwrap();
    assert_eq!(engine::format::from_bytes(&bytes, "mem").unwrap(), g);
    let fp32 = engine::format::to_bytes(&mlp(11, 0.9)).unwrap().len();
    assert!(bytes.len() * 5 < fp32 * 2, "int8 file {} bytes vs fp32 {fp32}", bytes.len());
    same_weights_through_qdq_onnx(&g);
    let c = quantized(cnn(12, 0.5));
    assert_eq!(engine::format::from_bytes(&engine::format::to_bytes(&c).unwrap(), "mem").unwrap(), c);
    same_weights_through_qdq_onnx(&c);
}

/// Exports `g` as QDQ ONNX, imports it back and finds every weighted layer with the same int8
/// values, scales and input quantization (activations come back as separate nodes, so the
/// graphs are compared layer by layer).
fn same_weights_through_qdq_onnx(g: &engine::graph::Graph) {
    let onnx = engine::onnx::export::export(g, &g.output_shape().unwrap());
    let back = engine::onnx::import::import_bytes(&onnx, "mem").unwrap();
    let mut compared = 0;
    for n in &g.nodes {
        let Some(w) = n.op.weight() else { continue };
        let m = back.nodes.iter().find(|m| m.name == n.name).unwrap_or_else(|| panic!("{} missing after import", n.name));
        assert_eq!(m.op.weight(), Some(w), "{}", n.name);
        compared += 1;
    }
    assert!(compared >= 3);
}

#[test]
fn corrupt_native_files_are_errors_not_panics() {
    for bytes in [engine::format::to_bytes(&cnn(9, 0.8)).unwrap(), engine::format::to_bytes(&quantized(mlp(9, 0.9))).unwrap()] {
        corrupt_file_is_an_error(bytes);
    }
}

fn corrupt_file_is_an_error(bytes: Vec<u8>) {
    for cut in [0, 1, 7, 8, 9, 100, bytes.len() / 2, bytes.len() - 1] {
        assert!(engine::format::from_bytes(&bytes[..cut], "cut").is_err(), "truncated at {cut}");
    }
    // Flip bytes all over the file (header, graph JSON, offsets, data): never a panic.
    let mut r = rng(10);
    for i in 0..400 {
        let mut b = bytes.clone();
        use rand::Rng;
        let pos = if i % 2 == 0 { r.random_range(0..b.len().min(4000)) } else { r.random_range(0..b.len()) };
        b[pos] = r.random();
        let _ = std::panic::catch_unwind(|| engine::format::from_bytes(&b, "flip")).expect("loader panicked");
    }
    let err = engine::format::from_bytes(b"definitely not a model", "junk").unwrap_err().to_string();
    assert!(err.contains("junk: not a valid model file"), "{err}");
}

#[test]
fn hostile_csr_indices_are_rejected() {
    let g = mlp(11, 0.9);
    let bytes = engine::format::to_bytes(&g).unwrap();
    // Rewrite the header's graph to claim a narrower weight than the indices allow.
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let hacked = text.replacen("\"shape\":[64,784]", "\"shape\":[64,7]", 1);
    let err = engine::format::from_bytes(hacked.as_bytes(), "hacked").map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("hacked"), "{err}");
}

fn tensor(name: &str, dims: &[i64], v: &[f32]) -> TensorProto {
    TensorProto { dims: dims.to_vec(), data_type: data_type::FLOAT, name: name.into(), float_data: v.to_vec(), ..Default::default() }
}

fn node(op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        op_type: op.into(),
        attribute,
        ..Default::default()
    }
}

fn model(nodes: Vec<NodeProto>, inits: Vec<TensorProto>, input_dims: &[i64], output: &str) -> Vec<u8> {
    let dim = |v: Option<i64>| DimensionProto { dim_value: v, dim_param: v.is_none().then(|| "N".to_string()) };
    let mut dims = vec![dim(None)];
    dims.extend(input_dims.iter().map(|&d| dim(Some(d))));
    let vi = |name: &str, dims: Vec<DimensionProto>| ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto { tensor_type: Some(TensorTypeProto { elem_type: 1, shape: Some(TensorShapeProto { dim: dims }) }) }),
    };
    ModelProto {
        ir_version: 8,
        graph: Some(GraphProto {
            node: nodes,
            name: "g".into(),
            initializer: inits,
            input: vec![vi("x", dims)],
            output: vec![vi(output, vec![])],
        }),
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 13 }],
        ..Default::default()
    }
    .encode_to_vec()
}

#[test]
fn pytorch_style_graph_imports_and_computes() {
    // Reshape -> MatMul -> Add(bias) -> Dropout -> Relu -> Identity, as torch.onnx writes them.
    let w = [1.0, -2.0, 0.5, 0.0, 3.0, 1.0]; // [in=3, out=2]
    let bytes = model(
        vec![
            node("Reshape", &["x", "shape"], "flat", vec![]),
            node("MatMul", &["flat", "w"], "mm", vec![]),
            node("Add", &["mm", "b"], "biased", vec![]),
            node("Dropout", &["biased"], "dropped", vec![]),
            node("Relu", &["dropped"], "act", vec![]),
            node("Identity", &["act"], "y", vec![]),
        ],
        vec![
            TensorProto { dims: vec![2], data_type: data_type::INT64, name: "shape".into(), int64_data: vec![-1, 3], ..Default::default() },
            tensor("w", &[3, 2], &w),
            tensor("b", &[2], &[0.5, -10.0]),
        ],
        &[1, 3],
        "y",
    );
    let g = engine::onnx::import::import_bytes(&bytes, "torch.onnx").unwrap();
    let model = engine::compile::compile(g, engine::compile::Options::new(Default::default()).unwrap()).unwrap();
    assert_eq!(
        model.layers.len(),
        2,
        "flatten + linear with bias and relu fused: {:?}",
        model.layers.iter().map(|l| l.kind).collect::<Vec<_>>()
    );
    let y = engine::exec::Session::new(&model, 1).unwrap().run(&[1.0, 2.0, 3.0], 1).unwrap();
    // x W = [1*1 + 2*0.5 + 3*3, 1*-2 + 0 + 3*1] = [11, 1]; + b = [11.5, -9]; relu = [11.5, 0].
    assert_eq!(y, vec![11.5, 0.0]);
}

#[test]
fn batchnorm_after_conv_folds_into_it() {
    let bn = |n: &str, v: f32| tensor(n, &[1], &[v]);
    let bytes = model(
        vec![
            node(
                "Conv",
                &["x", "w"],
                "c",
                vec![AttributeProto { name: "kernel_shape".into(), ints: vec![1, 1], r#type: 7, ..Default::default() }],
            ),
            node("BatchNormalization", &["c", "g", "beta", "mean", "var"], "y", vec![]),
        ],
        vec![tensor("w", &[1, 1, 1, 1], &[2.0]), bn("g", 3.0), bn("beta", 1.0), bn("mean", 0.5), bn("var", 4.0 - 1e-5)],
        &[1, 2, 2],
        "y",
    );
    let g = engine::onnx::import::import_bytes(&bytes, "bn.onnx").unwrap();
    let model = engine::compile::compile(g, engine::compile::Options::new(Default::default()).unwrap()).unwrap();
    assert_eq!(model.layers.len(), 1, "BatchNormalization folded into the convolution");
    let y = engine::exec::Session::new(&model, 1).unwrap().run(&[1.0, 2.0, 3.0, 4.0], 1).unwrap();
    // (2x - 0.5) * 3 / 2 + 1
    for (x, y) in [1.0f32, 2.0, 3.0, 4.0].iter().zip(y) {
        assert!((y - ((2.0 * x - 0.5) * 1.5 + 1.0)).abs() < 1e-4);
    }
}

#[test]
fn every_unsupported_operator_is_named_with_its_count() {
    let nodes = vec![
        node("LSTM", &["x"], "a", vec![]),
        node("TopK", &["a"], "b", vec![]),
        node("Relu", &["b"], "c", vec![]),
        node("TopK", &["c"], "y", vec![]),
    ];
    let bytes = model(nodes, vec![], &[4], "y");
    let err = engine::onnx::import::import_bytes(&bytes, "rnn.onnx").unwrap_err().to_string();
    assert!(err.contains("unsupported ONNX operators: LSTM (1 node), TopK (2 nodes);") && err.contains("Gemm"), "{err}");
    assert!(!err.contains('\n') && !err.contains("Relu ("), "{err}");
    let err = engine::onnx::import::import_bytes(b"\xff\xff\xff garbage", "bad.onnx").unwrap_err().to_string();
    assert!(err.contains("bad.onnx: not a valid ONNX file"), "{err}");
}

#[test]
fn shape_mismatch_is_an_error() {
    let mut g = mlp(12, 0.5);
    if let engine::graph::Op::Linear { weight, .. } = &mut g.nodes[1].op {
        weight.shape = vec![32, 60];
        weight.data.truncate(32 * 60);
    }
    let err = g.infer_shapes().unwrap_err().to_string();
    assert!(err.contains("fc1") && err.contains("does not fit"), "{err}");
}

/// Grouped convolutions run in fp32: a file that gives one an int8 weight (whose input the
/// kernel would not quantize) is refused at load rather than run without its quantization.
#[test]
fn quantized_grouped_convolutions_are_refused() {
    let mut g = mobile(5, 0.5);
    let n = g.nodes.iter_mut().find(|n| matches!(n.op, engine::graph::Op::GroupConv { .. })).unwrap();
    let engine::graph::Op::GroupConv { weight, .. } = &mut n.op else { unreachable!() };
    weight.quant = Some(engine::graph::Quant { scales: vec![0.01; weight.rows()], input_scale: 0.02, input_zero: 0 });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grouped.sparse");
    engine::format::save(&g, &path).unwrap();
    let err = engine::load(&path).unwrap_err().to_string();
    assert!(err.contains("grouped convolutions run in fp32") && !err.contains('\n'), "{err}");
}

/// Values near the edges of 32- and 64-bit arithmetic, where shape and window sizes used to wrap.
const EDGES: [usize; 8] = [1 << 31, (1 << 32) - 1, 1 << 32, 1 << 62, (1 << 62) + 10, (1 << 63) - 1, 1 << 63, usize::MAX];

/// LeNet-5 with one window or the input shape replaced by a hostile value, in both formats: each
/// is refused at load with one line (before, pads of 2^62 passed every check and the one-sample
/// direct convolution stored out of bounds).
#[test]
fn hostile_geometries_are_refused_at_load() {
    let mut cases: Vec<(String, engine::graph::Graph)> = Vec::new();
    for v in EDGES {
        let with = |what: &str, edit: &dyn Fn(&mut engine::graph::Window)| {
            let mut g = lenet(3, 0.5);
            for n in &mut g.nodes {
                if let engine::graph::Op::Conv { window, .. } | engine::graph::Op::MaxPool { window } = &mut n.op
                    && (n.name == "c3" || (n.name == "s4" && what.starts_with("pool")))
                {
                    edit(window);
                }
            }
            (format!("{what} {v}"), g)
        };
        cases.push(with("pads", &|w| w.pads[0] = v));
        cases.push(with("pads right", &|w| w.pads[3] = v));
        cases.push(with("dilation", &|w| w.dilation[0] = v));
        cases.push(with("stride", &|w| w.stride[1] = v));
        cases.push(with("pool pads", &|w| w.pads[2] = v));
        cases.push(with("pool kernel", &|w| w.kernel = [v, 2]));
        let mut g = lenet(3, 0.5);
        g.input_shape = vec![1, v, 28];
        cases.push((format!("input {v}"), g.clone()));
        g.input_shape = vec![v, v, v];
        cases.push((format!("input cube {v}"), g));
    }
    // A pool whose pads reach the kernel has windows with no input at all (inf / NaN before).
    let mut g = lenet(3, 0.5);
    if let engine::graph::Op::MaxPool { window } = &mut g.nodes[1].op {
        window.pads = [2, 0, 0, 0];
    }
    cases.push(("pool pads = kernel".into(), g));
    for (what, g) in cases {
        let native = engine::format::to_bytes(&g).unwrap();
        let err = engine::load_bytes(&native, "hostile.sparse").expect_err(&what).to_string();
        assert!(!err.contains('\n') && err.contains("hostile.sparse"), "{what}: {err}");
        // (Values past i64::MAX reach ONNX as negative numbers, refused as such.)
        let onnx = engine::onnx::export::export(&g, &[10]);
        let err = engine::load_bytes(&onnx, "hostile.onnx").expect_err(&what).to_string();
        assert!(!err.contains('\n'), "{what}: {err}");
    }
}

/// ONNX weights whose dims multiply past the cap (or wrap to 0) are refused without allocating.
#[test]
fn onnx_weights_beyond_the_cap_are_refused() {
    for dims in [[1i64 << 60, 784], [1 << 32, 1 << 32], [1 << 20, 1 << 9], [-1, 784]] {
        let bytes = model(vec![node("Gemm", &["x", "w"], "y", vec![])], vec![tensor("w", &dims, &[])], &[784], "y");
        let err = engine::load_bytes(&bytes, "big.onnx").unwrap_err().to_string();
        assert!(err.contains("big.onnx") && !err.contains('\n'), "{dims:?}: {err}");
    }
    let negative_pads = AttributeProto { name: "pads".into(), ints: vec![-1, 0, 0, 0], ..Default::default() };
    let bytes = model(
        vec![node(
            "MaxPool",
            &["x"],
            "y",
            vec![AttributeProto { name: "kernel_shape".into(), ints: vec![2, 2], ..Default::default() }, negative_pads],
        )],
        vec![],
        &[1, 8, 8],
        "y",
    );
    let err = engine::load_bytes(&bytes, "neg.onnx").unwrap_err().to_string();
    assert!(err.contains("negative"), "{err}");
}

/// PyTorch's exporters share equal constants through Identity nodes and write some as
/// `Constant` nodes; a weight or bias reached either way is a constant.
#[test]
fn constants_through_identity_and_constant_nodes() {
    let attr_t = |t: TensorProto| AttributeProto { name: "value".into(), t: Some(t), r#type: 4, ..Default::default() };
    let bytes = model(
        vec![
            node("Constant", &[], "w", vec![attr_t(tensor("", &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))]),
            node("Identity", &["shared_bias"], "b", vec![]),
            node("Gemm", &["x", "w", "b"], "y", vec![]),
        ],
        vec![tensor("shared_bias", &[3], &[0.5, -0.5, 1.0])],
        &[2],
        "y",
    );
    let g = engine::load_bytes(&bytes, "constants.onnx").unwrap();
    let engine::graph::Op::Linear { weight, bias, .. } = &g.nodes[0].op else { panic!("{:?}", g.nodes) };
    assert_eq!((weight.shape.clone(), bias.clone()), (vec![3, 2], vec![0.5, -0.5, 1.0]));
}

/// A Reshape to `[batch, features]` must name the feature count the value has; a fixed batch of 1
/// (PyTorch's exporter without dynamic axes) counts as the batch, a 1 with a dynamic batch does not.
#[test]
fn reshape_to_features_checks_the_count() {
    let reshape = |shape: &[f32], batch: i64| {
        let mut bytes_model = model(
            vec![node("Reshape", &["x", "shape"], "y", vec![])],
            vec![TensorProto {
                dims: vec![2],
                data_type: data_type::INT64,
                name: "shape".into(),
                int64_data: shape.iter().map(|&v| v as i64).collect(),
                ..Default::default()
            }],
            &[4, 7, 7],
            "y",
        );
        let mut m = ModelProto::decode(bytes_model.as_slice()).unwrap();
        m.graph.as_mut().unwrap().input[0].r#type.as_mut().unwrap().tensor_type.as_mut().unwrap().shape.as_mut().unwrap().dim[0] =
            DimensionProto { dim_value: Some(batch), dim_param: None };
        bytes_model = m.encode_to_vec();
        engine::load_bytes(&bytes_model, "reshape.onnx")
    };
    assert!(reshape(&[1.0, 196.0], 1).is_ok(), "[1, 196] with a fixed batch of 1");
    assert!(reshape(&[-1.0, 196.0], 3).is_ok());
    let err = reshape(&[0.0, 7.0], 1).unwrap_err().to_string();
    assert!(err.contains("cannot reshape samples of [4, 7, 7] to [0.0, 7.0]"), "{err}");
    assert!(reshape(&[1.0, 196.0], 3).is_err(), "[1, 196] with a batch of 3 is not a flatten");
}

/// The engine guide's list of operators (engine/README.md) is the importer's own (`operators()`),
/// in its order.
#[test]
fn readme_lists_exactly_the_operators_the_importer_reads() {
    let readme = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme.find("- Operators (the importer's list").expect("the engine guide's operator list");
    let list = &readme[start..][..readme[start..].find(".\n").expect("the list ends with a period")];
    let listed: Vec<&str> = list.split('`').skip(3).step_by(2).collect();
    assert_eq!(listed, engine::onnx::import::operators(), "engine/README.md's operator list");
}
