//! `engine info`, `run`, `eval` and `analyze`.

use std::path::Path;

use anyhow::{Context, bail};
use engine::compile::{self, Exec, Model, Options};
use engine::graph::Ports;
use engine::npy;
use engine::schedule::Schedule;

use crate::ModelArgs;
use engine::stats::Latency;

/// Loads and compiles the model named by `--model`.
pub fn compile_model(args: &ModelArgs) -> anyhow::Result<Model> {
    let graph = engine::load(&args.model)?;
    let options = Options::new(args.kernels)?;
    compile::compile(graph, options).with_context(|| format!("compiling {}", args.model.display()))
}

pub fn info(args: &ModelArgs, batch: usize) -> anyhow::Result<()> {
    if batch == 0 {
        bail!("--batch must be at least 1");
    }
    let model = compile_model(args)?;
    println!("model:   {}", args.model.display());
    println!("input:   {} {:?} per sample", model.graph.input, model.input_shape);
    println!("output:  {} {:?} per sample", model.graph.output, model.output_shape);
    println!("isa:     {} (set ENGINE_ISA=scalar|avx2|avx512 to force)", model.options.isa.name());
    if engine::kernels::q8amx::available(model.options.isa) {
        println!("amx:     {} (int8 layers on AMX tiles; set ENGINE_AMX=off|on|timed)", model.options.amx.name());
    }
    println!();
    println!(
        "{:<18} {:<8} {:<16} {:<16} {:>8} {:<16} {:<16} {:>10}",
        "layer", "op", "output", "weight", "sparsity", "kernel b=1", "kernel b>1", "memory"
    );
    let mut total = 0;
    for l in engine::report::layers(&model) {
        total += l.weight_bytes;
        println!(
            "{:<18} {:<8} {:<16} {:<16} {:>8} {:<16} {:<16} {:>10}",
            l.layer,
            l.op,
            format!("{:?}", l.output),
            l.weight.map_or("-".into(), |[r, c]| format!("[{r}, {c}]")),
            l.sparsity.map_or("-".into(), |s| format!("{:.1}%", 100.0 * s)),
            l.kernel_batch1.unwrap_or("-"),
            l.kernel_batched.unwrap_or("-"),
            human_bytes(l.weight_bytes)
        );
    }
    println!("{:<18} {:>98}", "total weights", human_bytes(total));
    for l in &model.layers {
        if let Exec::MatMul(m) = &l.exec
            && let Some((shared, blocks)) = m
                .kernels
                .f32(false)
                .and_then(|k| k.taps())
                .or_else(|| m.kernels.f32(true).and_then(|k| k.taps()))
                .map(|t| t.shared_blocks())
                .filter(|&(shared, _)| shared > 0)
        {
            let block = engine::kernels::direct::BLOCK;
            println!("{}: {shared} of {blocks} blocks of {block} output channels share their taps (dense or 4x1) and run together", l.name);
        }
    }
    let session = args.session(&model)?;
    let plan = session.plan(batch);
    println!();
    println!(
        "schedule: {} for batch {batch} on {} threads ({} requested): tiles of {} sample{}, cache budget {} per column",
        plan.schedule.name(),
        session.threads(),
        args.schedule.name(),
        plan.tile,
        if plan.tile == 1 { "" } else { "s" },
        human_bytes(plan.budget)
    );
    if args.schedule == Schedule::Auto && plan.schedule == Schedule::Depthwise {
        println!(
            "          (auto: timed against layerwise, and against the widest tile throughout, at the first run of batch {batch}; the fastest kept)"
        );
    }
    if let Some(c) = plan.columns.iter().find(|c| c.tile != plan.tile) {
        println!(
            "          (from column {} on, tiles of {} samples: the values crossing into them are copied once)",
            plan.columns.iter().position(|x| x == c).unwrap_or(0),
            c.tile
        );
    }
    println!("{:<8} {:<40} {:>12} {:>6} {:>10} {:>5}", "column", "layers", "working set", "fits", "row bands", "tile");
    for (i, c) in plan.columns.iter().enumerate() {
        let names: Vec<&str> = model.layers[c.layers.clone()].iter().map(|l| l.name.as_str()).collect();
        let names =
            if names.len() > 3 { format!("{} .. {} ({})", names[0], names[names.len() - 1], names.len()) } else { names.join(", ") };
        let bands = if c.bands > 1 { c.bands.to_string() } else { "-".into() };
        println!(
            "{i:<8} {names:<40} {:>12} {:>6} {bands:>10} {:>5}",
            human_bytes(c.working_set),
            if c.fits { "yes" } else { "no" },
            c.tile
        );
    }
    Ok(())
}

