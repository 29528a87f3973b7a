//! Optional peers: ONNX Runtime and DeepSparse timing the same exported ONNX files, through a
//! Python that has them (`--peers-python`). Without one, that step is skipped with a note.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// A Python interpreter with onnxruntime (and possibly deepsparse).
pub struct Peers {
    pub python: PathBuf,
    script: PathBuf,
}

impl Peers {
    pub fn new(python: PathBuf) -> anyhow::Result<Peers> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/time_onnx.py");
        let ok = Command::new(&python).args(["-c", "import onnxruntime"]).status().map(|s| s.success()).unwrap_or(false);
        if !ok {
            bail!("{} cannot import onnxruntime (set up ../shared/peers/setup.sh or pip install onnxruntime)", python.display());
        }
        Ok(Peers { python, script })
    }

    /// Median milliseconds in ONNX Runtime and DeepSparse (None where not installed).
    pub fn time(&self, onnx: &Path, batch: usize, threads: usize) -> anyhow::Result<(Option<f64>, Option<f64>)> {
        let out = Command::new(&self.python)
            .arg(&self.script)
            .arg(onnx)
            .args(["--batch", &batch.to_string(), "--threads", &threads.to_string()])
            .output()
            .with_context(|| format!("running {}", self.python.display()))?;
        if !out.status.success() {
            bail!("timing {} in the peers failed: {}", onnx.display(), String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or(""));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        // DeepSparse prints a banner on stdout: the timing is the last line.
        let last = stdout.lines().rev().find(|l| l.trim_start().starts_with('{')).unwrap_or("");
        let v: serde_json::Value = serde_json::from_str(last).context("reading the peers' timing")?;
        Ok((v["onnxruntime_ms"].as_f64(), v["deepsparse_ms"].as_f64()))
    }
}
