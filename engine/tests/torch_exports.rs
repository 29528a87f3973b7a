//! ONNX files exactly as PyTorch 2.x writes them (`scripts/make-torch-fixtures.py`: both of its
//! exporters; reduced-width ResNet-18, a 90%-pruned one, MobileNetV2, SqueezeNet 1.1 and
//! EfficientNet-B0 built from torchvision's own blocks, and ceil-mode pooling):
//! the default exporter's IR 10 / opset 20 files with weights in external data and global
//! pooling as ReduceMean, the legacy exporter's Flatten and GlobalAveragePool. Each matches ONNX
//! Runtime at 1e-4 with every kernel policy. External data is read only from inside the model's
//! folder, at offsets and lengths checked against the file.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use engine::compile::{self, KernelPolicy, Options};
use engine::exec::Session;
use engine::onnx::proto::*;
use prost::Message;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/torch")
}

#[test]
fn pytorch_exports_load_and_match_onnx_runtime() {
    let mut models: Vec<PathBuf> =
        std::fs::read_dir(fixtures()).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "onnx")).collect();
    models.sort();
    assert!(models.len() >= 12, "the PyTorch fixtures are missing");
    let python = ort_python();
    let dir = tempfile::tempdir().unwrap();
    for path in models {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let stem = name.split('.').next().unwrap();
        let input = engine::npy::read(&fixtures().join(format!("{stem}.input.npy"))).unwrap();
        let graph = engine::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let Some(python) = &python else { continue };
        let reference = ort_run(python, &path, &input, dir.path());
        for policy in [KernelPolicy::Auto, KernelPolicy::Dense, KernelPolicy::Sparse] {
            let model = compile::compile(graph.clone(), Options::new(policy).unwrap()).unwrap();
            for threads in [1, 2] {
                let got = Session::new(&model, threads).unwrap().run(&input.data, input.shape[0]).unwrap();
                let err = rel_err(&got, &reference.data);
                assert!(err < 1e-4, "{name} {policy:?} {threads} threads: relative error {err}");
            }
        }
    }
}

/// A Gemm model whose weight `[4, 3]` lives in an external file with the given location, offset
/// and length, written into `dir` as `model.onnx`.
fn external_model(dir: &Path, location: &str, offset: u64, length: Option<u64>) -> PathBuf {
    let mut entries = vec![("location", location.to_string()), ("offset", offset.to_string())];
    if let Some(l) = length {
        entries.push(("length", l.to_string()));
    }
    let weight = TensorProto {
        dims: vec![3, 4],
        data_type: data_type::FLOAT,
        name: "w".into(),
        data_location: 1,
        external_data: entries.into_iter().map(|(k, v)| StringStringEntryProto { key: k.into(), value: v }).collect(),
        ..Default::default()
    };
    let dim = |v: Option<i64>| DimensionProto { dim_value: v, dim_param: v.is_none().then(|| "N".to_string()) };
    let info = |name: &str, dims: Vec<DimensionProto>| ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto { tensor_type: Some(TensorTypeProto { elem_type: 1, shape: Some(TensorShapeProto { dim: dims }) }) }),
    };
    let model = ModelProto {
        ir_version: 10,
        graph: Some(GraphProto {
            node: vec![NodeProto {
                input: vec!["x".into(), "w".into()],
                output: vec!["y".into()],
                op_type: "Gemm".into(),
                ..Default::default()
            }],
            name: "g".into(),
            initializer: vec![weight],
            input: vec![info("x", vec![dim(None), dim(Some(3))])],
            output: vec![info("y", vec![])],
        }),
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 18 }],
        ..Default::default()
    };
    let path = dir.join("model.onnx");
    std::fs::write(&path, model.encode_to_vec()).unwrap();
    path
}

#[test]
fn external_data_is_read_safely() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("models");
    std::fs::create_dir_all(&dir).unwrap();
    let values: Vec<f32> = (0..12).map(|i| i as f32).collect();
    let mut bytes = vec![0u8; 16];
    bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    std::fs::write(dir.join("weights.bin"), &bytes).unwrap();
    std::fs::write(root.path().join("outside.bin"), &bytes).unwrap();
    std::os::unix::fs::symlink(root.path().join("outside.bin"), dir.join("link.bin")).unwrap();

    let g = engine::load(&external_model(&dir, "weights.bin", 16, Some(48))).unwrap();
    let engine::graph::Op::Linear { weight, .. } = &g.nodes[0].op else { panic!("a linear layer") };
    assert_eq!(weight.data, vec![0.0, 4.0, 8.0, 1.0, 5.0, 9.0, 2.0, 6.0, 10.0, 3.0, 7.0, 11.0], "[k, n] transposed to [n, k]");
    for (location, offset, length, says) in [
        ("../outside.bin", 16, None, "inside the model's folder"),
        ("/etc/passwd", 0, None, "inside the model's folder"),
        ("link.bin", 16, None, "inside the model's folder"),
        ("missing.bin", 0, None, "missing.bin"),
        ("weights.bin", 32, None, "past its end"),
        ("weights.bin", u64::MAX, None, "past its end"),
        ("weights.bin", 0, Some(40), "is not the 48 bytes"),
        (".", 0, None, "inside the model's folder"),
    ] {
        let err = engine::load(&external_model(&dir, location, offset, length)).unwrap_err().to_string();
        assert!(err.contains(says) && !err.contains('\n'), "{location} {offset} {length:?}: {err}");
    }
    // Read from memory, a model has no folder for external data.
    let bytes = std::fs::read(external_model(&dir, "weights.bin", 16, None)).unwrap();
    let err = engine::load_bytes(&bytes, "mem.onnx").unwrap_err().to_string();
    assert!(err.contains("needs the model loaded from its folder"), "{err}");
}

