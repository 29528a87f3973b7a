//! The engine's outputs against ONNX Runtime on the same ONNX files (dense and pruned MLPs and
//! CNNs, every kernel policy, batch sizes that do and do not divide into tiles), within 1e-4
//! relative; and the native file against the ONNX file of the same graph.

mod common;

use common::*;
use engine::compile::{self, KernelPolicy, Options};
use engine::exec::Session;

fn run_engine(path: &std::path::Path, policy: KernelPolicy, input: &engine::npy::Array, threads: usize) -> Vec<f32> {
    let model = compile::compile(engine::load(path).unwrap(), Options::new(policy).unwrap()).unwrap();
    Session::new(&model, threads).unwrap().run(&input.data, input.shape[0]).unwrap()
}

fn check_graph(name: &str, graph: engine::graph::Graph) {
    let Some(python) = ort_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let onnx = dir.path().join(format!("{name}.onnx"));
    let native = dir.path().join(format!("{name}.sparse"));
    let out_shape = graph.output_shape().unwrap();
    std::fs::write(&onnx, engine::onnx::export::export(&graph, &out_shape)).unwrap();
    engine::format::save(&graph, &native).unwrap();
    for batch in [1, 3, 64, 100] {
        let input = random_input(batch as u64, batch, &graph.input_shape);
        let reference = ort_run(&python, &onnx, &input, dir.path());
        for policy in [KernelPolicy::Auto, KernelPolicy::Dense, KernelPolicy::Sparse] {
            for threads in [1, 2] {
                let got = run_engine(&onnx, policy, &input, threads);
                let err = rel_err(&got, &reference.data);
                assert!(err < 1e-4, "{name} onnx batch {batch} {policy:?} {threads} threads: relative error {err}");
            }
        }
        let got = run_engine(&native, KernelPolicy::Auto, &input, 2);
        let err = rel_err(&got, &reference.data);
        assert!(err < 1e-4, "{name} native file batch {batch}: relative error {err}");
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

#[test]
fn pruned_lenet5_matches_onnx_runtime() {
    check_graph("lenet5_s90", lenet(5, 0.9));
}
