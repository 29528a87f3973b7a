//! `sparsify_engine`: the engine from Python. `compile_model(path, batch_size, num_cores)` then
//! `engine.run([x, ...])`, as DeepSparse's; `Engine(path).run(None, {name: x})`, as ONNX
//! Runtime's `InferenceSession`. NumPy arrays in and out (a single contiguous, aligned float32
//! input is read in place, a single output handed over without a copy), the GIL released while the
//! engine compiles and runs, so Python threads can serve requests; the engine's errors as
//! `EngineError` with its message.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use engine::compile::{self, KernelPolicy, Model, Options};
use engine::exec::Session;
use engine::graph::Port;
use engine::report::{self, BenchRow};
use engine::schedule::Schedule;
use numpy::ndarray::{Array, Dimension, IxDyn};
use numpy::{IntoPyArray, PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString};

pyo3::create_exception!(
    sparsify_engine,
    EngineError,
    PyRuntimeError,
    "The engine's error: a model file it cannot load or compile, or an input it refuses."
);

fn engine_error(e: impl std::fmt::Display) -> PyErr {
    EngineError::new_err(e.to_string())
}

/// How many output arrays a single-output engine keeps for reuse: two, so that a loop that
/// keeps the last result while it asks for the next (`y = engine.run([x])`) reuses them too.
const SPARE_OUTPUTS: usize = 2;

/// Integers held as `f32` are exact within this magnitude.
const EXACT_INTEGER: i64 = 1 << 24;

/// A compiled model and the session that runs it (one run at a time; callers on other Python
/// threads wait for it without holding the GIL).
#[pyclass(module = "sparsify_engine", frozen)]
pub struct Engine {
    path: String,
    model: Arc<Model>,
    session: Mutex<Session<Arc<Model>>>,
    inputs: Vec<Port>,
    /// The inputs' names as Python strings (their hashes computed once, for `run`'s dict lookups).
    input_keys: Vec<Py<PyString>>,
    outputs: Vec<Port>,
    /// Output arrays `run` made before, kept to be written again once nothing else references
    /// them (see `output_array`).
    spare_outputs: Mutex<Vec<Py<PyArrayDyn<f32>>>>,
    batch_size: Option<usize>,
    threads: usize,
    kernels: KernelPolicy,
}

/// The model's inputs and outputs as named per-sample shapes: its ports, or its one input and
/// one output.
fn ports(model: &Model) -> (Vec<Port>, Vec<Port>) {
    match &model.graph.ports {
        Some(p) => (p.inputs.clone(), p.outputs.clone()),
        None => {
            let port = |name: &str, shape: &[usize]| Port { name: name.to_string(), shape: shape.to_vec(), integer: false, rows: None };
            (vec![port(&model.graph.input, &model.input_shape)], vec![port(&model.graph.output, &model.output_shape)])
        }
    }
}

fn parse_schedule(s: &str) -> PyResult<Schedule> {
    match s {
        "auto" => Ok(Schedule::Auto),
        "depthwise" => Ok(Schedule::Depthwise),
        "layerwise" => Ok(Schedule::Layerwise),
        _ => Err(PyValueError::new_err(format!("schedule {s:?}: use 'auto', 'depthwise' or 'layerwise'"))),
    }
}

fn parse_kernels(s: &str) -> PyResult<KernelPolicy> {
    match s {
        "auto" => Ok(KernelPolicy::Auto),
        "dense" => Ok(KernelPolicy::Dense),
        "sparse" => Ok(KernelPolicy::Sparse),
        _ => Err(PyValueError::new_err(format!("kernels {s:?}: use 'auto', 'dense' or 'sparse'"))),
    }
}

/// Python's `json.loads` of serialized engine data: dicts and lists as Python builds them.
fn to_python<'py>(py: Python<'py>, value: &impl serde::Serialize) -> PyResult<Bound<'py, PyAny>> {
    let text = serde_json::to_string(value).map_err(engine_error)?;
    py.import("json")?.call_method1("loads", (text,))
}

/// The shape of `batch` samples of `port`; up to four dimensions without a heap allocation
/// (`IxDyn` keeps them inline; a run at batch 1 takes about 10 us, and each allocation and free
/// about 0.05 us of that).
fn batch_shape(batch: usize, port: &Port) -> IxDyn {
    let mut shape = IxDyn::zeros(port.shape.len() + 1);
    shape[0] = batch;
    shape.slice_mut()[1..].copy_from_slice(&port.shape);
    shape
}