pub fn human_bytes(b: usize) -> String {
    match b {
        0 => "-".into(),
        b if b < 1 << 10 => format!("{b} B"),
        b if b < 1 << 20 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{:.2} MiB", b as f64 / (1 << 20) as f64),
    }
}

pub fn run(args: &ModelArgs, inputs: &[String], output: &Path) -> anyhow::Result<()> {
    let model = compile_model(args)?;
    let (x, batch) = packed_inputs(&model, inputs)?;
    let mut session = args.session(&model)?;
    let y = session.run(&x, batch)?;
    let Some(ports) = &model.graph.ports else {
        let mut shape = vec![batch];
        shape.extend(&model.output_shape);
        npy::write(output, &npy::Array { shape, data: y })?;
        return Ok(());
    };
    std::fs::create_dir_all(output).with_context(|| format!("creating {}", output.display()))?;
    let per_sample: usize = model.output_shape.iter().product();
    for (range, port) in Ports::placed(&ports.outputs) {
        let data = (0..batch).flat_map(|b| y[b * per_sample..][range.clone()].iter().copied()).collect();
        let shape = [batch].into_iter().chain(port.shape.iter().copied()).collect();
        npy::write(&output.join(format!("{}.npy", file_name(&port.name))), &npy::Array { shape, data })?;
    }
    Ok(())
}

/// A port's name as a file name: path separators and other odd characters become `_`.
fn file_name(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect()
}

/// The model's input for `engine run`: one file, or one `NAME=FILE` per input of a model with
/// several, packed sample by sample; and the batch size.
fn packed_inputs(model: &Model, inputs: &[String]) -> anyhow::Result<(Vec<f32>, usize)> {
    let batch_of = |a: &npy::Array, shape: &[usize], what: &str| -> anyhow::Result<usize> {
        let batch = a.shape.first().copied().unwrap_or(0);
        if a.shape.len() < 2 || a.shape[1..].iter().product::<usize>() != shape.iter().product::<usize>() {
            bail!("{what}: shape {:?} does not fit the model input [batch, {shape:?}]", a.shape);
        }
        Ok(batch)
    };
    let Some(ports) = &model.graph.ports else {
        let [path] = inputs else { bail!("the model has one input: give one --input FILE.npy") };
        let path = Path::new(path.split_once('=').map_or(path.as_str(), |(_, p)| p));
        let x = npy::read(path)?;
        let batch = batch_of(&x, &model.input_shape, &path.display().to_string())?;
        return Ok((x.data, batch));
    };
    let mut arrays = Vec::new();
    for port in &ports.inputs {
        let given = inputs.iter().find_map(|i| i.split_once('=').filter(|(n, _)| *n == port.name));
        let Some((_, path)) = given else {
            let names = ports.inputs.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ");
            bail!("the model takes inputs {names}: give --input {}=FILE.npy for each", port.name);
        };
        let a = npy::read(Path::new(path))?;
        arrays.push((batch_of(&a, &port.shape, path)?, a));
    }
    if let Some(unknown) = inputs.iter().find(|i| !ports.inputs.iter().any(|p| i.split_once('=').is_some_and(|(n, _)| n == p.name))) {
        bail!("--input {unknown}: the model has no input of that name");
    }
    let batch = arrays[0].0;
    if arrays.iter().any(|(b, _)| *b != batch) {
        bail!("the inputs have different batch sizes");
    }
    let per_sample: usize = model.input_shape.iter().product();
    let mut x = Vec::with_capacity(batch * per_sample);
    for b in 0..batch {
        for (port, (_, a)) in ports.inputs.iter().zip(&arrays) {
            x.extend_from_slice(&a.data[b * port.elements()..(b + 1) * port.elements()]);
        }
    }
    Ok((x, batch))
}

