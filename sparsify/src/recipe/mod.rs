//! Recipes: a whole experiment in one TOML file (model, data, optimizer and SparseML-style
//! modifiers). `Recipe::parse` checks everything that can be checked without training and
//! reports errors as `recipe.toml:LINE: field: what is wrong`.

mod data;
pub mod expr;
pub mod schema;

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

pub use data::Data;
pub use schema::{Curve, LrKind, OptimizerKind, Scope, WeightScheme};
use schema::{Num, RawModifier, RawRecipe, RawSparsity};

use crate::arch::Arch;
use crate::mask::MaskKind;

/// Longest training a recipe may ask for, in epochs.
pub const MAX_EPOCHS: f64 = 10_000.0;
/// Largest batch size a recipe may ask for.
pub const MAX_BATCH: usize = 1 << 16;

/// A recipe error, with the file and line it is about when known.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {message}", line = line.map_or("-".to_string(), |l| l.to_string()))]
pub struct RecipeError {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

/// Where a modifier's fields are written in its recipe file (1-based lines; the block's header
/// for a field left out), for errors found once the model is known, such as a `params` pattern
/// that matches no parameter (see `targets`). Empty for a recipe not read from a file. Where a
/// modifier is written is not part of what it does: any two compare equal.
#[derive(Debug, Clone, Default)]
pub struct Lines(BTreeMap<&'static str, usize>);

impl Lines {
    /// The line of `field`, if known.
    pub fn of(&self, field: &str) -> Option<usize> {
        self.0.get(field).copied()
    }
}

impl PartialEq for Lines {
    fn eq(&self, _: &Lines) -> bool {
        true
    }
}

/// Learning-rate schedule, in fractional epochs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LrSchedule {
    pub kind: LrKind,
    pub init_lr: f64,
    pub final_lr: f64,
    pub gamma: f64,
    pub step_size: f64,
    pub milestones: Vec<f64>,
    pub start_epoch: f64,
    pub end_epoch: f64,
}

impl LrSchedule {
    /// Learning rate at fractional `epoch`.
    pub fn at(&self, epoch: f64) -> f64 {
        let e = (epoch - self.start_epoch).max(0.0);
        let x = if self.end_epoch > self.start_epoch { (e / (self.end_epoch - self.start_epoch)).clamp(0.0, 1.0) } else { 1.0 };
        match self.kind {
            LrKind::Constant => self.init_lr,
            LrKind::Step => self.init_lr * self.gamma.powf((e / self.step_size).floor()),
            LrKind::MultiStep => self.init_lr * self.gamma.powi(self.milestones.iter().filter(|&&m| epoch >= m).count() as i32),
            LrKind::Exponential => self.init_lr * self.gamma.powf(e),
            LrKind::Cosine => self.final_lr + 0.5 * (self.init_lr - self.final_lr) * (1.0 + (std::f64::consts::PI * x).cos()),
            LrKind::Linear => self.init_lr + (self.final_lr - self.init_lr) * x,
        }
    }
}

/// Target sparsity of a gradual pruning modifier.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum FinalSparsity {
    Uniform(f64),
    PerParam(BTreeMap<String, f64>),
}

/// Gradual magnitude pruning (Zhu & Gupta 2017), with SparseML's semantics.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Gmp {
    pub params: Vec<String>,
    pub init_sparsity: f64,
    pub final_sparsity: FinalSparsity,
    pub start_epoch: f64,
    pub end_epoch: f64,
    /// Epochs between mask updates; -1 updates every step.
    pub update_frequency: f64,
    pub schedule: Curve,
    pub mask: MaskKind,
    pub scope: Scope,
    pub leave_enabled: bool,
    #[serde(skip)]
    pub lines: Lines,
}