/// Whether only the engine's spares reference the array (no other reference, weak or strong:
/// the caller dropped it) and NumPy lets it be written (a caller may have set
/// `flags.writeable = False` while it held it).
fn only_ours(array: &Bound<'_, PyArrayDyn<f32>>) -> bool {
    // SAFETY: reads the header of a live array object while the GIL is held.
    unsafe {
        let fields = &(*array.as_array_ptr()).fields;
        pyo3::ffi::Py_REFCNT(array.as_ptr()) == 1 && fields.weakreflist.is_null() && fields.flags & numpy::npyffi::NPY_ARRAY_WRITEABLE != 0
    }
}

/// Whether an array of `shape` is a batch of `port`'s samples: `[batch >= 1, *port.shape]`.
fn fits(shape: &[usize], port: &Port) -> bool {
    shape.len() == port.shape.len() + 1 && shape[1..] == port.shape[..] && shape[0] > 0
}

/// One input array's values in row-major order as `f32`, checked against its port: shape
/// `[batch, *port.shape]`, float32/float64 for float inputs, int64/int32 within +-2^24 for
/// integer ones. Returns the batch and the values.
fn read_input(array: &Bound<'_, PyAny>, port: &Port) -> PyResult<(usize, Vec<f32>)> {
    let name = &port.name;
    let untyped = array.cast::<PyUntypedArray>().map_err(|_| {
        PyTypeError::new_err(format!(
            "input '{name}' must be a NumPy array, not {}",
            array.get_type().name().map_or("?".into(), |n| n.to_string())
        ))
    })?;
    let shape = untyped.shape();
    if !fits(shape, port) {
        return Err(PyValueError::new_err(format!(
            "input '{name}' has shape {shape:?}; the model takes [batch, {}] with batch >= 1",
            port.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
        )));
    }
    let values: Vec<f32> = if port.integer {
        let ints: Vec<i64> = if let Ok(a) = array.cast::<PyArrayDyn<i64>>() {
            a.readonly().as_array().iter().copied().collect()
        } else if let Ok(a) = array.cast::<PyArrayDyn<i32>>() {
            a.readonly().as_array().iter().map(|&v| v as i64).collect()
        } else {
            return Err(PyTypeError::new_err(format!("input '{name}' is {}; the model takes integers (int64 or int32)", untyped.dtype())));
        };
        if let Some(v) = ints.iter().find(|v| v.abs() > EXACT_INTEGER) {
            return Err(PyValueError::new_err(format!("input '{name}' holds {v}, beyond the engine's integer range +-2^24")));
        }
        ints.iter().map(|&v| v as f32).collect()
    } else if let Ok(a) = array.cast::<PyArrayDyn<f32>>() {
        a.readonly().as_array().iter().copied().collect()
    } else if let Ok(a) = array.cast::<PyArrayDyn<f64>>() {
        a.readonly().as_array().iter().map(|&v| v as f32).collect()
    } else {
        return Err(PyTypeError::new_err(format!("input '{name}' is {}; the model takes float32 (or float64)", untyped.dtype())));
    };
    Ok((shape[0], values))
}

