//! The sweep's plots, each written as PNG and SVG: accuracy against measured speedup with the
//! Pareto front, accuracy against sparsity, latency against batch size, per-layer sparsity and
//! training curves. One series per model and mask structure.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::point::PointResult;
use crate::results::pareto;

/// A named series of `(x, y)` points, drawn as a line, markers or both, with error bars (each
/// a segment between two points) where it has them.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub line: bool,
    pub markers: bool,
    pub bars: Vec<[(f64, f64); 2]>,
}

/// A chart's text and axes.
pub struct Chart<'a> {
    pub title: &'a str,
    pub x: &'a str,
    pub y: &'a str,
    pub log_x: bool,
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn bounds(series: &[Series], pick: impl Fn(&(f64, f64)) -> f64) -> (f64, f64) {
    let vals: Vec<f64> =
        series.iter().flat_map(|s| s.points.iter().chain(s.bars.iter().flatten()).map(&pick)).filter(|v| v.is_finite()).collect();
    let (lo, hi) = vals.iter().fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    if vals.is_empty() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.08).max(hi.abs() * 0.02).max(1e-3);
    (lo - pad, hi + pad)
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, chart: &Chart, series: &[Series]) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (x0, x1) = bounds(series, |p| p.0);
    let (y0, y1) = bounds(series, |p| p.1);
    let mut builder = ChartBuilder::on(&root);
    builder.caption(chart.title, ("sans-serif", 22)).margin(12).x_label_area_size(40).y_label_area_size(60);
    macro_rules! body {
        ($ctx:expr) => {{
            let mut ctx = $ctx;
            ctx.configure_mesh().x_desc(chart.x).y_desc(chart.y).draw().map_err(|e| anyhow::anyhow!("{e}"))?;
            for (i, s) in series.iter().enumerate() {
                let color = COLORS[i % COLORS.len()];
                let pts: Vec<(f64, f64)> = s.points.iter().copied().filter(|p| p.0.is_finite() && p.1.is_finite()).collect();
                if s.line {
                    let anno = ctx.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2))).map_err(|e| anyhow::anyhow!("{e}"))?;
                    anno.label(&s.name).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
                }
                for bar in s.bars.iter().filter(|b| b.iter().all(|p| p.0.is_finite() && p.1.is_finite())) {
                    ctx.draw_series(std::iter::once(PathElement::new(bar.to_vec(), color.stroke_width(1))))
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                }
                if s.markers {
                    let anno =
                        ctx.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled()))).map_err(|e| anyhow::anyhow!("{e}"))?;
                    if !s.line {
                        anno.label(&s.name).legend(move |(x, y)| Circle::new((x + 9, y), 4, color.filled()));
                    }
                }
            }
            ctx.configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .position(SeriesLabelPosition::LowerLeft)
                .draw()
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }};
    }
    if chart.log_x {
        body!(builder.build_cartesian_2d((x0.max(0.5)..x1).log_scale(), y0..y1).map_err(|e| anyhow::anyhow!("{e}"))?);
    } else {
        body!(builder.build_cartesian_2d(x0..x1, y0..y1).map_err(|e| anyhow::anyhow!("{e}"))?);
    }
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// Renders a chart to `<stem>.png` and `<stem>.svg`, each written atomically.
pub fn render(stem: &Path, chart: &Chart, series: &[Series]) -> anyhow::Result<()> {
    let png = stem.with_extension("png");
    let tmp = stem.with_extension("tmp.png");
    draw(BitMapBackend::new(&tmp, (900, 600)).into_drawing_area(), chart, series)?;
    std::fs::rename(&tmp, &png)?;
    let mut svg = String::new();
    draw(SVGBackend::with_string(&mut svg, (900, 600)).into_drawing_area(), chart, series)?;
    engine::fsutil::write_atomic(&stem.with_extension("svg"), svg.as_bytes())?;
    Ok(())
}

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

/// The series a point belongs to: model, mask structure, and int8 when quantized.
fn series(r: &PointResult) -> String {
    let q = if r.quantization == "none" { String::new() } else { format!(" {}", r.quantization) };
    format!("{} {}{q}", r.model, r.structure)
}

/// A short series name for a point.
pub fn short(r: &PointResult) -> String {
    format!("{} {:.0}%", series(r), 100.0 * r.measured_sparsity)
}
