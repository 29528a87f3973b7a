//! `report.md`: the results table and the plots of a sweep, with the command that reproduces it.

use std::fmt::Write;
use std::path::Path;

use crate::point::PointResult;
use crate::timing::{ATTEMPTS, BOUND_MARGIN, BatchTiming, ROUNDS, WIDE_SPREAD};

/// A speedup with its per-round range, `?` when it stayed doubtful; points timed before ranges
/// were recorded show the speedup alone.
fn speedup_cell(t: &BatchTiming) -> String {
    let range = if t.attempts > 0 { format!(" ({:.2}-{:.2})", t.speedup_p10, t.speedup_p90) } else { String::new() };
    format!("{:.2}x{range}{}", t.speedup, if t.suspect.is_some() { " ?" } else { "" })
}

pub fn write(path: &Path, sweep_file: &str, rows: &[PointResult], batches: &[usize], plots: &[String]) -> anyhow::Result<()> {
    let mut md = String::new();
    writeln!(md, "# Results of `{sweep_file}`\n")?;
    writeln!(md, "Reproduce with `cargo run --release -p experiments -- run {sweep_file}` (finished points are reused).")?;
    if let Some(r) = rows.first() {
        writeln!(md, "Measured on {} ({}), git revision {}.\n", r.cpu, r.isa, r.git_revision)?;
    }
    // Where the images came from: one line when every point agrees, a warning and a column
    // when they do not (a table must not mix full-set and subset accuracies silently).
    let sources: std::collections::BTreeSet<(String, usize, usize)> =
        rows.iter().map(|r| (r.data_source.clone(), r.train_images, r.test_images)).collect();
    let mixed = sources.len() > 1;
    if mixed {
        writeln!(
            md,
            "**Warning: these points were trained and evaluated on different data** (see the data column):
"
        )?;
        for (s, tr, te) in &sources {
            writeln!(md, "- {s}: {tr} training / {te} test images")?;
        }
        writeln!(md)?;
    } else if let Some((s, tr, te)) = sources.first() {
        writeln!(md, "Data: {s}, {tr} training / {te} test images.\n")?;
    }
    writeln!(md, "Speedup is the same model run with dense fp32 kernels divided by its sparse (or int8) run, in the same process;")?;
    writeln!(
        md,
        "latencies are medians in milliseconds over {ROUNDS} alternating rounds (sparse and dense interleaved, so the machine's drift \
         affects both alike), and the speedup's range is the 10th-90th percentile of the per-round speedups. A timing whose range \
         is wider than {WIDE_SPREAD}x, or whose speedup is more than {BOUND_MARGIN}x what the model's arithmetic allows (all \
         multiply-adds over the non-zero ones), is measured again, up to {ATTEMPTS} times; one still doubtful is marked `?` and \
         listed below, and is measured again by the next `experiments run`. `experiments run SWEEP --rebench` measures every \
         finished point again on the current build, reusing its training.\n"
    )?;
    let mut header = "| model | structure | weights | setting | seed | sparsity | top-1 |".to_string();
    let mut rule = "|---|---|---|---|---|---|---|".to_string();
    for b in batches {
        write!(header, " ms b={b} | speedup b={b} |")?;
        rule += "---|---|";
        if rows.iter().any(|r| r.timings.iter().any(|t| t.batch == *b && (t.onnxruntime_ms.is_some() || t.deepsparse_ms.is_some()))) {
            write!(header, " ORT ms b={b} | DeepSparse ms b={b} |")?;
            rule += "---|---|";
        }
    }
    if mixed {
        header += " data |";
        rule += "---|";
    }
    writeln!(md, "{header} file |\n{rule}---|")?;
    for r in rows {
        let mut line = format!(
            "| {} | {} | {} | {} | {} | {:.1}% | {:.2}% |",
            r.model,
            r.structure,
            if r.quantization == "none" { "fp32" } else { r.quantization.as_str() },
            r.point.setting(),
            if r.point.oneshot.is_some() { "-".to_string() } else { r.point.seed.to_string() },
            100.0 * r.measured_sparsity,
            100.0 * r.top1
        );
        for b in batches {
            let t = r.timings.iter().find(|t| t.batch == *b);
            write!(line, " {} | {} |", t.map_or("-".into(), |t| format!("{:.3}", t.median_ms)), t.map_or("-".into(), speedup_cell))?;
            if rows.iter().any(|r| r.timings.iter().any(|t| t.batch == *b && (t.onnxruntime_ms.is_some() || t.deepsparse_ms.is_some()))) {
                let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
                write!(line, " {} | {} |", f(t.and_then(|t| t.onnxruntime_ms)), f(t.and_then(|t| t.deepsparse_ms)))?;
            }
        }
        if mixed {
            write!(line, " {} ({} / {}) |", r.data_source, r.train_images, r.test_images)?;
        }
        writeln!(md, "{line} {:.0} KiB |", r.file_bytes as f64 / 1024.0)?;
    }
    writeln!(md)?;
    let doubtful: Vec<String> = rows
        .iter()
        .flat_map(|r| {
            r.timings.iter().filter_map(move |t| t.suspect.as_ref().map(|why| format!("- {} at batch {}: {why}", r.point.label(), t.batch)))
        })
        .collect();
    if !doubtful.is_empty() {
        writeln!(md, "Doubtful timings (`?`), kept after {ATTEMPTS} measurements:\n\n{}\n", doubtful.join("\n"))?;
    }
    for p in plots {
        writeln!(md, "![{p}]({p}.png)\n")?;
    }
    engine::fsutil::write_atomic(path, md.as_bytes())?;
    Ok(())
}
