//! Reproducible sweeps: a sweep file names recipes, overrides and seeds; every point is trained
//! with sparsify, exported, evaluated and benchmarked in the engine (sparse against dense kernels
//! in the same run); the results become `results.csv`, plots and `report.md` under
//! `results/<sweep>/`. Points are cached by a hash of their configuration.

pub mod oneshot;
pub mod peers;
pub mod plan;
pub mod plots;
pub mod point;
pub mod report;
pub mod results;
pub mod sweep;
pub mod timing;

use std::path::Path;

use point::PointResult;
use sweep::Sweep;

/// Builds the table, plots and report from every finished point of `sweep`; returns how many
/// points were finished.
pub fn collect(sweep: &Sweep, sweep_file: &str, results_root: &Path, partial: bool) -> anyhow::Result<usize> {
    let dir = sweep.dir(results_root);
    let (mut rows, mut missing): (Vec<PointResult>, Vec<String>) = (Vec::new(), Vec::new());
    for p in &sweep.points {
        match point::finished(&dir, p) {
            Some(r) => rows.push(r),
            // A dependent job must be able to tell: missing points are an error unless asked for.
            None => missing.push(missing_point(&dir, p)),
        }
    }
    let list = missing.join("; ");
    if rows.is_empty() {
        anyhow::bail!("no finished points in {} yet: {list}", dir.display());
    }
    if !missing.is_empty() {
        if !partial {
            anyhow::bail!(
                "{} of {} points are not finished: {list}; run them, or pass --partial to collect the rest",
                missing.len(),
                sweep.points.len()
            );
        }
        eprintln!("warning: collecting {} of {} points; not finished: {list}", rows.len(), sweep.points.len());
    }
    std::fs::create_dir_all(&dir)?;
    results::write_csv(&dir.join("results.csv"), &rows, &sweep.batches)?;
    let plots = plots::all(&dir, &rows)?;
    report::write(&dir.join("report.md"), sweep_file, &rows, &sweep.batches, &plots)?;
    Ok(rows.len())
}

/// A point that is not finished, for collect's message: its label and folder, and where a
/// planned job logged its run, with the log's last error line when it failed.
fn missing_point(sweep_dir: &Path, p: &sweep::Point) -> String {
    let folder = point::point_dir(sweep_dir, p);
    let log = plan::log_path(&sweep_dir.join("logs"), p);
    let Ok(text) = std::fs::read_to_string(&log) else {
        let state = if folder.exists() { "unfinished" } else { "not started" };
        return format!("{} ({state}, {})", p.label(), folder.display());
    };
    match text.lines().rev().find(|l| l.starts_with("error:")) {
        Some(error) => format!("{} (failed, log {}: {error})", p.label(), log.display()),
        None => format!("{} (unfinished, log {})", p.label(), log.display()),
    }
}
