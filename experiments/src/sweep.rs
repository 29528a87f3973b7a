//! Sweep files: which recipes to train, with which fixed overrides, which variables to sweep
//! over (every combination), which seeds, and how to benchmark. Each point of a sweep is named
//! by a hash of everything that determines its result, so finished points are reused and an
//! interrupted sweep resumes where it stopped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSweep {
    version: u32,
    /// Results go to `results/<name>/`.
    name: String,
    /// Batch sizes benchmarked for every point (default [1, 64]).
    #[serde(default = "default_batches")]
    batches: Vec<usize>,
    /// Threads for benchmarks (default 2).
    #[serde(default = "default_threads")]
    threads: usize,
    /// Seconds of timing per model and batch size (default 1).
    #[serde(default = "default_seconds")]
    bench_seconds: f64,
    /// Whether the embedded subset may stand in for a full dataset that is not found (as
    /// `--allow-subset`); the results say which data each point used.
    #[serde(default)]
    allow_subset: bool,
    /// Seeds every study is trained with (default [0]).
    #[serde(default = "default_seeds")]
    seeds: Vec<u64>,
    /// What a Slurm job of this sweep asks for.
    #[serde(default)]
    cluster: Cluster,
    study: Vec<RawStudy>,
}

/// A sweep's `[cluster]` table: what each Slurm task asks for beyond its CPUs (which are the
/// sweep's `threads`). Unset fields are left to the cluster's defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// `--partition`.
    pub partition: Option<String>,
    /// `--time`, such as "00:30:00" or "1-00:00:00".
    pub time: Option<String>,
    /// `--mem`, such as "4G".
    pub mem: Option<String>,
}

impl Cluster {
    /// The `#SBATCH` options it sets, as `(option, value)`.
    pub fn options(&self) -> Vec<(&'static str, &str)> {
        [("partition", &self.partition), ("time", &self.time), ("mem", &self.mem)]
            .into_iter()
            .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
            .collect()
    }

    /// Refuses values that are empty or could break out of an `#SBATCH` line.
    fn check(&self, file: &Path) -> anyhow::Result<()> {
        for (key, value) in self.options() {
            if value.is_empty() || !value.chars().all(|c| c.is_ascii_alphanumeric() || "-_:.,+".contains(c)) {
                bail!("{}: [cluster] {key} = {value:?}: use letters, digits and - _ : . , + only", file.display());
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStudy {
    /// Recipe path, relative to the sweep file's folder's parent (the repository root).
    #[serde(default)]
    recipe: Option<String>,
    /// Or a trained model pruned one-shot (no training): `sweep` then varies `sparsity`.
    #[serde(default)]
    oneshot: Option<RawOneshot>,
    /// Or recipes made by `sparsify allocate` for each target speedup, then trained.
    #[serde(default)]
    allocate: Option<RawAllocate>,
    /// Variables set for every point of this study.
    #[serde(default)]
    set: BTreeMap<String, f64>,
    /// Variables swept: every combination of their values is a point.
    #[serde(default)]
    sweep: BTreeMap<String, Vec<f64>>,
    /// Train each point without and/or with int8 quantization-aware training (default
    /// `[false]`); `true` adds `quantization_modifier` to the recipe.
    #[serde(default = "default_quantize")]
    quantize: Vec<bool>,
}

/// A one-shot study: a model file pruned by each method to each swept `sparsity`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOneshot {
    /// ONNX or engine model file, relative like recipes.
    model: String,
    #[serde(default = "default_methods")]
    methods: Vec<sparsify::oneshot::Method>,
    #[serde(default = "default_mask")]
    mask: String,
    /// Calibration images (from the dataset's training set).
    #[serde(default = "default_samples")]
    samples: usize,
    #[serde(default = "default_dataset")]
    dataset: String,
}

fn default_methods() -> Vec<sparsify::oneshot::Method> {
    vec![sparsify::oneshot::Method::Obs]
}
fn default_mask() -> String {
    "unstructured".into()
}
fn default_samples() -> usize {
    512
}
fn default_dataset() -> String {
    "fashion-mnist".into()
}

/// An allocation study: per-layer sparsities chosen from a sensitivity table for each target
/// speedup at `batch`, given to `recipe`'s gmp modifier, each recipe trained.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllocate {
    /// The CSV of `sparsify sensitivity`, relative like recipes.
    sensitivity: String,
    /// The recipe that takes the per-layer targets.
    recipe: String,
    speedups: Vec<f64>,
    #[serde(default = "default_allocation_batch")]
    batch: usize,
}

fn default_allocation_batch() -> usize {
    64
}

/// What a one-shot point prunes, and how.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OneshotPoint {
    pub model: PathBuf,
    /// SHA-256 prefix of the model file: a changed file is a new point.
    pub model_hash: String,
    pub method: sparsify::oneshot::Method,
    pub mask: String,
    pub samples: usize,
    pub dataset: String,
    pub sparsity: f64,
}

fn default_quantize() -> Vec<bool> {
    vec![false]
}

/// The quantization modifier a sweep adds to a recipe for its int8 points: fake quantization
/// over the last 20% of training, observers frozen for the last 5%, as the shipped qat recipes.
pub fn quantization_modifier(epochs: f64) -> String {
    let (start, freeze) = ((epochs * 0.8).floor(), (epochs * 0.95).floor());
    // Observers must see data before they freeze; very short runs never freeze them.
    let freeze = if freeze > start { format!("freeze_observers_epoch = {freeze}\nfreeze_bn_epoch = {freeze}\n") } else { String::new() };
    format!("\n# Added by the sweep for its int8 points.\n[[modifiers]]\ntype = \"quantization\"\nstart_epoch = {start}\n{freeze}")
}

fn default_batches() -> Vec<usize> {
    vec![1, 64]
}
fn default_threads() -> usize {
    2
}
fn default_seconds() -> f64 {
    1.0
}
fn default_seeds() -> Vec<u64> {
    vec![0]
}

/// One training run of a sweep and everything that determines it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Point {
    pub id: String,
    pub recipe: PathBuf,
    pub recipe_text: String,
    pub overrides: Vec<(String, f64)>,
    pub seed: u64,
    /// The sweep added int8 quantization-aware training to the recipe.
    #[serde(default)]
    pub quantized: bool,
    /// A one-shot point: `recipe` is then the model file, and nothing is trained.
    #[serde(default)]
    pub oneshot: Option<OneshotPoint>,
    /// A point of an allocation study: the target speedup its recipe was allocated for.
    #[serde(default)]
    pub allocated_for: Option<f64>,
}

