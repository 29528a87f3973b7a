//! Finds a named dataset on this machine, in a fixed order:
//! 1. `--data DIR` or `SPARSIFY_DATA` (the files in `DIR/<name>` or in `DIR` itself): when given,
//!    nothing else is tried;
//! 2. `./data/<name>`;
//! 3. `/usr/share/datasets/<name>` (Debian's and Ubuntu's `dataset-fashion-mnist`);
//! 4. the user's cache (`~/.cache/sparsify/<name>`), downloading on first use unless offline;
//! 5. the embedded subset, only where asked for (`allow_subset`, `--allow-subset`): otherwise an
//!    error that says how to get the full set, so no result is silently computed on 10,000 images.
//!
//! The name `fashion-mnist-subset` always means the embedded subset.

use std::path::{Path, PathBuf};

use crate::download::download;
use crate::embedded;
use crate::error::{DataError, Result};
use crate::registry::{self, DatasetSpec};
use crate::split::{Dataset, Normalization, Source, Split};

/// Environment variable naming a data folder, like `--data`.
pub const DATA_ENV: &str = "SPARSIFY_DATA";
/// Environment variable that, set to `1`, forbids downloads.
pub const OFFLINE_ENV: &str = "SPARSIFY_OFFLINE";

/// Where to look for datasets and whether to download; built from flags and the environment.
#[derive(Debug, Clone)]
pub struct Resolver {
    /// `--data` or `SPARSIFY_DATA`.
    pub explicit: Option<PathBuf>,
    /// The project-local folder, `./data`.
    pub local: PathBuf,
    /// The system folder, `/usr/share/datasets`.
    pub system: PathBuf,
    /// The per-user cache folder, if the platform has one.
    pub cache: Option<PathBuf>,
    /// Base URL overriding the dataset's own (mirrors, tests).
    pub base_url: Option<String>,
    pub download: bool,
    pub quiet: bool,
    /// Whether the embedded subset may stand in for a full dataset that is not found.
    pub allow_subset: bool,
}

impl Resolver {
    /// The standard order, with `--data` taking precedence over `SPARSIFY_DATA`.
    pub fn new(data_flag: Option<PathBuf>, quiet: bool) -> Resolver {
        let explicit = data_flag.or_else(|| std::env::var_os(DATA_ENV).filter(|v| !v.is_empty()).map(PathBuf::from));
        Resolver {
            explicit,
            local: PathBuf::from("data"),
            system: PathBuf::from("/usr/share/datasets"),
            cache: dirs::cache_dir().map(|d| d.join("sparsify")),
            base_url: None,
            download: std::env::var(OFFLINE_ENV).map_or(true, |v| v != "1"),
            quiet,
            allow_subset: false,
        }
    }

    /// The same resolver, letting the embedded subset stand in for a missing full dataset.
    pub fn allowing_subset(self, allow: bool) -> Resolver {
        Resolver { allow_subset: allow, ..self }
    }

    fn note(&self, msg: &str) {
        if !self.quiet {
            eprintln!("note: {msg}");
        }
    }

    /// Finds and loads the named dataset.
    pub fn load(&self, name: &str) -> Result<Dataset> {
        if embedded::subset_of(name).is_some() {
            return embedded::load();
        }
        let spec = registry::spec(name)?;
        if let Some(dir) = &self.explicit {
            let nested = dir.join(name);
            let chosen = if complete(&spec, &nested) { nested } else { dir.clone() };
            return load_dir(&spec, &chosen, "--data / SPARSIFY_DATA");
        }
        for (dir, via) in [(self.local.join(name), "./data"), (self.system.join(name), "system package")] {
            if complete(&spec, &dir) {
                return load_dir(&spec, &dir, via);
            }
        }
        if let Some(cache) = &self.cache {
            let dir = cache.join(name);
            if complete(&spec, &dir) {
                return load_dir(&spec, &dir, "cache");
            }
            if self.download {
                match self.fetch_into(&spec, &dir) {
                    Ok(()) => return load_dir(&spec, &dir, "downloaded to cache"),
                    Err(e) if embedded::has_subset(name) => self.note(&format!("{e}")),
                    Err(e) => return Err(e),
                }
            }
        }
        if embedded::has_subset(name) && self.allow_subset {
            let d = embedded::load()?;
            self.note(&format!(
                "using the embedded {name} subset ({} training / {} test images), not the full dataset; install Debian's dataset-{name} or run `datasets fetch {name}` for the full one",
                d.train.len(),
                d.test.len()
            ));
            return Ok(d);
        }
        Err(DataError::NotFound { name: name.into(), looked: self.looked_in(name), subset: embedded::has_subset(name) })
    }

    /// The folders `load` searched, for the error that says the data was not found.
    fn looked_in(&self, name: &str) -> String {
        let mut dirs = vec![self.local.join(name), self.system.join(name)];
        dirs.extend(self.cache.as_ref().map(|c| c.join(name)));
        let mut text = dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ");
        if !self.download {
            text += " (downloads off: SPARSIFY_OFFLINE=1)";
        }
        text
    }

    /// Downloads the dataset's four files into `dir`, skipping those already there.
    pub fn fetch_into(&self, spec: &DatasetSpec, dir: &Path) -> Result<()> {
        let base = self.base_url.as_deref().unwrap_or(spec.url);
        for file in spec.files() {
            let dest = dir.join(file.name);
            if !dest.exists() {
                download(&format!("{base}{}", file.name), &dest, file.sha256, self.quiet)?;
            }
        }
        Ok(())
    }
}

/// The path of one of the dataset's files in `dir`, compressed or not, if present.
fn find(dir: &Path, gz_name: &str) -> Option<PathBuf> {
    let gz = dir.join(gz_name);
    let raw = dir.join(gz_name.trim_end_matches(".gz"));
    [gz, raw].into_iter().find(|p| p.is_file())
}

fn complete(spec: &DatasetSpec, dir: &Path) -> bool {
    spec.files().iter().all(|f| find(dir, f.name).is_some())
}

/// Loads the four files of `spec` from `dir`, validating each.
pub fn load_dir(spec: &DatasetSpec, dir: &Path, via: &'static str) -> Result<Dataset> {
    let missing: Vec<&str> = spec.files().iter().filter(|f| find(dir, f.name).is_none()).map(|f| f.name).collect();
    if !missing.is_empty() {
        return Err(DataError::MissingFiles { name: spec.name.into(), dir: dir.into(), missing: missing.join(", ") });
    }
    let path = |f: registry::RemoteFile| find(dir, f.name).expect("checked above");
    let classes = spec.num_classes();
    let train = Split::read(&path(spec.train_images), &path(spec.train_labels), classes)?;
    let test = Split::read(&path(spec.test_images), &path(spec.test_labels), classes)?;
    if (train.rows, train.cols) != (test.rows, test.cols) {
        return Err(DataError::Shape {
            path: path(spec.test_images),
            what: "image shape".into(),
            expected: format!("{}x{} as in the training set", train.rows, train.cols),
            found: format!("{}x{}", test.rows, test.cols),
        });
    }
    Ok(Dataset {
        name: spec.name.into(),
        source: Source::Dir { path: dir.into(), via },
        num_classes: classes,
        norm: Normalization::uniform(spec.mean, spec.std, 1),
        train,
        test,
    })
}
