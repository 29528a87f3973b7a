//! A mutation fuzzer on stable Rust for everything the engine reads from a file: the native
//! format, the ONNX importer and the `.npy` reader. Seeds are the models in `tests/corpus/`
//! (real architectures' operators, fp32 and int8) and every crash found so far
//! (`tests/corpus/regressions/`); each mutant is loaded and, where it loads and is small enough
//! to run in milliseconds, compiled and run on 1 and 2 threads. The only outcomes allowed are a
//! one-line error or a result: a panic, signal, hang (`FUZZ_MUTANT_SECONDS`, default 20 s) or an
//! allocation over 4 GiB fails the test, and the mutant is saved under `target/fuzz-failures/`.
//!
//! `cargo test --release -p engine --test fuzz` runs a short campaign (`FUZZ_MUTANTS` per seed
//! and mutator, default 250; `FUZZ_SEED` picks the campaign); `scripts/fuzz` a long one.
//! `FUZZ_WRITE_CORPUS=1` rewrites the seed corpus from the test models; `FUZZ_ONLY=NAME` runs
//! one mutant by the name its failure was saved under.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use engine::compile::{KernelPolicy, Options};
use engine::exec::Session;
use engine::onnx::proto::ModelProto;
use engine::schedule::Schedule;
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Refuses (returns null for) any single allocation over 4 GiB: `try_reserve` callers get an
/// error, anything else aborts the test, as the acceptance criterion asks.
struct Capped;
const ALLOC_CAP: usize = 4 << 30;
static OVER_CAP: AtomicBool = AtomicBool::new(false);

unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOC_CAP {
            OVER_CAP.store(true, Ordering::Relaxed);
            return std::ptr::null_mut();
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOC_CAP {
            OVER_CAP.store(true, Ordering::Relaxed);
            return std::ptr::null_mut();
        }
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > ALLOC_CAP {
            OVER_CAP.store(true, Ordering::Relaxed);
            return std::ptr::null_mut();
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Capped = Capped;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Values near the edges of every integer width: what wraps shape and window arithmetic.
const EDGES: [i128; 22] = [
    0,
    1,
    2,
    3,
    7,
    255,
    256,
    65535,
    65536,
    (1 << 31) - 1,
    1 << 31,
    (1 << 32) - 1,
    1 << 32,
    (1 << 32) + 1,
    1 << 62,
    (1 << 62) + 10,
    (1 << 63) - 1,
    1 << 63,
    (1 << 64) - 1,
    -1,
    -(1 << 31),
    -(1 << 63),
];

fn edge(rng: &mut StdRng) -> i128 {
    if rng.random_bool(0.25) { rng.random_range(0..64) } else { EDGES[rng.random_range(0..EDGES.len())] }
}

/// A mutation strategy: a seed's bytes to a mutant's.
type Mutator = fn(&mut StdRng, &[u8]) -> Vec<u8>;

/// Flips, overwrites, truncates, duplicates or deletes bytes.
fn mutate_bytes(rng: &mut StdRng, bytes: &[u8]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        if b.is_empty() {
            break;
        }
        let at = rng.random_range(0..b.len());
        match rng.random_range(0..6) {
            0 => b[at] ^= 1 << rng.random_range(0..8),
            1 => b[at] = [0, 1, 0x7f, 0x80, 0xff][rng.random_range(0..5)],
            2 => b.truncate(at),
            3 => {
                let end = (at + rng.random_range(1..64)).min(b.len());
                let chunk = b[at..end].to_vec();
                b.splice(at..at, chunk);
            }
            4 => {
                let end = (at + rng.random_range(1..64)).min(b.len());
                b.drain(at..end);
            }
            _ => {
                let v = (edge(rng) as u64).to_le_bytes();
                let n = [1, 2, 4, 8][rng.random_range(0..4)];
                for (i, byte) in v.iter().take(n).enumerate() {
                    if let Some(slot) = b.get_mut(at + i) {
                        *slot = *byte;
                    }
                }
            }
        }
    }
    b
}

/// Sets one integer of the ONNX model (an attribute, a tensor's dims, the input's dims) to an
/// edge value, or drops an attribute, node or initializer.
fn mutate_onnx(rng: &mut StdRng, bytes: &[u8]) -> Vec<u8> {
    let Ok(mut model) = ModelProto::decode(bytes) else { return mutate_bytes(rng, bytes) };
    let Some(g) = model.graph.as_mut() else { return mutate_bytes(rng, bytes) };
    let v = edge(rng) as i64;
    match rng.random_range(0..6) {
        0 | 1 if !g.node.is_empty() => {
            let n = rng.random_range(0..g.node.len());
            let node = &mut g.node[n];
            if node.attribute.is_empty() && !node.input.is_empty() {
                let last = node.input.len().saturating_sub(1);
                node.input.swap(0, last);
            } else if !node.attribute.is_empty() {
                let a = rng.random_range(0..node.attribute.len());
                let attr = &mut node.attribute[a];
                if attr.ints.is_empty() {
                    attr.i = v;
                    attr.f = f32::from_bits(v as u32);
                } else {
                    let i = rng.random_range(0..attr.ints.len());
                    attr.ints[i] = v;
                }
            }
        }
        2 if !g.initializer.is_empty() => {
            let t = rng.random_range(0..g.initializer.len());
            let init = &mut g.initializer[t];
            if init.dims.is_empty() {
                init.dims.push(v);
            } else {
                let d = rng.random_range(0..init.dims.len());
                init.dims[d] = v;
            }
        }
        3 => {
            if let Some(dims) =
                g.input.first_mut().and_then(|i| i.r#type.as_mut()).and_then(|t| t.tensor_type.as_mut()).and_then(|t| t.shape.as_mut())
                && !dims.dim.is_empty()
            {
                let d = rng.random_range(0..dims.dim.len());
                dims.dim[d].dim_value = Some(v);
            }
        }
        4 if !g.node.is_empty() => {
            let n = rng.random_range(0..g.node.len());
            g.node.remove(n);
        }
        _ if !g.initializer.is_empty() => {
            let t = rng.random_range(0..g.initializer.len());
            let init = &mut g.initializer[t];
            let keep = rng.random_range(0..=init.raw_data.len());
            init.raw_data.truncate(keep);
        }
        _ => return mutate_bytes(rng, bytes),
    }
    model.encode_to_vec()
}

/// Sets one number of the native file's graph (shapes, windows) or its tensor table (dtypes,
/// shapes, offsets) to an edge value; the header is rewritten with its new length.
fn mutate_native(rng: &mut StdRng, bytes: &[u8]) -> Vec<u8> {
    let Some(len) = bytes.get(..8).map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize) else { return mutate_bytes(rng, bytes) };
    let Some(header) = bytes.get(8..8 + len).and_then(|h| serde_json::from_slice::<serde_json::Value>(h).ok()) else {
        return mutate_bytes(rng, bytes);
    };
    let mut header = header;
    let in_graph = rng.random_bool(0.6);
    if in_graph {
        let Some(text) = header.pointer("/__metadata__/graph").and_then(|g| g.as_str()) else { return mutate_bytes(rng, bytes) };
        let Ok(mut graph) = serde_json::from_str::<serde_json::Value>(text) else { return mutate_bytes(rng, bytes) };
        set_random_number(rng, &mut graph);
        header["__metadata__"]["graph"] = serde_json::Value::String(graph.to_string());
    } else {
        set_random_number(rng, &mut header);
    }
    let mut text = header.to_string().into_bytes();
    while text.len() % 8 != 0 {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[8 + len..]);
    out
}

/// Replaces one number somewhere in `v` (chosen uniformly among all numbers) with an edge value.
fn set_random_number(rng: &mut StdRng, v: &mut serde_json::Value) {
    fn count(v: &serde_json::Value) -> usize {
        match v {
            serde_json::Value::Number(_) => 1,
            serde_json::Value::Array(a) => a.iter().map(count).sum(),
            serde_json::Value::Object(o) => o.values().map(count).sum(),
            _ => 0,
        }
    }
    fn set(v: &mut serde_json::Value, mut k: usize, new: &serde_json::Value) -> usize {
        match v {
            serde_json::Value::Number(_) if k == 0 => {
                *v = new.clone();
                usize::MAX
            }
            serde_json::Value::Number(_) => k - 1,
            serde_json::Value::Array(a) => {
                for x in a {
                    k = set(x, k, new);
                    if k == usize::MAX {
                        break;
                    }
                }
                k
            }
            serde_json::Value::Object(o) => {
                for x in o.values_mut() {
                    k = set(x, k, new);
                    if k == usize::MAX {
                        break;
                    }
                }
                k
            }
            _ => k,
        }
    }
    let n = count(v);
    if n == 0 {
        return;
    }
    let e = edge(rng);
    let new = if e >= 0 { serde_json::json!(e.min(u64::MAX as i128) as u64) } else { serde_json::json!(e as i64) };
    set(v, rng.random_range(0..n), &new);
}

/// Per-sample elements of every value and all weights, if the model loads.
fn workload(g: &engine::graph::Graph) -> Option<usize> {
    let shapes = g.infer_shapes().ok()?;
    let values: usize = shapes.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
    let weights: usize = g.nodes.iter().filter_map(|n| n.op.weight()).map(|w| w.data.len()).sum();
    Some(values + weights)
}

/// Loads a model file's bytes and, where it is small, compiles and runs it. Returns whether it
/// loaded and whether it ran; errors are fine (a refusal), panics propagate.
fn exercise_model(bytes: &[u8], rng: &mut StdRng) -> (bool, bool) {
    let Ok(graph) = engine::load_bytes(bytes, "mutant") else { return (false, false) };
    // Large but valid geometries are checked for loading and shape inference only: running
    // them is correct, just slow for a fuzzer.
    if workload(&graph).is_none_or(|n| n > 1 << 20) {
        return (true, false);
    }
    let policy = [KernelPolicy::Sparse, KernelPolicy::Dense, KernelPolicy::Auto][rng.random_range(0..3)];
    let mut options = Options::new(policy).expect("options");
    options.tile = [1, 3, 16, 64][rng.random_range(0..4)];
    let Ok(model) = engine::compile::compile(graph, options) else { return (true, false) };
    let schedule = [Schedule::Auto, Schedule::Layerwise, Schedule::Depthwise][rng.random_range(0..3)];
    let budget = [None, Some(4096), Some(64 << 10)][rng.random_range(0..3)];
    for (threads, batch) in [(1, 1), (2, 3)] {
        let Ok(mut session) = Session::with_schedule(&model, threads, schedule, budget) else { return (true, false) };
        let x: Vec<f32> = (0..model.value_sizes[0] * batch).map(|_| rng.random_range(-1.0..1.0f32)).collect();
        let _ = session.run(&x, batch);
    }
    (true, true)
}

fn exercise_npy(bytes: &[u8], dir: &Path) -> bool {
    let path = dir.join("mutant.npy");
    std::fs::write(&path, bytes).unwrap();
    engine::npy::read(&path).is_ok()
}

/// The seed files: `(name, bytes)`, the corpus then the regressions.
fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for dir in [corpus_dir(), corpus_dir().join("regressions")] {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut paths: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
        paths.sort();
        for p in paths {
            out.push((p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()));
        }
    }
    out
}

