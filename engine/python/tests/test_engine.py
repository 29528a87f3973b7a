"""sparsify_engine from Python: DeepSparse's and ONNX Runtime's calling conventions, against
ONNX Runtime on the same files; several inputs and outputs with integer inputs; callers on
several threads (and the GIL released while the engine runs); benchmark, analyze and info as
`engine bench --json` and `engine info`; every mistake a Python exception with the engine's
message. Run by scripts/test after building and installing the wheel."""

import json
import os
import subprocess
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import sparsify_engine as se

REPO = Path(__file__).resolve().parents[3]
CORPUS = REPO / "engine" / "tests" / "corpus"
ENGINE_BIN = Path(os.environ.get("ENGINE_BIN", REPO / "target" / "release" / "engine"))


def reference(path, feed):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def random_input(path, batch, seed=0):
    shape = ort.InferenceSession(str(path)).get_inputs()[0].shape[1:]
    return np.random.default_rng(seed).standard_normal((batch, *shape)).astype(np.float32)


@pytest.mark.parametrize("name", ["mlp_s90.onnx", "lenet5_s90.onnx", "convstack_s80.onnx"])
@pytest.mark.parametrize("batch", [1, 3])
def test_deepsparse_form_matches_onnx_runtime(name, batch):
    path = CORPUS / name
    engine = se.compile_model(str(path), batch_size=4, num_cores=2)
    x = random_input(path, batch)
    (y,) = engine.run([x])
    (r,) = reference(path, {engine.input_names[0]: x})
    assert y.shape == r.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, r, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(engine([x])[0], y)


def test_onnx_runtime_form_matches_and_selects_outputs():
    path = CORPUS / "mlp_s90.onnx"
    engine = se.Engine(str(path), num_cores=2)
    x = random_input(path, 16)
    feed = {engine.input_names[0]: x}
    (y,) = engine.run(None, feed)
    np.testing.assert_allclose(y, reference(path, feed)[0], rtol=1e-4, atol=1e-5)
    (named,) = engine.run(engine.output_names, feed)
    np.testing.assert_array_equal(named, y)


def test_native_file_gives_what_its_onnx_twin_gives():
    x = random_input(CORPUS / "lenet5_s90.onnx", 2)
    onnx_engine = se.compile_model(str(CORPUS / "lenet5_s90.onnx"), batch_size=2)
    native = se.compile_model(str(CORPUS / "lenet5_s90.sparse"), batch_size=2)
    np.testing.assert_allclose(native.run([x])[0], onnx_engine.run([x])[0], rtol=1e-5, atol=1e-6)


def test_non_contiguous_unaligned_and_float64_inputs_are_read_correctly():
    path = CORPUS / "mlp_s90.onnx"
    engine = se.compile_model(str(path), batch_size=4, num_cores=1)
    x = random_input(path, 4)
    expected = engine.run([x])[0]
    wide = np.zeros((4, 2 * x.shape[1]), np.float32)
    wide[:, ::2] = x
    np.testing.assert_array_equal(engine.run([wide[:, ::2]])[0], expected)
    np.testing.assert_allclose(engine.run([x.astype(np.float64)])[0], expected, rtol=1e-6)
    # float32 values one byte off their alignment: copied, not read in place.
    shifted = np.zeros(x.nbytes + 1, np.uint8)[1:].view(np.float32).reshape(x.shape)
    shifted[...] = x
    assert not shifted.flags.aligned and shifted.flags.c_contiguous
    np.testing.assert_array_equal(engine.run([shifted])[0], expected)


