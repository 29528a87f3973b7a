//! The sweep's plots, each written as PNG and SVG: accuracy against measured speedup with the
//! Pareto front, accuracy against sparsity, latency against batch size, per-layer sparsity and
//! training curves. One series per model and mask structure.

use std::collections::BTreeMap;
use std::path::Path;

use sparsify::plot::{Chart, Series, render};

use crate::point::PointResult;
use crate::results::pareto;

fn group(rows: &[PointResult]) -> BTreeMap<String, Vec<&PointResult>> {
    let mut g: BTreeMap<String, Vec<&PointResult>> = BTreeMap::new();
    for r in rows {
        g.entry(series(r)).or_default().push(r);
    }
    g
}

fn largest_batch(rows: &[PointResult]) -> usize {
    rows.iter().flat_map(|r| r.timings.iter().map(|t| t.batch)).max().unwrap_or(1)
}

/// All plots of a sweep into `dir`; returns the file stems written.
pub fn all(dir: &Path, rows: &[PointResult]) -> anyhow::Result<Vec<String>> {
    let batch = largest_batch(rows);
    let timing = |r: &PointResult| r.timings.iter().find(|t| t.batch == batch).cloned();
    let speed = |r: &PointResult| timing(r).map_or(f64::NAN, |t| t.speedup);
    // The speedup's per-round range (10th-90th percentile) as a horizontal bar; none for points
    // timed before ranges were recorded.
    let speed_bar = |r: &PointResult| {
        let t = timing(r).filter(|t| t.attempts > 0)?;
        Some([(t.speedup_p10, 100.0 * r.top1), (t.speedup_p90, 100.0 * r.top1)])
    };
    let groups = group(rows);
    let mut written = Vec::new();

    let mut series: Vec<Series> = groups
        .iter()
        .map(|(name, rs)| Series {
            name: name.clone(),
            points: rs.iter().map(|r| (speed(r), 100.0 * r.top1)).collect(),
            line: false,
            markers: true,
            bars: rs.iter().filter_map(|r| speed_bar(r)).collect(),
        })
        .collect();
    series.push(Series {
        name: "Pareto front".into(),
        points: pareto(&rows.iter().map(|r| (speed(r), 100.0 * r.top1)).collect::<Vec<_>>()),
        line: true,
        markers: false,
        bars: Vec::new(),
    });
    let title = format!("Top-1 accuracy vs measured speedup over dense (batch {batch}; bars: 10th-90th percentile of rounds)");
    render(
        &dir.join("accuracy_vs_speedup"),
        &Chart { title: &title, x: "speedup over the same model with dense kernels (x)", y: "top-1 accuracy (%)", log_x: false },
        &series,
    )?;
    written.push("accuracy_vs_speedup".to_string());

    let series: Vec<Series> = groups
        .iter()
        .map(|(name, rs)| {
            let mut pts: Vec<(f64, f64)> = rs.iter().map(|r| (100.0 * r.measured_sparsity, 100.0 * r.top1)).collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            Series { name: name.clone(), points: pts, line: true, markers: true, bars: Vec::new() }
        })
        .collect();
    render(
        &dir.join("accuracy_vs_sparsity"),
        &Chart { title: "Top-1 accuracy vs sparsity", x: "sparsity of the pruned weights (%)", y: "top-1 accuracy (%)", log_x: false },
        &series,
    )?;
    written.push("accuracy_vs_sparsity".to_string());

    let series: Vec<Series> = rows
        .iter()
        .map(|r| Series {
            name: short(r),
            points: r.timings.iter().map(|t| (t.batch as f64, t.median_ms / t.batch as f64)).collect(),
            line: true,
            markers: true,
            bars: r
                .timings
                .iter()
                .filter(|t| t.attempts > 0)
                .map(|t| [(t.batch as f64, t.p10_ms / t.batch as f64), (t.batch as f64, t.p90_ms / t.batch as f64)])
                .collect(),
        })
        .collect();
    render(
        &dir.join("latency_vs_batch"),
        &Chart {
            title: "Latency per item vs batch size (engine; median, bars 10th-90th percentile)",
            x: "batch size",
            y: "ms per item",
            log_x: true,
        },
        &series,
    )?;
    written.push("latency_vs_batch".to_string());

    let series: Vec<Series> = rows
        .iter()
        .map(|r| Series {
            name: short(r),
            points: r.layers.iter().enumerate().map(|(i, (_, s))| (i as f64 + 1.0, 100.0 * s)).collect(),
            line: true,
            markers: true,
            bars: Vec::new(),
        })
        .collect();
    render(
        &dir.join("layer_sparsity"),
        &Chart { title: "Sparsity per layer (pruned weight tensors in order)", x: "layer", y: "sparsity (%)", log_x: false },
        &series,
    )?;
    written.push("layer_sparsity".to_string());

    let series: Vec<Series> = rows
        .iter()
        .flat_map(|r| {
            [
                Series {
                    name: format!("{} accuracy", short(r)),
                    points: r.curve.iter().map(|c| (c.0 as f64, 100.0 * c.1)).collect(),
                    line: true,
                    markers: false,
                    bars: Vec::new(),
                },
                Series {
                    name: format!("{} sparsity", short(r)),
                    points: r.curve.iter().map(|c| (c.0 as f64, 100.0 * c.2)).collect(),
                    line: true,
                    markers: true,
                    bars: Vec::new(),
                },
            ]
        })
        .collect();
    render(
        &dir.join("training_curves"),
        &Chart { title: "Training: test accuracy and sparsity per epoch", x: "epoch", y: "%", log_x: false },
        &series,
    )?;
    written.push("training_curves".to_string());
    Ok(written)
}

/// The series a point belongs to: model, mask structure, int8 when quantized, and whether its
/// per-layer sparsities were allocated for a speedup (`sparsify allocate`).
fn series(r: &PointResult) -> String {
    let q = if r.quantization == "none" { String::new() } else { format!(" {}", r.quantization) };
    let allocated = if r.point.allocated_for.is_some() { " allocated" } else { "" };
    format!("{} {}{q}{allocated}", r.model, r.structure)
}

/// A short series name for a point.
pub fn short(r: &PointResult) -> String {
    format!("{} {:.0}%", series(r), 100.0 * r.measured_sparsity)
}