fn write_corpus() {
    let dir = corpus_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let models = [
        ("lenet5_s90", common::lenet(7, 0.9)),
        ("rescnn_s70", common::cnn(8, 0.7)),
        ("convstack_s80", common::conv_stack(9, 0.8)),
        ("mlp_s90", common::mlp_with(10, 0.9, [64, 48, 32, 10])),
        ("lenet5_q8", common::quantized(common::lenet(11, 0.8))),
        ("rescnn_q8", common::quantized(common::cnn(12, 0.5))),
        ("mobile_s80", common::mobile(13, 0.8)),
    ];
    for (name, g) in models {
        let out = g.output_shape().unwrap();
        std::fs::write(dir.join(format!("{name}.sparse")), engine::format::to_bytes(&g).unwrap()).unwrap();
        std::fs::write(dir.join(format!("{name}.onnx")), engine::onnx::export::export(&g, &out)).unwrap();
    }
    let x = common::random_input(1, 2, &[3, 4]);
    std::fs::write(dir.join("input.npy"), engine::npy::to_bytes(&x)).unwrap();
}

#[test]
fn mutants_are_refused_or_run() {
    if std::env::var("FUZZ_WRITE_CORPUS").is_ok() {
        write_corpus();
    }
    let seeds = seeds();
    assert!(seeds.len() >= 13, "the seed corpus is missing ({} files in {})", seeds.len(), corpus_dir().display());
    let per_seed = env_number("FUZZ_MUTANTS", 250);
    let campaign = env_number("FUZZ_SEED", 1);
    let limit = Duration::from_secs(env_number("FUZZ_MUTANT_SECONDS", 20));
    // One mutant by its name (as a failure is saved), to reproduce it.
    let only = std::env::var("FUZZ_ONLY").ok();
    let failures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-failures");
    std::fs::create_dir_all(&failures).unwrap();
    let scratch = tempfile::tempdir().unwrap();

    // A watchdog: the mutant being run is on disk, and a hang ends the process naming it.
    let current = failures.join("current");
    let started = std::sync::Arc::new(AtomicU64::new(0));
    let label = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let clock = Instant::now();
    {
        let (started, current, label) = (started.clone(), current.clone(), label.clone());
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(500));
                let s = started.load(Ordering::Relaxed);
                if s != 0 && (clock.elapsed().as_millis() as u64).saturating_sub(s) > limit.as_millis() as u64 {
                    let label = label.lock().map(|l| l.clone()).unwrap_or_default();
                    eprintln!("fuzz: mutant {label} ran longer than {limit:?}: {}", current.display());
                    std::process::exit(1);
                }
            }
        });
    }
    std::panic::set_hook(Box::new(|_| {}));
    let (mut tried, mut loaded, mut ran, mut bad) = (0u64, 0u64, 0u64, Vec::new());
    // Mutants per format: native, ONNX, .npy.
    let mut per_format = [0u64; 3];
    for (s, (name, bytes)) in seeds.iter().enumerate() {
        let is_npy = name.ends_with(".npy");
        let mutators: &[(&str, Mutator)] = match engine::sniff(bytes) {
            _ if is_npy => &[("bytes", mutate_bytes)],
            engine::FileKind::Native => &[("bytes", mutate_bytes), ("fields", mutate_native)],
            engine::FileKind::Onnx => &[("bytes", mutate_bytes), ("fields", mutate_onnx)],
        };
        let format = if is_npy {
            2
        } else if engine::sniff(bytes) == engine::FileKind::Native {
            0
        } else {
            1
        };
        per_format[format] += per_seed * mutators.len() as u64;
        for (m, (mname, mutate)) in mutators.iter().enumerate() {
            let mut rng = StdRng::seed_from_u64(campaign.wrapping_mul(1_000_003) ^ ((s as u64) << 8) ^ m as u64);
            for i in 0..per_seed {
                let mutant = if i == 0 { bytes.clone() } else { mutate(&mut rng, bytes) };
                let this = format!("{name}.{mname}.{campaign}.{i}");
                if only.as_ref().is_some_and(|o| *o != this) {
                    continue;
                }
                std::fs::write(&current, &mutant).unwrap();
                *label.lock().unwrap() = this;
                started.store(clock.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
                let mut run_rng = StdRng::seed_from_u64(i);
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    if is_npy { (exercise_npy(&mutant, scratch.path()), false) } else { exercise_model(&mutant, &mut run_rng) }
                }));
                started.store(0, Ordering::Relaxed);
                tried += 1;
                match outcome {
                    Ok((l, r)) => {
                        loaded += l as u64;
                        ran += r as u64;
                    }
                    Err(_) => {
                        let path = failures.join(format!("{name}.{mname}.{campaign}.{i}"));
                        std::fs::write(&path, &mutant).unwrap();
                        bad.push(path.display().to_string());
                    }
                }
                assert!(!OVER_CAP.load(Ordering::Relaxed), "an allocation over 4 GiB was attempted: {}", current.display());
            }
        }
    }
    let _ = std::panic::take_hook();
    let [native, onnx, npy] = per_format;
    eprintln!(
        "fuzz: {tried} mutants of {} seeds (campaign {campaign}; {native} native, {onnx} ONNX, {npy} .npy): {loaded} loaded, {ran} compiled and ran, {} panicked",
        seeds.len(),
        bad.len()
    );
    assert!(bad.is_empty(), "{} mutants panicked; saved as\n{}", bad.len(), bad.join("\n"));
    assert!(ran > 0 || only.is_some(), "no mutant ran: the harness is not reaching the kernels");
}