impl Point {
    /// A short label: `setting` and the seed.
    pub fn label(&self) -> String {
        match &self.oneshot {
            Some(_) => self.setting(),
            None => format!("{} seed={}", self.setting(), self.seed),
        }
    }

    /// What the point trains or prunes, without its seed: recipe name (with `+int8` when the
    /// sweep quantizes it; an allocated recipe's name says its target) and overrides, or the
    /// one-shot model, method, mask and sparsity.
    pub fn setting(&self) -> String {
        if let Some(o) = &self.oneshot {
            let stem = o.model.file_stem().map_or(String::new(), |s| s.to_string_lossy().into_owned());
            return format!("{stem} one-shot {:?} {} sparsity={}", o.method, o.mask, o.sparsity).to_lowercase();
        }
        let stem = self.recipe.file_stem().map_or(String::new(), |s| s.to_string_lossy().into_owned());
        let stem = if self.quantized { format!("{stem}+int8") } else { stem };
        let sets: Vec<String> = self.overrides.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if sets.is_empty() { stem } else { format!("{stem} {}", sets.join(" ")) }
    }
}

/// A resolved sweep.
#[derive(Debug, Clone)]
pub struct Sweep {
    pub name: String,
    pub batches: Vec<usize>,
    pub threads: usize,
    pub bench_seconds: f64,
    /// The sweep file's `allow_subset`.
    pub allow_subset: bool,
    pub cluster: Cluster,
    pub points: Vec<Point>,
}