impl Engine {
    /// Runs `arrays` (one per input, in the model's order): the outputs, each `[batch, *shape]`.
    fn execute<'py>(&self, py: Python<'py>, arrays: &[Bound<'py, PyAny>]) -> PyResult<Bound<'py, PyList>> {
        if arrays.len() != self.inputs.len() {
            return Err(PyValueError::new_err(format!(
                "the model takes {} input(s) ({}); got {}",
                self.inputs.len(),
                self.input_names().join(", "),
                arrays.len()
            )));
        }
        let port = &self.inputs[0];
        let in_place = arrays[0]
            .cast::<PyArrayDyn<f32>>()
            .ok()
            .filter(|a| arrays.len() == 1 && !port.integer && a.is_c_contiguous() && a.is_aligned() && fits(a.shape(), port));
        match in_place {
            // One contiguous float32 input: the engine reads NumPy's buffer.
            Some(array) => {
                let batch = array.shape()[0];
                self.check_batch(batch)?;
                // SAFETY: the array is aligned and C-contiguous (checked above), held alive by the
                // caller's reference while the engine reads it, and this module holds no mutable
                // view of it (the one it writes is the output it makes). NumPy's own borrow flags
                // (`readonly()`) are not taken: they cost about 0.1 us a call (a percent of a
                // LeNet-300-100 run at batch 1), and they bind only Rust code, not the Python
                // threads that run while the GIL is released, which ONNX Runtime's and
                // DeepSparse's calls leave to the caller too.
                let input = unsafe { array.as_slice() }.map_err(engine_error)?;
                self.run_packed(py, input, batch)
            }
            None => {
                let mut read = Vec::with_capacity(arrays.len());
                for (array, port) in arrays.iter().zip(&self.inputs) {
                    read.push(read_input(array, port)?);
                }
                let batch = read[0].0;
                if let Some((port, (b, _))) = self.inputs.iter().zip(&read).find(|(_, (b, _))| *b != batch) {
                    return Err(PyValueError::new_err(format!("input '{}' has a batch of {b}; the first input has {batch}", port.name)));
                }
                self.check_batch(batch)?;
                // Sample by sample, each input's values side by side: the engine's packed input.
                let per_sample: usize = self.inputs.iter().map(Port::elements).sum();
                let mut packed = Vec::with_capacity(batch * per_sample);
                for s in 0..batch {
                    for (port, (_, values)) in self.inputs.iter().zip(&read) {
                        packed.extend_from_slice(&values[s * port.elements()..(s + 1) * port.elements()]);
                    }
                }
                self.run_packed(py, &packed, batch)
            }
        }
    }

    /// The engine's flat output (`[batch, outputs side by side]`) as one array per output.
    fn split_outputs<'py>(&self, py: Python<'py>, batch: usize, out: Vec<f32>) -> PyResult<Bound<'py, PyList>> {
        let per_sample: usize = self.outputs.iter().map(Port::elements).sum();
        let mut arrays = Vec::with_capacity(self.outputs.len());
        for (range, port) in engine::graph::Ports::placed(&self.outputs) {
            let values: Vec<f32> = out.chunks(per_sample.max(1)).flat_map(|sample| sample[range.clone()].iter().copied()).collect();
            arrays.push(Array::from_shape_vec(batch_shape(batch, port), values).map_err(engine_error)?.into_pyarray(py));
        }
        PyList::new(py, arrays)
    }

    fn check_batch(&self, batch: usize) -> PyResult<()> {
        match self.batch_size {
            Some(limit) if batch > limit => {
                Err(PyValueError::new_err(format!("a batch of {batch} is larger than the compiled batch_size {limit}")))
            }
            _ => Ok(()),
        }
    }

    /// Runs the packed input without the GIL: one array per output, `[batch, *shape]`. One
    /// output is written by the engine straight into its NumPy array.
    fn run_packed<'py>(&self, py: Python<'py>, input: &[f32], batch: usize) -> PyResult<Bound<'py, PyList>> {
        if let [port] = &self.outputs[..] {
            let array = self.output_array(py, batch_shape(batch, port));
            // SAFETY: the array is aligned, contiguous and writeable, and no other code has a
            // reference to it until it is returned: `output_array` made it, or took it from the
            // spares where nothing but this engine referenced it.
            let out = unsafe { array.as_slice_mut() }.map_err(engine_error)?;
            py.detach(|| self.session.lock().unwrap_or_else(|e| e.into_inner()).run_into(input, batch, out)).map_err(engine_error)?;
            return PyList::new(py, [array]);
        }
        let out = py.detach(|| self.session.lock().unwrap_or_else(|e| e.into_inner()).run(input, batch)).map_err(engine_error)?;
        self.split_outputs(py, batch, out)
    }

    /// An array of `shape` for the one output: a spare that nothing but this engine references
    /// any more (the caller dropped it) and that still has that shape, float32 dtype and its
    /// writeable, aligned, contiguous buffer, else a new one (kept as a spare). Making and
    /// freeing a NumPy array cost about 0.15 us a call, 1.5% of a LeNet-300-100 run at batch 1
    /// (results/python-output-reuse.md).
    fn output_array<'py>(&self, py: Python<'py>, shape: IxDyn) -> Bound<'py, PyArrayDyn<f32>> {
        let mut spares = self.spare_outputs.lock().unwrap_or_else(|e| e.into_inner());
        let reusable = |spare: &Bound<'py, PyArrayDyn<f32>>| {
            only_ours(spare)
                && spare.as_any().cast::<PyArrayDyn<f32>>().is_ok()
                && spare.shape() == shape.slice()
                && spare.is_c_contiguous()
                && spare.is_aligned()
        };
        if let Some(spare) = spares.iter().map(|s| s.bind(py)).find(|s| reusable(s)) {
            return spare.clone();
        }
        let array = PyArrayDyn::<f32>::zeros(py, shape, false);
        if spares.len() < SPARE_OUTPUTS {
            spares.push(array.clone().unbind());
        } else if let Some(slot) = spares.iter_mut().find(|s| only_ours(s.bind(py))) {
            *slot = array.clone().unbind();
        }
        array
    }

    /// Refuses a feed with a name that is not an input, once every input was found in it (so
    /// only a dict with more entries than inputs is searched).
    fn refuse_unknown_inputs(&self, feed: &Bound<'_, PyDict>) -> PyResult<()> {
        if feed.len() <= self.inputs.len() {
            return Ok(());
        }
        for key in feed.keys() {
            let key: String = key.extract()?;
            if !self.inputs.iter().any(|p| p.name == key) {
                return Err(PyValueError::new_err(format!("the model has no input '{key}'; it takes {}", self.input_names().join(", "))));
            }
        }
        Ok(())
    }

    fn input_names(&self) -> Vec<String> {
        self.inputs.iter().map(|p| p.name.clone()).collect()
    }

    /// The batch `benchmark` and `analyze` use: the one asked for, else the compiled one, else 1.
    fn batch_or_default(&self, batch_size: Option<usize>) -> PyResult<usize> {
        match batch_size.or(self.batch_size).unwrap_or(1) {
            0 => Err(PyValueError::new_err("batch_size must be at least 1")),
            b => Ok(b),
        }
    }
}

