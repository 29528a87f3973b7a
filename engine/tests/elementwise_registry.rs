//! Every element-wise operator the registries list (`engine::ops`), with nothing written for it
//! here: through the native format and through ONNX (written, then read back) it runs in the
//! engine as its definition, bit for bit, and ONNX Runtime computes the same from the ONNX file.

mod common;

use common::*;
use engine::compile::{self, KernelPolicy, Options};
use engine::exec::Session;
use engine::graph::{BinaryKind, Graph, Op, Operand, Unary};

const SHAPE: [usize; 3] = [2, 3, 5];
const BATCH: usize = 3;

/// Values with zeros, equal neighbours, negatives and magnitudes where `exp` and `erf` saturate.
fn input() -> Vec<f32> {
    (0..BATCH * 30).map(|i| [0.0, 1.0, -2.5, 3.0, 0.5, -0.0, 12.0, -40.0, 2.0][i % 9] * (1 + i % 4) as f32 / 2.0).collect()
}

fn graph(op: Op) -> Graph {
    Graph { input: "x".into(), input_shape: SHAPE.to_vec(), output: "y".into(), nodes: vec![node("y", op, &["x"])], ports: None }
}

fn run(graph: Graph, x: &[f32]) -> Vec<f32> {
    let model = compile::compile(graph, Options::new(KernelPolicy::Auto).unwrap()).unwrap();
    Session::new(&model, 1).unwrap().run(x, BATCH).unwrap()
}

/// The graph from its native file and from its ONNX file gives `want` bit for bit; ONNX Runtime,
/// where the tests have it, gives it within `tolerance`.
fn check(name: &str, g: Graph, want: &[f32], tolerance: f32) {
    let x = input();
    let native = engine::format::from_bytes(&engine::format::to_bytes(&g).unwrap(), name).unwrap();
    let onnx = engine::onnx::export::export(&g, &SHAPE);
    let imported = engine::load_bytes(&onnx, name).unwrap();
    for (form, g) in [("native", native), ("onnx", imported)] {
        let got = run(g, &x);
        let same = got.iter().zip(want).all(|(g, w)| g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()));
        assert!(same, "{name} through its {form} file: {got:?}, defined {want:?}");
    }
    if let Some(python) = ort_python() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.onnx");
        std::fs::write(&path, &onnx).unwrap();
        let shape = [vec![BATCH], SHAPE.to_vec()].concat();
        let ort = ort_run(&python, &path, &engine::npy::Array { shape, data: x }, dir.path());
        // NaN where the definition has NaN (the square root of a negative value), infinities equal.
        let close = |o: f32, w: f32| o == w || (o.is_nan() && w.is_nan()) || (o - w).abs() <= tolerance * (1.0 + w.abs());
        let far = ort.data.iter().zip(want).position(|(&o, &w)| !close(o, w));
        assert!(far.is_none(), "{name}: ONNX Runtime gives {:?} where the definition gives {:?}", ort.data, want);
    }
}

#[test]
fn every_function_of_one_value_reads_writes_and_runs_as_defined() {
    for f in Unary::examples() {
        let want: Vec<f32> = input().iter().map(|&v| f.value(v)).collect();
        check(&format!("{f:?}"), graph(Op::Unary(f)), &want, 2e-6);
    }
}

#[test]
fn every_operation_on_two_values_reads_writes_and_runs_as_defined() {
    // A constant of one value per channel, broadcast over the rows and columns (the input's zeros
    // give infinities where they divide).
    let c = Operand { shape: vec![2, 1, 1], values: vec![2.0, 0.5] };
    for &kind in BinaryKind::ALL {
        for constant_first in [false, true] {
            let want: Vec<f32> = (input().iter().enumerate())
                .map(|(i, &v)| {
                    let k = c.values[(i % 30) / 15];
                    if constant_first { kind.value(k, v) } else { kind.value(v, k) }
                })
                .collect();
            let op = Op::Binary { kind, constant: Some(c.clone()), constant_first };
            check(&format!("{kind:?}, constant first {constant_first}"), graph(op), &want, 1e-6);
        }
    }
}