impl Sweep {
    /// Reads a sweep file; recipe paths are resolved against the current directory first, then
    /// against the sweep file's parent folder.
    pub fn load(path: &Path) -> anyhow::Result<Sweep> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let raw: RawSweep = toml::from_str(&text).map_err(|e| match sparsify::recipe::toml_error(&text, &e) {
            (Some(line), message) => anyhow::anyhow!("{}:{line}: {message}", path.display()),
            (None, message) => anyhow::anyhow!("{}: {message}", path.display()),
        })?;
        if raw.version != 1 {
            bail!("{}: version {} is not supported (1 is)", path.display(), raw.version);
        }
        if raw.name.is_empty() || raw.name.contains(['/', '\\']) {
            bail!("{}: name must be a plain folder name", path.display());
        }
        if raw.batches.is_empty() || raw.batches.contains(&0) || raw.threads == 0 || raw.seeds.is_empty() {
            bail!("{}: batches, threads and seeds need at least one value, all >= 1 (seeds >= 0)", path.display());
        }
        raw.cluster.check(path)?;
        let base = path.parent().and_then(Path::parent).unwrap_or(Path::new("."));
        let mut points = Vec::new();
        for study in &raw.study {
            let find = |name: &str, what: &str| {
                [PathBuf::from(name), base.join(name)]
                    .into_iter()
                    .find(|p| p.exists())
                    .with_context(|| format!("{}: {what} {name} not found", path.display()))
            };
            let recipe = match (&study.recipe, &study.oneshot, &study.allocate) {
                (Some(r), None, None) => find(r, "recipe")?,
                (None, Some(o), None) => {
                    points.extend(oneshot_points(path, study, o, find(&o.model, "model")?)?);
                    continue;
                }
                (None, None, Some(a)) => {
                    let (table, recipe) = (find(&a.sensitivity, "sensitivity table")?, find(&a.recipe, "recipe")?);
                    points.extend(allocation_points(path, study, a, &table, &recipe, &raw.seeds)?);
                    continue;
                }
                _ => bail!("{}: a study names one of a recipe, a oneshot model or an allocation", path.display()),
            };
            let recipe_text = std::fs::read_to_string(&recipe).with_context(|| format!("reading {}", recipe.display()))?;
            for combo in combinations(&study.sweep) {
                let mut overrides: BTreeMap<String, f64> = study.set.clone();
                overrides.extend(combo);
                let overrides: Vec<(String, f64)> = overrides.into_iter().collect();
                // Check the recipe with these overrides now, not hours into the sweep.
                let r = sparsify::recipe::Recipe::parse(&recipe_text, &recipe.display().to_string(), &overrides)?;
                sparsify::targets::check_params(&r, &recipe.display().to_string())?;
                if study.quantize.contains(&true) && r.quantization.is_some() {
                    bail!("{}: {} already quantizes; use quantize = [false] for it", path.display(), recipe.display());
                }
                for &quantized in &study.quantize {
                    let text = if quantized { recipe_text.clone() + &quantization_modifier(r.epochs) } else { recipe_text.clone() };
                    sparsify::recipe::Recipe::parse(&text, &recipe.display().to_string(), &overrides)?;
                    for &seed in &raw.seeds {
                        points.push(Point {
                            id: point_id(&text, &overrides, seed),
                            recipe: recipe.clone(),
                            recipe_text: text.clone(),
                            overrides: overrides.clone(),
                            seed,
                            quantized,
                            oneshot: None,
                            allocated_for: None,
                        });
                    }
                }
            }
        }
        if points.is_empty() {
            bail!("{}: the sweep has no points (add [[study]] tables)", path.display());
        }
        Ok(Sweep {
            name: raw.name,
            batches: raw.batches,
            threads: raw.threads,
            bench_seconds: raw.bench_seconds,
            allow_subset: raw.allow_subset,
            cluster: raw.cluster,
            points,
        })
    }

    pub fn dir(&self, results: &Path) -> PathBuf {
        results.join(&self.name)
    }
}

/// The points of a one-shot study: each method at each swept `sparsity` (the only variable).
fn oneshot_points(file: &Path, study: &RawStudy, o: &RawOneshot, model: PathBuf) -> anyhow::Result<Vec<Point>> {
    let levels = match study.sweep.get("sparsity") {
        Some(levels) if study.sweep.len() == 1 && study.set.is_empty() && study.quantize == [false] => levels.clone(),
        _ => bail!("{}: a oneshot study sweeps `sparsity` only (no set, no quantize)", file.display()),
    };
    sparsify::mask::MaskKind::parse(&o.mask).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    if let Some(s) = levels.iter().find(|s| !(0.0..1.0).contains(*s)) {
        bail!("{}: sparsity {s} is outside [0, 1)", file.display());
    }
    if o.methods.is_empty() || o.samples == 0 {
        bail!("{}: a oneshot study needs at least one method and one sample", file.display());
    }
    let bytes = std::fs::read(&model).with_context(|| format!("reading {}", model.display()))?;
    let model_hash = short_hash(&bytes);
    let mut points = Vec::new();
    for &method in &o.methods {
        for &sparsity in &levels {
            let spec = OneshotPoint {
                model: model.clone(),
                model_hash: model_hash.clone(),
                method,
                mask: o.mask.clone(),
                samples: o.samples,
                dataset: o.dataset.clone(),
                sparsity,
            };
            let key = serde_json::json!({"oneshot": {"model": spec.model_hash, "method": spec.method, "mask": spec.mask, "samples": spec.samples, "dataset": spec.dataset, "sparsity": sparsity}});
            let id = short_hash(key.to_string().as_bytes());
            points.push(Point {
                id,
                recipe: model.clone(),
                recipe_text: String::new(),
                overrides: vec![("sparsity".into(), sparsity)],
                seed: 0,
                quantized: false,
                oneshot: Some(spec),
                allocated_for: None,
            });
        }
    }
    Ok(points)
}