#[pymethods]
impl Engine {
    /// Loads and compiles a model file (ONNX or the engine's own format). `batch_size`: the
    /// largest batch `run` takes (None: any); `num_cores`: threads (None: every core);
    /// `schedule`: 'auto', 'depthwise' or 'layerwise'; `kernels`: 'auto', 'dense' or 'sparse'.
    #[new]
    #[pyo3(signature = (path, batch_size=None, num_cores=None, schedule="auto", kernels="auto"))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        batch_size: Option<usize>,
        num_cores: Option<usize>,
        schedule: &str,
        kernels: &str,
    ) -> PyResult<Engine> {
        let (schedule, kernels) = (parse_schedule(schedule)?, parse_kernels(kernels)?);
        if batch_size == Some(0) || num_cores == Some(0) {
            return Err(PyValueError::new_err("batch_size and num_cores must be at least 1"));
        }
        let threads = num_cores.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let model = py
            .detach(|| -> engine::Result<Arc<Model>> { Ok(Arc::new(compile::compile(engine::load(&path)?, Options::new(kernels)?)?)) })
            .map_err(engine_error)?;
        let session = Session::with_schedule(model.clone(), threads, schedule, None).map_err(engine_error)?;
        let (inputs, outputs) = ports(&model);
        let input_keys = inputs.iter().map(|p| PyString::intern(py, &p.name).unbind()).collect();
        Ok(Engine {
            path: path.display().to_string(),
            model,
            session: Mutex::new(session),
            inputs,
            input_keys,
            outputs,
            spare_outputs: Mutex::new(Vec::with_capacity(SPARE_OUTPUTS)),
            batch_size,
            threads,
            kernels,
        })
    }

    /// Runs the model. DeepSparse's form: `run([x, ...])`, one array per input in the model's
    /// order. ONNX Runtime's form: `run(output_names or None, {input name: array})`. Returns a
    /// list of arrays, `[batch, *shape]` each.
    #[pyo3(signature = (inputs, feed=None))]
    fn run<'py>(&self, py: Python<'py>, inputs: &Bound<'py, PyAny>, feed: Option<&Bound<'py, PyDict>>) -> PyResult<Bound<'py, PyList>> {
        let Some(feed) = feed else {
            let arrays: Vec<Bound<'py, PyAny>> = if let Ok(list) = inputs.cast::<PyList>() {
                if list.len() == 1 {
                    // DeepSparse's `run([x])`: one input, no list of them to build.
                    return self.execute(py, &[list.get_item(0)?]);
                }
                list.iter().collect()
            } else if inputs.cast::<PyUntypedArray>().is_ok() {
                vec![inputs.clone()]
            } else {
                inputs
                    .extract()
                    .map_err(|_| PyTypeError::new_err("run takes a list of NumPy arrays (or output names and a dict of inputs)"))?
            };
            return self.execute(py, &arrays);
        };
        let lookup = |port: &Port, key: &Py<PyString>| {
            feed.get_item(key.bind(py))?.ok_or_else(|| {
                PyValueError::new_err(format!("input '{}' is missing; the model takes {}", port.name, self.input_names().join(", ")))
            })
        };
        let outputs = match &self.input_keys[..] {
            // One input: looked up without a vector of them to allocate.
            [key] => {
                let array = lookup(&self.inputs[0], key)?;
                self.refuse_unknown_inputs(feed)?;
                self.execute(py, &[array])?
            }
            keys => {
                let arrays = self.inputs.iter().zip(keys).map(|(port, key)| lookup(port, key)).collect::<PyResult<Vec<_>>>()?;
                self.refuse_unknown_inputs(feed)?;
                self.execute(py, &arrays)?
            }
        };
        if inputs.is_none() {
            return Ok(outputs);
        }
        let names: Vec<String> = inputs.extract().map_err(|_| PyTypeError::new_err("output names must be a list of str or None"))?;
        let selected = names
            .iter()
            .map(|name| match self.outputs.iter().position(|p| &p.name == name) {
                Some(i) => outputs.get_item(i),
                None => Err(PyValueError::new_err(format!(
                    "the model has no output '{name}'; it has {}",
                    self.outputs.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ")
                ))),
            })
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, selected)
    }

    /// `engine(inputs)` is `engine.run(inputs)`, as DeepSparse's.
    fn __call__<'py>(&self, py: Python<'py>, inputs: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
        self.run(py, inputs, None)
    }

    /// Times the model on `batch_size` samples for at least `seconds` after `warmup` runs: the
    /// same numbers as `engine bench --json` (median_ms, p90_ms, items_per_s, plan, kernels).
    #[pyo3(signature = (batch_size=None, seconds=1.0, warmup=10))]
    fn benchmark<'py>(&self, py: Python<'py>, batch_size: Option<usize>, seconds: f64, warmup: usize) -> PyResult<Bound<'py, PyAny>> {
        let batch = self.batch_or_default(batch_size)?;
        let row = py
            .detach(|| -> engine::Result<BenchRow> {
                let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
                let latency = report::measure(&mut session, &self.model, batch, warmup, seconds)?;
                Ok(BenchRow::new(&self.path, &self.model, self.kernels, &session, batch, latency))
            })
            .map_err(engine_error)?;
        to_python(py, &row)
    }

    /// Time per layer (median of `iters` profiled runs of `batch_size` samples), as `engine
    /// analyze`: a list of dicts (layer, op, ms, share, gflops, sparsity, kernel).
    #[pyo3(signature = (batch_size=None, iters=10))]
    fn analyze<'py>(&self, py: Python<'py>, batch_size: Option<usize>, iters: usize) -> PyResult<Bound<'py, PyAny>> {
        let batch = self.batch_or_default(batch_size)?;
        let layers = py
            .detach(|| report::analyze(&mut self.session.lock().unwrap_or_else(|e| e.into_inner()), &self.model, batch, iters))
            .map_err(engine_error)?;
        to_python(py, &layers)
    }

    /// The model as `engine info` shows it: inputs, outputs, ISA, threads and each layer's
    /// shapes, sparsity, kernels and weight bytes.
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let port = |p: &Port| serde_json::json!({"name": p.name, "shape": p.shape, "dtype": if p.integer { "int64" } else { "float32" }});
        let info = serde_json::json!({
            "model": self.path,
            "inputs": self.inputs.iter().map(port).collect::<Vec<_>>(),
            "outputs": self.outputs.iter().map(port).collect::<Vec<_>>(),
            "batch_size": self.batch_size,
            "num_cores": self.threads,
            "isa": self.model.options.isa.name(),
            "kernels": self.kernels.name(),
            "layers": report::layers(&self.model),
        });
        to_python(py, &info)
    }

    /// The inputs' names, in the order `run([x, ...])` takes them.
    #[getter(input_names)]
    fn py_input_names(&self) -> Vec<String> {
        self.input_names()
    }

    /// The outputs' names, in the order `run` returns them.
    #[getter]
    fn output_names(&self) -> Vec<String> {
        self.outputs.iter().map(|p| p.name.clone()).collect()
    }

    /// The largest batch `run` takes (None: any).
    #[getter]
    fn batch_size(&self) -> Option<usize> {
        self.batch_size
    }

    /// Threads the engine runs on.
    #[getter]
    fn num_cores(&self) -> usize {
        self.threads
    }

    fn __repr__(&self) -> String {
        let batch = self.batch_size.map_or("None".to_string(), |b| b.to_string());
        format!("Engine({:?}, batch_size={batch}, num_cores={})", self.path, self.threads)
    }
}

/// Compiles a model for `batch_size` samples on `num_cores` threads, as
/// `deepsparse.compile_model`.
#[pyfunction]
#[pyo3(signature = (model, batch_size=1, num_cores=None, schedule="auto"))]
fn compile_model(py: Python<'_>, model: PathBuf, batch_size: usize, num_cores: Option<usize>, schedule: &str) -> PyResult<Engine> {
    Engine::new(py, model, Some(batch_size), num_cores, schedule, "auto")
}

#[pymodule]
fn sparsify_engine(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Engine>()?;
    m.add_function(wrap_pyfunction!(compile_model, m)?)?;
    m.add("EngineError", m.py().get_type::<EngineError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