/// BERT's graph (several inputs and outputs, embeddings, layer norms, attention) survives the native
/// format and ONNX export: the native file reloads to the same graph, and ONNX Runtime runs the
/// exported file (its inputs packed into one) to the engine's answer.
#[test]
fn bert_round_trips_through_both_formats() {
    let graph = engine::load(&fixtures().join("bert_l2_h64.legacy.onnx")).unwrap();
    assert_eq!(graph.ports.as_ref().map(|p| (p.inputs.len(), p.outputs.len())), Some((3, 2)));
    let bytes = engine::format::to_bytes(&graph).unwrap();
    assert_eq!(engine::format::from_bytes(&bytes, "bert.sparse").unwrap(), graph);
    let input = engine::npy::read(&fixtures().join("bert_l2_h64.input.npy")).unwrap();
    let model = compile::compile(graph.clone(), Options::new(KernelPolicy::Auto).unwrap()).unwrap();
    let ours = Session::new(&model, 2).unwrap().run(&input.data, input.shape[0]).unwrap();
    let Some(python) = ort_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let onnx = dir.path().join("bert.onnx");
    std::fs::write(&onnx, engine::onnx::export::export(&graph, &graph.output_shape().unwrap())).unwrap();
    let reference = ort_run(&python, &onnx, &input, dir.path());
    let err = rel_err(&ours, &reference.data);
    assert!(err < 1e-4, "relative error {err}");
    // The compiled graph too: attention's transposes are strides of its products there
    // (`Swapped`), written back to ONNX as Transpose nodes and to the native format as flags.
    let optimized = &model.graph;
    let swapped =
        optimized.nodes.iter().filter(|n| matches!(n.op, engine::graph::Op::BatchMatMul { swapped } if swapped != Default::default()));
    assert!(swapped.count() >= 4, "attention's products read and write their heads in place");
    // The layer norms inside the encoder normalize features-first values (`columns`), so rows
    // move between layouts only after the embeddings and before the outputs.
    let count = |f: &dyn Fn(&engine::graph::Node) -> bool| optimized.nodes.iter().filter(|n| f(n)).count();
    let columns = count(&|n| matches!(n.op, engine::graph::Op::LayerNorm { columns: true, .. }));
    let moves = count(&|n| matches!(n.op, engine::graph::Op::Pick { .. }) && n.name.ends_with("_first"));
    assert!(columns == 4 && moves == 2, "{columns} layer norms down columns, {moves} picks between layouts");
    // Attention's mask addition and NaN replacement are flags of its softmax.
    let softmax = count(&|n| matches!(n.op, engine::graph::Op::Softmax { masked: true, zero_nan: true }));
    assert_eq!(softmax, 2, "one masked softmax per layer");
    let bytes = engine::format::to_bytes(optimized).unwrap();
    assert_eq!(&engine::format::from_bytes(&bytes, "bert.sparse").unwrap(), optimized);
    std::fs::write(&onnx, engine::onnx::export::export(optimized, &optimized.output_shape().unwrap())).unwrap();
    let reference = ort_run(&python, &onnx, &input, dir.path());
    let err = rel_err(&ours, &reference.data);
    assert!(err < 1e-4, "optimized graph: relative error {err}");
}

/// Token ids outside the embedding table are refused with the input's name, not clamped.
#[test]
fn token_ids_outside_the_table_are_refused() {
    let graph = engine::load(&fixtures().join("bert_l2_h64.dynamo.onnx")).unwrap();
    let mut input = engine::npy::read(&fixtures().join("bert_l2_h64.input.npy")).unwrap();
    let model = compile::compile(graph, Options::new(KernelPolicy::Auto).unwrap()).unwrap();
    input.data[3] = 500.0;
    let err = Session::new(&model, 1).unwrap().run(&input.data, input.shape[0]).unwrap_err().to_string();
    assert!(err.contains("input 'input_ids' of sample 0 holds 500"), "{err}");
    input.data[3] = 2.5;
    assert!(Session::new(&model, 1).unwrap().run(&input.data, input.shape[0]).is_err());
}