/// The points of an allocation study: for each target speedup, the base recipe with the
/// per-layer targets `sparsify allocate` chooses from the table, trained with each seed.
fn allocation_points(
    file: &Path,
    study: &RawStudy,
    a: &RawAllocate,
    table: &Path,
    recipe: &Path,
    seeds: &[u64],
) -> anyhow::Result<Vec<Point>> {
    if !study.sweep.is_empty() || study.quantize != [false] || a.speedups.is_empty() {
        bail!("{}: an allocation study lists speedups (and may set variables); it sweeps nothing else", file.display());
    }
    use sparsify::oneshot::{allocate, sensitivity};
    let rows = sensitivity::read_csv(table)?;
    let model_ms = rows
        .iter()
        .find(|r| r.batch == a.batch)
        .map(|r| r.model_ms)
        .with_context(|| format!("{}: no timings at batch {}", table.display(), a.batch))?;
    let base = std::fs::read_to_string(recipe).with_context(|| format!("reading {}", recipe.display()))?;
    let overrides: Vec<(String, f64)> = study.set.clone().into_iter().collect();
    let stem = recipe.file_stem().map_or(String::new(), |s| s.to_string_lossy().into_owned());
    let mut points = Vec::new();
    for &speedup in &a.speedups {
        if speedup.is_nan() || speedup < 1.0 {
            bail!("{}: speedup {speedup} must be at least 1", file.display());
        }
        let (_, allocated) = allocate::allocate_recipe(&base, &recipe.display().to_string(), &rows, a.batch, model_ms / speedup)
            .with_context(|| format!("{}", file.display()))?;
        let text = format!("# Allocated by the sweep from {} for {speedup}x at batch {}.\n{allocated}", table.display(), a.batch);
        sparsify::recipe::Recipe::parse(&text, &recipe.display().to_string(), &overrides)?;
        for &seed in seeds {
            points.push(Point {
                id: point_id(&text, &overrides, seed),
                recipe: recipe.with_file_name(format!("{stem}-allocated-{speedup}x.toml")),
                recipe_text: text.clone(),
                overrides: overrides.clone(),
                seed,
                quantized: false,
                oneshot: None,
                allocated_for: Some(speedup),
            });
        }
    }
    Ok(points)
}

/// Every combination of the swept values (one empty combination when nothing is swept).
fn combinations(sweep: &BTreeMap<String, Vec<f64>>) -> Vec<Vec<(String, f64)>> {
    let mut out: Vec<Vec<(String, f64)>> = vec![vec![]];
    for (name, values) in sweep {
        out = out.into_iter().flat_map(|c| values.iter().map(move |v| [c.clone(), vec![(name.clone(), *v)]].concat())).collect();
    }
    out
}

/// Hash of what determines a point's training: recipe text, overrides, seed.
fn point_id(recipe_text: &str, overrides: &[(String, f64)], seed: u64) -> String {
    let key = serde_json::json!({"recipe": recipe_text, "overrides": overrides, "seed": seed});
    short_hash(key.to_string().as_bytes())
}

/// The first 6 bytes of `bytes`' SHA-256, in hex: the names of points and staged binaries.
pub fn short_hash(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().take(6).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combinations_cover_the_grid() {
        let s: BTreeMap<String, Vec<f64>> = [("a".to_string(), vec![1.0, 2.0]), ("b".to_string(), vec![3.0, 4.0, 5.0])].into();
        let c = combinations(&s);
        assert_eq!(c.len(), 6);
        assert_eq!(c[0], vec![("a".to_string(), 1.0), ("b".to_string(), 3.0)]);
        assert_eq!(combinations(&BTreeMap::new()), vec![vec![]]);
    }

    #[test]
    fn ids_depend_on_everything_that_changes_results() {
        let a = point_id("r", &[("x".into(), 1.0)], 0);
        assert_eq!(a, point_id("r", &[("x".into(), 1.0)], 0));
        assert_ne!(a, point_id("r", &[("x".into(), 2.0)], 0));
        assert_ne!(a, point_id("r", &[("x".into(), 1.0)], 1));
        assert_ne!(a, point_id("r2", &[("x".into(), 1.0)], 0));
    }
}