impl Gmp {
    /// Final sparsity for a parameter name.
    pub fn final_for(&self, name: &str) -> f64 {
        match &self.final_sparsity {
            FinalSparsity::Uniform(s) => *s,
            FinalSparsity::PerParam(m) => m.get(name).copied().unwrap_or(0.0),
        }
    }

    /// Fraction of the way from `init_sparsity` to the final one at fractional `epoch`.
    pub fn progress(&self, epoch: f64) -> f64 {
        let x = if self.end_epoch > self.start_epoch {
            ((epoch - self.start_epoch) / (self.end_epoch - self.start_epoch)).clamp(0.0, 1.0)
        } else {
            1.0
        };
        match self.schedule {
            Curve::Cubic => 1.0 - (1.0 - x).powi(3),
            Curve::Linear => x,
            Curve::InverseCubic => 1.0 - (1.0 - x).powf(1.0 / 3.0),
        }
    }

    /// Target sparsity of a parameter at fractional `epoch`.
    pub fn target(&self, name: &str, epoch: f64) -> f64 {
        let fin = self.final_for(name);
        let init = self.init_sparsity.min(fin);
        init + self.progress(epoch) * (fin - init)
    }
}

/// Hold the zeros a model already has while fine-tuning.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConstantPruning {
    pub params: Vec<String>,
    pub start_epoch: f64,
    pub end_epoch: f64,
    #[serde(skip)]
    pub lines: Lines,
}

/// Quantization-aware training settings (the `quantization` modifier).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Quantization {
    pub start_epoch: f64,
    pub weights: WeightScheme,
    /// From this epoch the observers' ranges stay fixed.
    pub freeze_observers_epoch: Option<f64>,
    /// From this epoch BatchNorm uses its running statistics in training too.
    pub freeze_bn_epoch: Option<f64>,
    /// Layers left in fp32.
    pub ignore: Vec<String>,
    pub observer_averaging: f64,
    #[serde(skip)]
    pub lines: Lines,
}

impl Quantization {
    /// Whether fake quantization is on at fractional `epoch`.
    pub fn active(&self, epoch: f64) -> bool {
        epoch >= self.start_epoch
    }
    pub fn observing(&self, epoch: f64) -> bool {
        self.active(epoch) && self.freeze_observers_epoch.is_none_or(|f| epoch < f)
    }
    pub fn bn_frozen(&self, epoch: f64) -> bool {
        self.freeze_bn_epoch.is_some_and(|f| epoch >= f)
    }
}

/// Knowledge distillation (SparseML's `DistillationModifier`): from `start_epoch` to
/// `end_epoch` the loss is `(1 - hardness) * cross-entropy + hardness * T^2 * KL(teacher || student)`
/// with both outputs softened by the temperature `T`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Distillation {
    /// A run folder of `sparsify train`, or a model file (ONNX or the engine's); relative paths
    /// from the folder training starts in.
    pub teacher: String,
    pub temperature: f64,
    pub hardness: f64,
    pub start_epoch: f64,
    pub end_epoch: f64,
}

impl Distillation {
    /// Whether the teacher's targets count at fractional `epoch`.
    pub fn active(&self, epoch: f64) -> bool {
        epoch >= self.start_epoch && epoch < self.end_epoch
    }
}

/// Optimizer settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Optimizer {
    pub kind: OptimizerKind,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    pub betas: [f64; 2],
}

/// A resolved, checked recipe.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recipe {
    pub version: u32,
    pub variables: BTreeMap<String, f64>,
    pub model: Arch,
    pub data: Data,
    pub optimizer: Optimizer,
    pub seed: u64,
    pub epochs: f64,
    pub lr: LrSchedule,
    pub pruning: Vec<Gmp>,
    pub constant_pruning: Vec<ConstantPruning>,
    pub quantization: Option<Quantization>,
    pub distillation: Option<Distillation>,
}

/// Finds the line of `field` inside the `index`-th `[[modifiers]]` block (or a `[table]`).
struct Locator<'a> {
    text: &'a str,
}

