//! Charts as PNG and SVG: named series of points, lines or markers, with error bars, on linear
//! or log axes; used by the sweeps' plots and `sparsify sensitivity`.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

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