def two_input_model(path):
    """input_ids (int64 token ids into an embedding table) and a float mask in; the masked
    embeddings through a linear layer, as logits and as probabilities out."""
    rng = np.random.default_rng(1)
    table = numpy_helper.from_array(rng.standard_normal((20, 4)).astype(np.float32), "table")
    weight = numpy_helper.from_array(rng.standard_normal((24, 3)).astype(np.float32), "weight")
    bias = numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "bias")
    axes = numpy_helper.from_array(np.array([2], np.int64), "axes")
    shape = numpy_helper.from_array(np.array([0, 24], np.int64), "shape")
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["embedded"]),
        helper.make_node("Unsqueeze", ["mask", "axes"], ["mask3"]),
        helper.make_node("Mul", ["embedded", "mask3"], ["masked"]),
        helper.make_node("Reshape", ["masked", "shape"], ["flat"]),
        helper.make_node("Gemm", ["flat", "weight", "bias"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "two_inputs",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["N", 6]),
            helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", 6]),
        ],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 3]),
        ],
        [table, weight, bias, axes, shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, str(path))
    return path


def test_several_inputs_and_outputs_with_integer_inputs(tmp_path):
    path = two_input_model(tmp_path / "two_inputs.onnx")
    engine = se.Engine(str(path), num_cores=2)
    assert engine.input_names == ["input_ids", "mask"] and engine.output_names == ["logits", "probs"]
    rng = np.random.default_rng(2)
    feed = {"input_ids": rng.integers(0, 20, (5, 6)), "mask": (rng.random((5, 6)) > 0.3).astype(np.float32)}
    expected = reference(path, feed)
    for got in (engine.run(None, feed), engine.run([feed["input_ids"], feed["mask"]])):
        assert len(got) == 2
        for g, r in zip(got, expected):
            np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)
    (probs,) = engine.run(["probs"], {"mask": feed["mask"], "input_ids": feed["input_ids"].astype(np.int32)})
    np.testing.assert_allclose(probs, expected[1], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="no output 'nope'"):
        engine.run(["nope"], feed)
    with pytest.raises(TypeError, match="integers"):
        engine.run(None, {**feed, "input_ids": feed["input_ids"].astype(np.float32)})
    with pytest.raises(se.EngineError, match="input_ids"):
        engine.run(None, {**feed, "input_ids": feed["input_ids"] + 100})