impl Locator<'_> {
    fn block_lines(&self, header: &str, index: usize) -> Option<(usize, usize)> {
        let lines: Vec<&str> = self.text.lines().collect();
        if header.is_empty() {
            // Top-level keys: everything before the first table header.
            return Some((0, lines.iter().position(|l| l.trim_start().starts_with('[')).unwrap_or(lines.len())));
        }
        let starts: Vec<usize> = lines.iter().enumerate().filter(|(_, l)| l.trim() == header).map(|(i, _)| i).collect();
        let start = *starts.get(index)?;
        let end = (start + 1..lines.len()).find(|&i| lines[i].trim_start().starts_with('[')).unwrap_or(lines.len());
        Some((start, end))
    }
    /// 1-based line of `field = ...` in the block, else of the block header.
    fn line(&self, header: &str, index: usize, field: &str) -> Option<usize> {
        let (start, end) = self.block_lines(header, index)?;
        let lines: Vec<&str> = self.text.lines().collect();
        let found = (start..end).find(|&i| assigns(lines[i], field));
        Some(found.unwrap_or(start) + 1)
    }
}

struct Resolver<'a> {
    file: &'a str,
    vars: BTreeMap<String, f64>,
    loc: Locator<'a>,
    /// Current block: header and index.
    block: (&'static str, usize),
}

impl Resolver<'_> {
    fn err(&self, field: &str, message: impl std::fmt::Display) -> RecipeError {
        RecipeError {
            file: self.file.to_string(),
            line: self.loc.line(self.block.0, self.block.1, field),
            message: format!("{field}: {message}"),
        }
    }
    /// The lines of `fields` in the current block.
    fn lines(&self, fields: &[&'static str]) -> Lines {
        Lines(fields.iter().filter_map(|&f| Some((f, self.loc.line(self.block.0, self.block.1, f)?))).collect())
    }
    fn num(&self, field: &str, n: &Num) -> Result<f64, RecipeError> {
        let v = match n {
            Num::Value(v) => *v,
            Num::Expr(e) => expr::eval(e, &self.vars).map_err(|m| self.err(field, m))?,
        };
        if !v.is_finite() {
            return Err(self.err(field, "is not a finite number"));
        }
        Ok(v)
    }
    fn opt(&self, field: &str, n: &Option<Num>, default: f64) -> Result<f64, RecipeError> {
        n.as_ref().map_or(Ok(default), |n| self.num(field, n))
    }
    fn count(&self, field: &str, n: &Num) -> Result<usize, RecipeError> {
        let v = self.num(field, n)?;
        if v < 0.0 || v.fract() != 0.0 {
            return Err(self.err(field, format!("must be a whole number >= 0, found {v}")));
        }
        Ok(v as usize)
    }
    fn sparsity(&self, field: &str, v: f64) -> Result<f64, RecipeError> {
        if !(0.0..1.0).contains(&v) {
            return Err(self.err(field, format!("sparsity must be in [0, 1), found {v}")));
        }
        Ok(v)
    }
    /// `v` in `[lo, hi)` (or `[lo, hi]` with `closed`).
    fn within(&self, field: &str, v: f64, lo: f64, hi: f64, closed: bool) -> Result<f64, RecipeError> {
        if v < lo || v > hi || (!closed && v == hi) {
            return Err(self.err(field, format!("must be in [{lo}, {hi}{}, found {v}", if closed { "]" } else { ")" })));
        }
        Ok(v)
    }
    fn range(&self, start: f64, end: f64) -> Result<(), RecipeError> {
        if start < 0.0 {
            return Err(self.err("start_epoch", format!("must be >= 0, found {start}")));
        }
        if end < start {
            return Err(self.err("end_epoch", format!("{end} is before start_epoch {start}")));
        }
        Ok(())
    }
}

