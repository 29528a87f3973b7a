//! The recipe file as written: TOML tables deserialised with unknown fields rejected. Numbers may
//! be written as expressions over `[variables]`; `resolve` turns this into a checked `Recipe`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::arch::Arch;

/// A number or an arithmetic expression over the recipe's variables (`"epochs * 0.6"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Num {
    Value(f64),
    Expr(String),
}

/// `final_sparsity`: one value for every targeted tensor, or one per parameter name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RawSparsity {
    Uniform(Num),
    PerParam(BTreeMap<String, Num>),
}

/// `params`: a token (`__ALL_PRUNABLE__`), or a list of names, globs (`fc*.weight`) or regular
/// expressions (`re:^fc[12]\.weight$`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Params {
    One(String),
    Many(Vec<String>),
}

impl Params {
    pub fn patterns(&self) -> Vec<String> {
        match self {
            Params::One(s) => vec![s.clone()],
            Params::Many(v) => v.clone(),
        }
    }
}

/// `[model]`: a built-in by `name`, or an ONNX file by `onnx` (where `name = "onnx"` may be
/// left out).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawModel {
    Named(Arch),
    File(OnnxFile),
}

/// `[model] onnx = "model.onnx"` without a name.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnnxFile {
    onnx: std::path::PathBuf,
    #[serde(default)]
    init: crate::arch::Init,
}

impl RawModel {
    pub fn into_arch(self) -> Arch {
        match self {
            RawModel::Named(arch) => arch,
            RawModel::File(OnnxFile { onnx, init }) => Arch::Onnx { onnx, init },
        }
    }

