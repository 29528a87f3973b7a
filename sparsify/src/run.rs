//! The run folder: `recipe.toml` (as given), `recipe.resolved.toml`, `run.json` (git revision,
//! CPU, ISA, seed, times), `metrics.csv` (one row per epoch) and `checkpoints/epoch-N.safetensors`.
//! Every file is written atomically.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One row of `metrics.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_accuracy: Option<f64>,
    pub test_accuracy: f64,
    /// Fraction of zeros over all targeted weights.
    pub sparsity: f64,
    pub seconds: f64,
    /// `(parameter name, sparsity)` per targeted parameter.
    pub layers: Vec<(String, f64)>,
}

/// Metadata of a run (`run.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunInfo {
    pub recipe: String,
    pub overrides: Vec<(String, f64)>,
    pub seed: u64,
    pub threads: usize,
    pub git_revision: String,
    pub cpu: String,
    pub isa: String,
    pub dataset: String,
    pub data_source: String,
    /// The images' `[channels, rows, cols]` and the classes the model was built for.
    #[serde(default)]
    pub input: [usize; 3],
    #[serde(default)]
    pub classes: usize,
    /// Per-channel mean and standard deviation the inputs were standardised with.
    #[serde(default)]
    pub normalization: (Vec<f32>, Vec<f32>),
    pub train_images: usize,
    pub test_images: usize,
    pub started_unix: u64,
    pub finished_unix: Option<u64>,
    pub epochs_completed: usize,
    pub train_seconds: f64,
    pub final_test_accuracy: Option<f64>,
    pub final_sparsity: Option<f64>,
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The git revision of the code that runs (recorded at build time, `-dirty` where its tracked
/// files had changes), or "unknown" when it was built outside a repository.
pub fn git_revision() -> String {
    env!("SPARSIFY_GIT_REVISION").to_string()
}

/// The CPU's model name (the engine's reading of /proc/cpuinfo).
pub use engine::fsutil::cpu_name;

/// Refuses to train into a folder that holds something other than a run (`--out /` would write
/// beside the user's files), unless `force`: a missing or empty folder, or one with `run.json`
/// or `checkpoints/`, is fine.
pub fn check_out_folder(out: &Path, force: bool) -> anyhow::Result<()> {
    let Ok(mut entries) = std::fs::read_dir(out) else { return Ok(()) };
    let ours = out.join("run.json").is_file() || out.join("checkpoints").is_dir();
    if force || ours || entries.all(|e| e.is_ok_and(|e| e.file_name() == ".lock")) {
        return Ok(());
    }
    anyhow::bail!("{} exists and is not a sparsify run folder; choose another --out, or pass --force to write into it", out.display())
}

/// With `--resume`, the resolved recipe (overrides and seed included) must be the one the run
/// started with: otherwise the folder would misstate its own history. Names the first change.
pub fn check_same_recipe(out: &Path, resolved: &str) -> anyhow::Result<()> {
    let path = out.join("recipe.resolved.toml");
    let before = std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{}: {e} (needed to resume)", path.display()))?;
    if before == resolved {
        return Ok(());
    }
    let (old, new) = before.lines().zip(resolved.lines()).find(|(a, b)| a != b).unwrap_or(("(end)", "(end)"));
    anyhow::bail!(
        "{}: the recipe differs from the one this run started with (was `{}`, now `{}`); resume with the same recipe and --set values, or start a new --out",
        out.display(),
        old.trim(),
        new.trim()
    )
}

pub fn checkpoint_path(dir: &Path, epoch: usize) -> PathBuf {
    dir.join("checkpoints").join(format!("epoch-{epoch:03}.safetensors"))
}

/// The highest-epoch checkpoint in a run folder.
pub fn latest_checkpoint(dir: &Path) -> Option<(usize, PathBuf)> {
    std::fs::read_dir(dir.join("checkpoints"))
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name.strip_prefix("epoch-")?.strip_suffix(".safetensors")?.parse().ok()?;
            Some((n, e.path()))
        })
        .max_by_key(|(n, _)| *n)
}

/// `metrics.csv` text for the rows so far.
pub fn metrics_csv(rows: &[EpochMetrics]) -> anyhow::Result<String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header: Vec<String> =
        ["epoch", "lr", "train_loss", "train_accuracy", "val_accuracy", "test_accuracy", "sparsity", "seconds"].map(String::from).to_vec();
    if let Some(first) = rows.first() {
        header.extend(first.layers.iter().map(|(n, _)| format!("sparsity.{n}")));
    }
    w.write_record(&header)?;
    for r in rows {
        let mut rec = vec![
            r.epoch.to_string(),
            format!("{:.6e}", r.lr),
            format!("{:.6}", r.train_loss),
            format!("{:.6}", r.train_accuracy),
            r.val_accuracy.map_or(String::new(), |v| format!("{v:.6}")),
            format!("{:.6}", r.test_accuracy),
            format!("{:.6}", r.sparsity),
            format!("{:.3}", r.seconds),
        ];
        rec.extend(r.layers.iter().map(|(_, s)| format!("{s:.6}")));
        w.write_record(&rec)?;
    }
    Ok(String::from_utf8(w.into_inner()?)?)
}

/// Reads `metrics.csv` back (for resuming and plotting).
pub fn read_metrics(path: &Path) -> anyhow::Result<Vec<EpochMetrics>> {
    let mut r = csv::Reader::from_path(path)?;
    let header: Vec<String> = r.headers()?.iter().map(String::from).collect();
    let mut rows = Vec::new();
    for rec in r.records() {
        let rec = rec?;
        let f = |i: usize| -> anyhow::Result<f64> { Ok(rec.get(i).unwrap_or("").parse::<f64>()?) };
        rows.push(EpochMetrics {
            epoch: f(0)? as usize,
            lr: f(1)?,
            train_loss: f(2)?,
            train_accuracy: f(3)?,
            val_accuracy: f(4).ok(),
            test_accuracy: f(5)?,
            sparsity: f(6)?,
            seconds: f(7)?,
            layers: (8..header.len())
                .map(|i| Ok((header[i].trim_start_matches("sparsity.").to_string(), f(i)?)))
                .collect::<anyhow::Result<_>>()?,
        });
    }
    Ok(rows)
}

pub fn write_json<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    engine::fsutil::write_atomic(path, serde_json::to_string_pretty(value)?.as_bytes())?;
    Ok(())
}