/// Whether a TOML line sets `field` (`field = ...`).
fn assigns(line: &str, field: &str) -> bool {
    line.trim_start().strip_prefix(field).is_some_and(|rest| rest.trim_start().starts_with('='))
}

/// A TOML parse error as its 1-based line and a one-line message (the parser's own text spans
/// several lines, with a drawing of the spot).
pub fn toml_error(text: &str, e: &toml::de::Error) -> (Option<usize>, String) {
    let message = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
    let mut line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    // An unknown field inside a table is reported at the table: point at the field itself.
    if let (Some(at), Some(field)) = (line, message.strip_prefix("unknown field `").and_then(|m| m.split('`').next())) {
        line = text.lines().enumerate().skip(at - 1).find(|(_, l)| assigns(l, field)).map_or(line, |(i, _)| Some(i + 1));
    }
    (line, message)
}

impl Recipe {
    /// Reads and resolves a recipe file with `--set` overrides.
    pub fn load(path: &Path, overrides: &[(String, f64)]) -> Result<Recipe, RecipeError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| RecipeError { file: file.clone(), line: None, message: e.to_string() })?;
        Recipe::parse(&text, &file, overrides)
    }

    /// Parses recipe text; `file` names it in errors.
    pub fn parse(text: &str, file: &str, overrides: &[(String, f64)]) -> Result<Recipe, RecipeError> {
        let raw: RawRecipe = toml::from_str(text).map_err(|e| {
            // A `[model]` table neither form reads: the built-ins' own message.
            let e = match schema::RawModel::error(text) {
                Some(model_error) if e.message().contains("untagged enum RawModel") => model_error,
                _ => e,
            };
            let (line, message) = toml_error(text, &e);
            RecipeError { file: file.to_string(), line, message }
        })?;
        let mut r = Resolver { file, vars: raw.variables.clone(), loc: Locator { text }, block: ("[variables]", 0) };
        if raw.version != 1 {
            r.block = ("", 0);
            return Err(RecipeError {
                file: file.into(),
                line: r.loc.line("", 0, "version").or(Some(1)),
                message: format!("version: {} is not supported (this sparsify reads version 1)", raw.version),
            });
        }
        for (name, value) in overrides {
            if !r.vars.contains_key(name) {
                let known: Vec<&str> = raw.variables.keys().map(String::as_str).collect();
                return Err(r.err(name, format!("--set overrides a variable the recipe does not define (defined: {})", known.join(", "))));
            }
            r.vars.insert(name.clone(), *value);
        }

        r.block = ("[data]", 0);
        let data = r.data(&raw.data)?;

        r.block = ("[optimizer]", 0);
        let o = &raw.optimizer;
        let optimizer = Optimizer {
            kind: o.kind,
            momentum: r.opt("momentum", &o.momentum, 0.0)?,
            nesterov: o.nesterov,
            weight_decay: r.opt("weight_decay", &o.weight_decay, 0.0)?,
            betas: o.betas.unwrap_or([0.9, 0.999]),
        };
        let base_lr = r.within("lr", r.opt("lr", &o.lr, 0.0)?, 0.0, f64::MAX, true)?;
        r.within("momentum", optimizer.momentum, 0.0, 1.0, false)?;
        r.within("weight_decay", optimizer.weight_decay, 0.0, 1.0, true)?;
        for b in optimizer.betas {
            r.within("betas", b, 0.0, 1.0, false)?;
        }
        r.block = ("[model]", 0);
        let model = raw.model.clone().into_arch();
        let field = if matches!(model, Arch::Onnx { .. }) { "onnx" } else { "hidden" };
        let (input, classes) = nominal(&model, &data).map_err(|m| r.err(field, m))?;
        model.check(input, classes).map_err(|m| r.err(field, m))?;

        let (mut epochs, mut lr, mut pruning, mut constant_pruning) = (None, None, Vec::new(), Vec::new());
        let mut quantization: Option<(Quantization, usize)> = None;
        let mut distillation: Option<(Distillation, usize)> = None;
        for (i, m) in raw.modifiers.iter().enumerate() {
            r.block = ("[[modifiers]]", i);
            match m {
                RawModifier::EpochRange { start_epoch, end_epoch } => {
                    let (s, e) = (r.num("start_epoch", start_epoch)?, r.num("end_epoch", end_epoch)?);
                    r.range(s, e)?;
                    if e <= 0.0 || e > MAX_EPOCHS {
                        return Err(r.err("end_epoch", format!("training needs 0 < end_epoch <= {MAX_EPOCHS}, found {e}")));
                    }
                    if epochs.replace(e).is_some() {
                        return Err(r.err("type", "a recipe has one epoch_range modifier"));
                    }
                }
                RawModifier::LearningRate { schedule, init_lr, final_lr, gamma, step_size, milestones, start_epoch, end_epoch } => {
                    let s = LrSchedule {
                        kind: *schedule,
                        init_lr: r.num("init_lr", init_lr)?,
                        final_lr: r.opt("final_lr", final_lr, 0.0)?,
                        gamma: r.opt("gamma", gamma, 0.1)?,
                        step_size: r.opt("step_size", step_size, 1.0)?,
                        milestones: milestones.iter().flatten().map(|m| r.num("milestones", m)).collect::<Result<_, _>>()?,
                        start_epoch: r.opt("start_epoch", start_epoch, 0.0)?,
                        end_epoch: r.opt("end_epoch", end_epoch, f64::NAN)?,
                    };
                    if s.init_lr <= 0.0 {
                        return Err(r.err("init_lr", "must be > 0"));
                    }
                    r.within("final_lr", s.final_lr, 0.0, f64::MAX, true)?;
                    if s.gamma <= 0.0 {
                        return Err(r.err("gamma", format!("must be > 0, found {}", s.gamma)));
                    }
                    if s.milestones.iter().any(|&m| m < 0.0) || s.milestones.windows(2).any(|w| w[1] < w[0]) {
                        return Err(r.err("milestones", format!("must be epochs >= 0 in increasing order, found {:?}", s.milestones)));
                    }
                    if s.start_epoch < 0.0 || s.end_epoch < s.start_epoch {
                        return Err(r.err(
                            "start_epoch",
                            format!("needs 0 <= start_epoch <= end_epoch, found {} and {}", s.start_epoch, s.end_epoch),
                        ));
                    }
                    if *schedule == LrKind::Step && s.step_size <= 0.0 {
                        return Err(r.err("step_size", "must be > 0"));
                    }
                    if lr.replace((s, i)).is_some() {
                        return Err(r.err("type", "a recipe has at most one learning_rate modifier"));
                    }
                }
                RawModifier::Gmp {
                    params,
                    init_sparsity,
                    final_sparsity,
                    start_epoch,
                    end_epoch,
                    update_frequency,
                    schedule,
                    mask,
                    scope,
                    leave_enabled,
                } => {
                    let final_sparsity = match final_sparsity {
                        RawSparsity::Uniform(n) => FinalSparsity::Uniform(r.sparsity("final_sparsity", r.num("final_sparsity", n)?)?),
                        RawSparsity::PerParam(m) => FinalSparsity::PerParam(
                            m.iter()
                                .map(|(k, v)| Ok((k.clone(), r.sparsity("final_sparsity", r.num("final_sparsity", v)?)?)))
                                .collect::<Result<_, RecipeError>>()?,
                        ),
                    };
                    let mask = match mask {
                        None => MaskKind::Unstructured,
                        Some(s) => MaskKind::parse(s).map_err(|e| r.err("mask", e))?,
                    };
                    let g = Gmp {
                        params: params.patterns(),
                        init_sparsity: r.sparsity("init_sparsity", r.opt("init_sparsity", init_sparsity, 0.0)?)?,
                        final_sparsity,
                        start_epoch: r.num("start_epoch", start_epoch)?,
                        end_epoch: r.num("end_epoch", end_epoch)?,
                        update_frequency: r.num("update_frequency", update_frequency)?,
                        schedule: schedule.unwrap_or(Curve::Cubic),
                        mask,
                        scope: scope.unwrap_or(Scope::Layer),
                        leave_enabled: leave_enabled.unwrap_or(true),
                        lines: r.lines(&["params", "final_sparsity"]),
                    };
                    r.range(g.start_epoch, g.end_epoch)?;
                    if g.update_frequency <= 0.0 && g.update_frequency != -1.0 {
                        return Err(
                            r.err("update_frequency", format!("must be > 0 epochs, or -1 for every step; found {}", g.update_frequency))
                        );
                    }
                    if let MaskKind::NOfM { n, m } = g.mask {
                        let implied = 1.0 - n as f64 / m as f64;
                        let all: Vec<f64> = match &g.final_sparsity {
                            FinalSparsity::Uniform(s) => vec![*s],
                            FinalSparsity::PerParam(p) => p.values().copied().collect(),
                        };
                        if all.iter().any(|s| (s - implied).abs() > 1e-9) {
                            return Err(r.err(
                                "final_sparsity",
                                format!("mask {n}:{m} keeps {n} of every {m} weights, so final_sparsity must be {implied}"),
                            ));
                        }
                        if g.scope == Scope::Global {
                            return Err(r.err("scope", "N:M masks are per group of inputs; use scope = \"layer\""));
                        }
                    }
                    if g.scope == Scope::Global && matches!(g.final_sparsity, FinalSparsity::PerParam(_)) {
                        return Err(r.err("scope", "a global threshold needs one final_sparsity, not per-parameter values"));
                    }
                    pruning.push(g);
                }
                RawModifier::ConstantPruning { params, start_epoch, end_epoch } => {
                    let c = ConstantPruning {
                        params: params.patterns(),
                        start_epoch: r.opt("start_epoch", start_epoch, 0.0)?,
                        end_epoch: r.opt("end_epoch", end_epoch, -1.0)?,
                        lines: r.lines(&["params"]),
                    };
                    if c.end_epoch >= 0.0 {
                        r.range(c.start_epoch, c.end_epoch)?;
                    }
                    constant_pruning.push(c);
                }
                RawModifier::Distillation { teacher, temperature, hardness, start_epoch, end_epoch } => {
                    let d = Distillation {
                        teacher: teacher.clone(),
                        temperature: r.opt("temperature", temperature, 2.0)?,
                        hardness: r.opt("hardness", hardness, 0.5)?,
                        start_epoch: r.opt("start_epoch", start_epoch, 0.0)?,
                        end_epoch: r.opt("end_epoch", end_epoch, f64::NAN)?,
                    };
                    if teacher.is_empty() {
                        return Err(r.err("teacher", "name a run folder or a model file"));
                    }
                    if !(d.temperature > 0.0 && d.temperature.is_finite()) {
                        return Err(r.err("temperature", format!("must be above 0, found {}", d.temperature)));
                    }
                    r.within("hardness", d.hardness, 0.0, 1.0, true)?;
                    if !d.end_epoch.is_nan() {
                        r.range(d.start_epoch, d.end_epoch)?;
                    }
                    if distillation.replace((d, i)).is_some() {
                        return Err(r.err("type", "a recipe has at most one distillation modifier"));
                    }
                }
                RawModifier::Quantization { start_epoch, weights, freeze_observers_epoch, freeze_bn_epoch, ignore, observer_averaging } => {
                    let q = Quantization {
                        start_epoch: r.num("start_epoch", start_epoch)?,
                        weights: weights.unwrap_or(WeightScheme::PerChannel),
                        freeze_observers_epoch: freeze_observers_epoch.as_ref().map(|n| r.num("freeze_observers_epoch", n)).transpose()?,
                        freeze_bn_epoch: freeze_bn_epoch.as_ref().map(|n| r.num("freeze_bn_epoch", n)).transpose()?,
                        ignore: ignore.clone().unwrap_or_default(),
                        observer_averaging: r.opt("observer_averaging", observer_averaging, 0.01)?,
                        lines: r.lines(&["ignore"]),
                    };
                    r.range(q.start_epoch, q.start_epoch)?;
                    if let Some(f) = q.freeze_observers_epoch.filter(|&f| f < q.start_epoch) {
                        return Err(r.err("freeze_observers_epoch", format!("{f} is before start_epoch {}", q.start_epoch)));
                    }
                    if let Some(f) = q.freeze_bn_epoch.filter(|&f| f < 0.0) {
                        return Err(r.err("freeze_bn_epoch", format!("must be >= 0, found {f}")));
                    }
                    if !(q.observer_averaging > 0.0 && q.observer_averaging <= 1.0) {
                        return Err(r.err("observer_averaging", format!("must be in (0, 1], found {}", q.observer_averaging)));
                    }
                    if quantization.replace((q, i)).is_some() {
                        return Err(r.err("type", "a recipe has at most one quantization modifier"));
                    }
                }
            }
        }
        r.block = ("[[modifiers]]", 0);
        let epochs = epochs.ok_or_else(|| RecipeError {
            file: file.into(),
            line: None,
            message: "modifiers: the recipe needs an epoch_range modifier (its end_epoch is the training length)".into(),
        })?;
        let lr = match lr {
            Some((mut s, _)) => {
                if s.end_epoch.is_nan() {
                    s.end_epoch = epochs;
                }
                s
            }
            None if base_lr > 0.0 => LrSchedule {
                kind: LrKind::Constant,
                init_lr: base_lr,
                final_lr: base_lr,
                gamma: 1.0,
                step_size: 1.0,
                milestones: vec![],
                start_epoch: 0.0,
                end_epoch: epochs,
            },
            None => {
                r.block = ("[optimizer]", 0);
                return Err(r.err("lr", "set optimizer.lr or add a learning_rate modifier"));
            }
        };
        for (i, g) in pruning.iter().enumerate() {
            if g.end_epoch > epochs {
                r.block = (
                    "[[modifiers]]",
                    raw.modifiers.iter().enumerate().filter(|(_, m)| matches!(m, RawModifier::Gmp { .. })).nth(i).map_or(0, |(j, _)| j),
                );
                return Err(r.err("end_epoch", format!("{} is after the end of training ({epochs})", g.end_epoch)));
            }
        }
        if let Some((q, i)) = &quantization
            && q.start_epoch >= epochs
        {
            r.block = ("[[modifiers]]", *i);
            return Err(r.err("start_epoch", format!("{} is not before the end of training ({epochs})", q.start_epoch)));
        }
        Ok(Recipe {
            version: raw.version,
            variables: r.vars,
            model,
            data,
            optimizer,
            seed: raw.training.seed,
            epochs,
            lr,
            pruning,
            constant_pruning,
            quantization: quantization.map(|(q, _)| q),
            distillation: distillation.map(|(mut d, _)| {
                if d.end_epoch.is_nan() {
                    d.end_epoch = epochs;
                }
                d
            }),
        })
    }

    /// The input `[channels, rows, cols]` and classes the model is built for before the data are
    /// read: an ONNX model's own, else the data's (see `Data::nominal`).
    pub fn nominal(&self) -> Result<([usize; 3], usize), String> {
        nominal(&self.model, &self.data)
    }

    /// The resolved recipe as TOML (written next to every run).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# could not serialise the recipe: {e}\n"))
    }
}

fn nominal(model: &Arch, data: &Data) -> Result<([usize; 3], usize), String> {
    Ok(model.own_shape()?.unwrap_or_else(|| data.nominal()))
}