    /// What is wrong with a `[model]` table neither form reads: the ONNX form's complaint where
    /// it names a file and no built-in, else the built-ins'.
    pub fn error(text: &str) -> Option<toml::de::Error> {
        #[derive(Deserialize)]
        struct Builtin {
            #[allow(dead_code)]
            model: Arch,
        }
        #[derive(Deserialize)]
        struct File {
            #[allow(dead_code)]
            model: OnnxFile,
        }
        match toml::from_str::<File>(text) {
            Err(e) if !["missing field `onnx`", "unknown field `name`"].iter().any(|m| e.message().contains(m)) => Some(e),
            _ => toml::from_str::<Builtin>(text).err(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRecipe {
    /// Recipe format version; only 1 exists.
    pub version: u32,
    /// Named numbers usable in expressions; `--set name=value` overrides them.
    #[serde(default)]
    pub variables: BTreeMap<String, f64>,
    pub model: RawModel,
    #[serde(default)]
    pub data: RawData,
    pub optimizer: RawOptimizer,
    #[serde(default)]
    pub training: RawTraining,
    pub modifiers: Vec<RawModifier>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawData {
    /// Dataset name (default `fashion-mnist`); with `format`, only a label for the user's data.
    #[serde(default)]
    pub dataset: Option<String>,
    /// The user's files instead of a named dataset: `npy`, `cifar` or `image-folder`.
    #[serde(default)]
    pub format: Option<DataFormat>,
    /// `npy`: the four arrays.
    #[serde(default)]
    pub train_x: Option<String>,
    #[serde(default)]
    pub train_y: Option<String>,
    #[serde(default)]
    pub test_x: Option<String>,
    #[serde(default)]
    pub test_y: Option<String>,
    /// `cifar`: the folder of the binary batches.
    #[serde(default)]
    pub path: Option<String>,
    /// `image-folder`: the training and test folders (one sub-folder per class).
    #[serde(default)]
    pub train: Option<String>,
    #[serde(default)]
    pub test: Option<String>,
    /// `image-folder`: the side images are resized to (default 32) and 1 (grey) or 3 (RGB,
    /// the default) channels.
    #[serde(default)]
    pub size: Option<Num>,
    #[serde(default)]
    pub channels: Option<Num>,
    /// Per-channel normalisation (one value for every channel, or one per channel); by default
    /// the named dataset's constants, or measured on the user's training split.
    #[serde(default)]
    pub mean: Option<Vec<f64>>,
    #[serde(default)]
    pub std: Option<Vec<f64>>,
    /// Augmentation of training images: zero padding of a random crop (default 0, none) and a
    /// random horizontal flip (default false).
    #[serde(default)]
    pub random_crop: Option<Num>,
    #[serde(default)]
    pub flip: bool,
    /// Training batch size (default 128).
    #[serde(default = "default_batch")]
    pub batch_size: Num,
    /// Fraction of the training set held out for validation (default 0).
    #[serde(default = "zero")]
    pub validation: Num,
    /// Use only this many training images, 0 for all (default 0): for quick runs.
    #[serde(default = "zero")]
    pub train_subset: Num,
    /// Use only this many test images, 0 for all (default 0).
    #[serde(default = "zero")]
    pub test_subset: Num,
}

impl Default for RawData {
    fn default() -> Self {
        RawData {
            dataset: None,
            format: None,
            train_x: None,
            train_y: None,
            test_x: None,
            test_y: None,
            path: None,
            train: None,
            test: None,
            size: None,
            channels: None,
            mean: None,
            std: None,
            random_crop: None,
            flip: false,
            batch_size: default_batch(),
            validation: zero(),
            train_subset: zero(),
            test_subset: zero(),
        }
    }
}

/// The formats of the user's own data (`[data] format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataFormat {
    Npy,
    Cifar,
    ImageFolder,
}
fn default_batch() -> Num {
    Num::Value(128.0)
}
fn zero() -> Num {
    Num::Value(0.0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Sgd,
    Adam,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOptimizer {
    #[serde(rename = "type")]
    pub kind: OptimizerKind,
    /// Learning rate when no `learning_rate` modifier sets it.
    #[serde(default)]
    pub lr: Option<Num>,
    /// SGD momentum (default 0).
    #[serde(default)]
    pub momentum: Option<Num>,
    /// SGD Nesterov momentum (default false).
    #[serde(default)]
    pub nesterov: bool,
    /// L2 weight decay added to the gradient (default 0).
    #[serde(default)]
    pub weight_decay: Option<Num>,
    /// Adam's betas (default [0.9, 0.999]).
    #[serde(default)]
    pub betas: Option<[f64; 2]>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTraining {
    /// Seed of initialisation and shuffling (default 0; `--seed` overrides).
    #[serde(default)]
    pub seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrKind {
    Constant,
    Step,
    MultiStep,
    Exponential,
    Cosine,
    Linear,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Curve {
    Cubic,
    Linear,
    InverseCubic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Layer,
    Global,
}

/// Granularity of weight scales.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightScheme {
    PerChannel,
    PerTensor,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum RawModifier {
    /// The training length: `end_epoch` epochs.
    EpochRange {
        start_epoch: Num,
        end_epoch: Num,
    },
    LearningRate {
        schedule: LrKind,
        init_lr: Num,
        final_lr: Option<Num>,
        gamma: Option<Num>,
        step_size: Option<Num>,
        milestones: Option<Vec<Num>>,
        start_epoch: Option<Num>,
        end_epoch: Option<Num>,
    },
    Gmp {
        params: Params,
        init_sparsity: Option<Num>,
        final_sparsity: RawSparsity,
        start_epoch: Num,
        end_epoch: Num,
        update_frequency: Num,
        schedule: Option<Curve>,
        mask: Option<String>,
        scope: Option<Scope>,
        leave_enabled: Option<bool>,
    },
    ConstantPruning {
        params: Params,
        start_epoch: Option<Num>,
        end_epoch: Option<Num>,
    },
    /// Knowledge distillation: a teacher's outputs, softened by `temperature`, as a second
    /// target weighted by `hardness`.
    Distillation {
        /// A run folder of `sparsify train`, or a model file (ONNX or the engine's).
        teacher: String,
        temperature: Option<Num>,
        hardness: Option<Num>,
        start_epoch: Option<Num>,
        end_epoch: Option<Num>,
    },
    /// Quantization-aware training from `start_epoch`: int8 symmetric weights, 8-bit asymmetric
    /// activations observed with a moving min/max.
    Quantization {
        start_epoch: Num,
        weights: Option<WeightScheme>,
        freeze_observers_epoch: Option<Num>,
        freeze_bn_epoch: Option<Num>,
        /// Layers left in fp32: names (`fc3`), globs or `re:` expressions.
        ignore: Option<Vec<String>>,
        observer_averaging: Option<Num>,
    },
}
