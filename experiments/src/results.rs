//! The results table: one row per finished point in `results.csv`, with the columns the issue
//! lists (model, recipe, structure, sparsity, accuracy, latency per batch with its spread,
//! speedup with its spread and whether it stayed doubtful, size, time, seed, revision, CPU, ISA,
//! data) and the peers' latencies when they were measured.

use std::path::Path;

use crate::point::PointResult;

/// Writes `results.csv` atomically.
pub fn write_csv(path: &Path, rows: &[PointResult], batches: &[usize]) -> anyhow::Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header: Vec<String> =
        ["id", "model", "recipe", "overrides", "structure", "target_sparsity", "measured_sparsity", "quantization", "top1"]
            .map(String::from)
            .to_vec();
    for b in batches {
        for c in [
            "median_ms",
            "p10_ms",
            "p90_ms",
            "dense_median_ms",
            "dense_p10_ms",
            "dense_p90_ms",
            "speedup",
            "speedup_p10",
            "speedup_p90",
            "attempts",
            "suspect",
            "onnxruntime_ms",
            "deepsparse_ms",
        ] {
            header.push(format!("{c}_b{b}"));
        }
    }
    header.extend(
        ["file_bytes", "train_seconds", "seed", "git_revision", "cpu", "isa", "data_source", "train_images", "test_images"]
            .map(String::from),
    );
    w.write_record(&header)?;
    for r in rows {
        let p = &r.point;
        let mut rec = vec![
            p.id.clone(),
            r.model.clone(),
            p.recipe.display().to_string(),
            p.overrides.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "),
            r.structure.clone(),
            format!("{:.4}", r.target_sparsity),
            format!("{:.4}", r.measured_sparsity),
            r.quantization.clone(),
            format!("{:.4}", r.top1),
        ];
        for b in batches {
            let t = r.timings.iter().find(|t| t.batch == *b);
            let f = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.4}"));
            rec.extend([
                f(t.map(|t| t.median_ms)),
                f(t.map(|t| t.p10_ms)),
                f(t.map(|t| t.p90_ms)),
                f(t.map(|t| t.dense_median_ms)),
                f(t.map(|t| t.dense_p10_ms)),
                f(t.map(|t| t.dense_p90_ms)),
                f(t.map(|t| t.speedup)),
                f(t.map(|t| t.speedup_p10)),
                f(t.map(|t| t.speedup_p90)),
                t.map_or(String::new(), |t| t.attempts.to_string()),
                // The reason, made safe for the table's plain comma-separated cells.
                t.and_then(|t| t.suspect.as_ref()).map_or(String::new(), |s| s.replace([',', '"'], ";")),
                f(t.and_then(|t| t.onnxruntime_ms)),
                f(t.and_then(|t| t.deepsparse_ms)),
            ]);
        }
        rec.extend([
            r.file_bytes.to_string(),
            format!("{:.1}", r.train_seconds),
            p.seed.to_string(),
            r.git_revision.clone(),
            r.cpu.clone(),
            r.isa.clone(),
            r.data_source.clone(),
            r.train_images.to_string(),
            r.test_images.to_string(),
        ]);
        w.write_record(&rec)?;
    }
    engine::fsutil::write_atomic(path, &w.into_inner()?)?;
    Ok(())
}

/// Points on the Pareto front of (speedup, accuracy): no other point is both faster and more
/// accurate. Returned sorted by speedup.
pub fn pareto(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut sorted: Vec<(f64, f64)> = points.to_vec();
    sorted.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.total_cmp(&a.1)));
    let mut front: Vec<(f64, f64)> = Vec::new();
    for p in sorted {
        if front.last().is_none_or(|l| p.1 > l.1) {
            front.push(p);
        }
    }
    front.reverse();
    front
}

#[cfg(test)]
mod tests {
    #[test]
    fn pareto_front_keeps_undominated_points() {
        let f = super::pareto(&[(1.0, 0.90), (2.0, 0.89), (3.0, 0.85), (2.5, 0.80), (1.5, 0.88)]);
        assert_eq!(f, vec![(1.0, 0.90), (2.0, 0.89), (3.0, 0.85)]);
    }
}