pub fn eval(args: &ModelArgs, dataset: &str, resolver: datasets::Resolver, batch: usize, json: bool) -> anyhow::Result<()> {
    if batch == 0 {
        bail!("--batch must be at least 1");
    }
    let model = compile_model(args)?;
    let d = resolver.load(dataset)?;
    let per_sample: usize = model.input_shape.iter().product();
    if d.test.image_size() != per_sample {
        bail!("the model takes {:?} per sample but {dataset} images are {:?}", model.input_shape, d.test.shape());
    }
    // A batch larger than the test set is the whole test set.
    let batch = batch.min(d.test.len().max(1));
    let mut session = args.session(&model)?;
    let order: Vec<usize> = (0..d.test.len()).collect();
    let (mut correct, mut seconds) = (0usize, Vec::new());
    for b in datasets::batch::batches(&d.test, &order, batch, &d.norm, None) {
        let t = std::time::Instant::now();
        let logits = session.run(&b.inputs, b.len())?;
        seconds.push(t.elapsed().as_secs_f64());
        correct += engine::top1::correct(&logits, logits.len() / b.len().max(1), &b.labels);
    }
    let accuracy = correct as f64 / d.test.len() as f64;
    let lat = Latency::from_seconds(&seconds);
    if json {
        let v = serde_json::json!({"model": args.model, "dataset": dataset, "source": d.source.to_string(), "test_images": d.test.len(),
            "accuracy": accuracy, "batch": batch, "threads": session.threads(), "median_batch_ms": lat.median_ms,
            "items_per_s": batch as f64 / (lat.mean_ms / 1e3)});
        println!("{v}");
    } else {
        println!("dataset:   {dataset} test set, {} images ({})", d.test.len(), d.source);
        println!("accuracy:  {:.2}% top-1 ({correct}/{})", 100.0 * accuracy, d.test.len());
        println!("latency:   {:.3} ms median per batch of {batch}, {} threads", lat.median_ms, session.threads());
    }
    Ok(())
}

pub fn analyze(args: &ModelArgs, batch: usize, iters: usize) -> anyhow::Result<()> {
    if batch == 0 || iters == 0 {
        bail!("--batch and --iters must be at least 1");
    }
    let model = compile_model(args)?;
    let mut session = args.session(&model)?;
    let layers = engine::report::analyze(&mut session, &model, batch, iters)?;
    let total: f64 = layers.iter().map(|l| l.ms).sum();
    let plan = session.plan(batch);
    println!(
        "batch {batch}, {} threads, {} schedule (tiles of {}, {} columns), median of {iters} runs",
        session.threads(),
        plan.schedule.name(),
        plan.tile,
        plan.columns.len()
    );
    println!("{:<18} {:<8} {:>10} {:>7} {:>10} {:>9} {:<14}", "layer", "op", "time ms", "share", "GFLOP/s", "sparsity", "kernel");
    for l in &layers {
        println!(
            "{:<18} {:<8} {:>10.4} {:>6.1}% {:>10} {:>9} {:<14}",
            l.layer,
            l.op,
            l.ms,
            100.0 * l.share,
            l.gflops.map_or("-".into(), |g| format!("{g:.1}")),
            l.sparsity.map_or("-".into(), |s| format!("{:.1}%", 100.0 * s)),
            l.kernel.unwrap_or("-")
        );
    }
    println!("{:<18} {:<8} {:>10.4}", "total", "", total);
    Ok(())
}
