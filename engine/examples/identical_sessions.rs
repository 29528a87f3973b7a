//! Times four identical sessions of one model in rotating blocks in one process, to show how
//! much a session's memory placement alone changes its speed (the first session's arena is
//! usually allocated right after the input). Prints each session's median latency.
//!
//! cargo run --release -p engine --example identical_sessions -- MODEL BATCH THREADS

use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [path, batch, threads] = &args[..] else {
        return Err("usage: identical_sessions MODEL BATCH THREADS".into());
    };
    let (batch, threads): (usize, usize) = (batch.parse()?, threads.parse()?);
    let model = engine::compile::compile(engine::load(std::path::Path::new(path))?, engine::compile::Options::new(Default::default())?)?;
    let per_sample = model.value_sizes[0];
    let input: Vec<f32> = (0..per_sample * batch).map(|i| ((i * 7919) % 1000) as f32 / 1000.0).collect();
    let mut sessions = (0..4).map(|_| engine::exec::Session::new(&model, threads)).collect::<Result<Vec<_>, _>>()?;
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); sessions.len()];
    for round in 0..40 {
        for k in 0..sessions.len() {
            let i = (k + round) % sessions.len();
            // One untimed run (the other sessions have just used the cache), then 50 ms of runs.
            sessions[i].run(&input, batch)?;
            let block = Instant::now();
            while block.elapsed().as_secs_f64() < 0.05 {
                let t = Instant::now();
                std::hint::black_box(sessions[i].run(&input, batch)?);
                times[i].push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    for (i, t) in times.iter_mut().enumerate() {
        t.sort_by(f64::total_cmp);
        println!("session {i}: median {:.4} ms", t[t.len() / 2]);
    }
    Ok(())
}