def test_output_arrays_are_reused_only_once_the_caller_lets_them_go():
    path = CORPUS / "mlp_s90.onnx"
    engine = se.compile_model(str(path), batch_size=4, num_cores=1)
    xs = [random_input(path, batch, seed=s) for s, batch in enumerate([1, 1, 3, 1, 3, 1])]
    expected = [reference(path, {engine.input_names[0]: x})[0] for x in xs]
    # Dropped at once, kept as the last result, kept for good: always the right values, and a
    # kept array is never written again.
    for x, r in zip(xs + xs, expected + expected):
        np.testing.assert_allclose(engine.run([x])[0], r, rtol=1e-4, atol=1e-5)
    last = None
    for x, r in zip(xs, expected):
        previous, (last,) = last, engine.run([x])
        np.testing.assert_allclose(last, r, rtol=1e-4, atol=1e-5)
    kept = [engine.run([x])[0] for x in xs]
    for x in xs:
        engine.run([x])
    for y, r in zip(kept, expected):
        np.testing.assert_allclose(y, r, rtol=1e-4, atol=1e-5)
    # Held only through a view or a weak reference, or let go read-only (a new engine each, so
    # that the array is one the engine keeps).
    engine = se.compile_model(str(path), batch_size=4, num_cores=1)
    view = engine.run([xs[0]])[0][0]
    weak = weakref.ref(engine.run([xs[1]])[0])
    for x in xs:
        engine.run([x])
    np.testing.assert_allclose(view, expected[0][0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(weak(), expected[1], rtol=1e-4, atol=1e-5)
    engine = se.compile_model(str(path), batch_size=4, num_cores=1)
    (read_only,) = engine.run([xs[0]])
    read_only.flags.writeable = False
    del read_only
    assert engine.run([xs[0]])[0].flags.writeable


def test_threaded_callers_get_their_own_answers():
    path = CORPUS / "lenet5_s90.onnx"
    engine = se.compile_model(str(path), batch_size=2, num_cores=2)
    inputs = [random_input(path, 2, seed=s) for s in range(8)]
    expected = [engine.run([x])[0] for x in inputs]
    errors = []

    def caller(i):
        try:
            for _ in range(30):
                np.testing.assert_array_equal(engine.run([inputs[i]])[0], expected[i])
        except Exception as e:  # reported below, on the test's thread
            errors.append(e)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_the_gil_is_released_while_the_engine_runs():
    engine = se.compile_model(str(CORPUS / "lenet5_s90.onnx"), batch_size=64, num_cores=1)
    ticks = 0
    done = threading.Event()

    def bench():
        engine.benchmark(64, seconds=0.5, warmup=1)
        done.set()

    t = threading.Thread(target=bench)
    start = time.perf_counter()
    t.start()
    while not done.is_set():
        ticks += 1
        time.sleep(0.001)
    t.join()
    # With the GIL held for the whole half second this loop would tick about once.
    assert time.perf_counter() - start >= 0.45 and ticks > 50, ticks


def test_benchmark_analyze_and_info_say_what_the_cli_says():
    path = CORPUS / "mlp_s90.onnx"
    engine = se.compile_model(str(path), batch_size=1, num_cores=2)
    row = engine.benchmark(1, seconds=0.2)
    cli = subprocess.run(
        [str(ENGINE_BIN), "bench", "--json", "--model", str(path), "--batch", "1", "--threads", "2", "--seconds", "0.2"],
        check=True,
        capture_output=True,
        text=True,
    )
    cli_row = json.loads(cli.stdout.splitlines()[0])
    assert set(row) == set(cli_row)
    assert (row["batch"], row["threads"], row["schedule"], row["kernels"]) == (cli_row["batch"], cli_row["threads"], cli_row["schedule"], cli_row["kernels"])
    assert 0 < row["p10_ms"] <= row["median_ms"] <= row["p90_ms"] and row["items_per_s"] > 0
    layers = engine.analyze(iters=3)
    assert [l["layer"] for l in layers] == [l["layer"] for l in engine.info()["layers"]]
    assert abs(sum(l["share"] for l in layers) - 1) < 1e-6
    assert all(l["gflops"] > 0 for l in layers if l["op"] == "linear")
    info = engine.info()
    assert info["inputs"] == [{"name": "input", "shape": [64], "dtype": "float32"}]
    assert info["batch_size"] == 1 and info["num_cores"] == 2
    assert any(l["sparsity"] and l["sparsity"] > 0.85 for l in info["layers"])


def test_mistakes_raise_python_exceptions_with_the_engines_message(tmp_path):
    path = CORPUS / "mlp_s90.onnx"
    engine = se.compile_model(str(path), batch_size=2, num_cores=1)
    x = random_input(path, 2)
    with pytest.raises(se.EngineError, match="nope.onnx"):
        se.compile_model(str(tmp_path / "nope.onnx"))
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(se.EngineError, match="bad.onnx"):
        se.Engine(str(tmp_path / "bad.onnx"))
    with pytest.raises(ValueError, match=r"shape \[2, 10\]"):
        engine.run([x[:, :10]])
    with pytest.raises(TypeError, match="int64"):
        engine.run([x.astype(np.int64)])
    with pytest.raises(ValueError, match="larger than the compiled batch_size 2"):
        engine.run([random_input(path, 3)])
    with pytest.raises(ValueError, match="takes 1 input"):
        engine.run([x, x])
    with pytest.raises(ValueError, match="no input 'zz'"):
        engine.run(None, {"input": x, "zz": x})
    with pytest.raises(ValueError, match="'input' is missing"):
        engine.run(None, {})
    with pytest.raises(TypeError, match="NumPy array"):
        engine.run([[1.0, 2.0]])
    x[0, 0] = np.nan
    with pytest.raises(se.EngineError, match="finite"):
        engine.run([x])
    with pytest.raises(ValueError, match="schedule"):
        se.compile_model(str(path), schedule="sideways")
    with pytest.raises(ValueError, match="at least 1"):
        se.compile_model(str(path), batch_size=0)
