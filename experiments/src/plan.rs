//! Planning a sweep for a cluster: a Slurm job-array script (optionally with a dependent collect
//! job) or one shell command per point for GNU parallel or `xargs -P`. Every path in them is
//! absolute, they run one staged copy of the binary (a rebuild during the sweep does not change
//! what the remaining tasks run), and each point's output goes to a log in the results folder.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::sweep::{Point, Sweep};

/// What every planned command needs: where to run, which binary, which sweep, where results go,
/// and the flags each point passes on (`--data`, `--peers-python`, ...), all absolute.
pub struct Plan {
    pub workdir: PathBuf,
    pub bin: PathBuf,
    pub sweep_file: PathBuf,
    pub results: PathBuf,
    /// Further arguments of `run-point`, each a separate word.
    pub point_args: Vec<String>,
}

impl Plan {
    /// Makes the paths absolute (against the current directory) and creates the logs folder.
    pub fn new(bin: &Path, sweep_file: &Path, results: &Path, point_args: Vec<String>, sweep: &Sweep) -> anyhow::Result<Plan> {
        let workdir = std::env::current_dir().context("the current directory")?;
        let sweep_file = sweep_file.canonicalize().with_context(|| format!("{}", sweep_file.display()))?;
        let plan = Plan { workdir: workdir.clone(), bin: workdir.join(bin), sweep_file, results: workdir.join(results), point_args };
        let logs = plan.logs(sweep);
        std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
        Ok(plan)
    }

    /// The folder of the sweep's logs.
    pub fn logs(&self, sweep: &Sweep) -> PathBuf {
        sweep.dir(&self.results).join("logs")
    }

    /// `run-point` of the point `id_word` (a shell word: a quoted id or `"$id"`).
    fn run_point(&self, id_word: &str) -> String {
        let mut cmd = format!("{} run-point {} {id_word} --results {}", quote(&self.bin), quote(&self.sweep_file), quote(&self.results));
        for a in &self.point_args {
            cmd += &format!(" {}", quote(a));
        }
        cmd
    }

    fn collect(&self) -> String {
        format!("{} collect {} --results {}", quote(&self.bin), quote(&self.sweep_file), quote(&self.results))
    }

    /// One line per point for GNU parallel or `xargs -P`, each appending to the point's log.
    pub fn shell(&self, sweep: &Sweep) -> String {
        let logs = self.logs(sweep);
        sweep
            .points
            .iter()
            .map(|p| format!("cd {} && {} >> {} 2>&1\n", quote(&self.workdir), self.run_point(&quote(&p.id)), quote(log_path(&logs, p))))
            .collect()
    }

    /// A job-array script (submit with `sbatch`), one task per point; outside an array it
    /// refuses to run.
    pub fn slurm_array(&self, sweep: &Sweep) -> String {
        let logs = self.logs(sweep);
        let mut s = String::new();
        let _ = writeln!(s, "#!/bin/bash");
        let _ = writeln!(s, "# Sweep {}: {} points, one array task each. Submit with sbatch.", sweep.name, sweep.points.len());
        for (key, value) in self.sbatch_options(sweep, &sweep.name, sweep.threads, "%A_%a") {
            let _ = writeln!(s, "#SBATCH --{key}={value}");
        }
        let _ = writeln!(s, "#SBATCH --array=0-{}", sweep.points.len() - 1);
        let _ = writeln!(s, "set -euo pipefail");
        let _ = writeln!(s, "if [[ -z \"${{SLURM_ARRAY_TASK_ID:-}}\" ]]; then");
        let _ = writeln!(
            s,
            "  echo 'error: this is a Slurm job-array script: submit it with sbatch (one point without Slurm: experiments run-point SWEEP ID)' >&2"
        );
        let _ = writeln!(s, "  exit 2\nfi");
        let ids: Vec<&str> = sweep.points.iter().map(|p| p.id.as_str()).collect();
        let _ = writeln!(s, "ids=({})", ids.join(" "));
        let _ = writeln!(s, "id=${{ids[$SLURM_ARRAY_TASK_ID]}}");
        let _ = writeln!(s, "log={}/$id.log", quote(&logs));
        let _ = writeln!(s, "echo \"task ${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}} on $(hostname): point $id\" >> \"$log\"");
        let _ = writeln!(s, "exec {} >> \"$log\" 2>&1", self.run_point("\"$id\""));
        let _ = writeln!(s, "# When the array has finished: {}", self.collect());
        s
    }

    /// A script to run with bash on the login node: submits the array and a collect job that
    /// starts when every task has ended (`afterany`) and fails if any point is missing.
    pub fn slurm_with_collect(&self, sweep: &Sweep) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "#!/bin/bash");
        let _ = writeln!(s, "# Sweep {}: submits its job array and a collect job after it. Run with bash.", sweep.name);
        let _ = writeln!(s, "set -euo pipefail");
        let _ = writeln!(s, "array=$(sbatch --parsable <<'SWEEP_ARRAY_SCRIPT'");
        s += &self.slurm_array(sweep);
        let _ = writeln!(s, "SWEEP_ARRAY_SCRIPT\n)");
        let _ = writeln!(s, "array=${{array%%;*}}");
        let options: Vec<String> = self
            .sbatch_options(sweep, &format!("{}-collect", sweep.name), 1, "%j")
            .into_iter()
            .map(|(k, v)| format!("--{k}={}", quote(v)))
            .collect();
        let _ = writeln!(
            s,
            "collect=$(sbatch --parsable --dependency=afterany:\"$array\" {} --wrap={})",
            options.join(" "),
            quote(self.collect())
        );
        let _ = writeln!(s, "echo \"submitted array job $array and collect job ${{collect%%;*}}\"");
        s
    }

    /// The options of a job named `name` with `cpus` CPUs per task: where it runs, its Slurm log
    /// in the logs folder (`<name>-<job>.out`, `job` a Slurm pattern), and the sweep's `[cluster]`.
    fn sbatch_options(&self, sweep: &Sweep, name: &str, cpus: usize, job: &str) -> Vec<(&'static str, String)> {
        let mut o: Vec<(&'static str, String)> = vec![
            ("job-name", name.to_string()),
            ("cpus-per-task", cpus.to_string()),
            ("chdir", self.workdir.display().to_string()),
            ("output", self.logs(sweep).join(format!("{name}-{job}.out")).display().to_string()),
        ];
        o.extend(sweep.cluster.options().into_iter().map(|(k, v)| (k, v.to_string())));
        o
    }
}

/// A point's log in the logs folder.
pub fn log_path(logs: &Path, p: &Point) -> PathBuf {
    logs.join(format!("{}.log", p.id))
}

/// Copies the running binary into the sweep's results folder under a name from its content
/// (once; atomically), so every task of a sweep runs the same binary whatever is rebuilt.
pub fn stage_binary(exe: &Path, sweep_dir: &Path) -> anyhow::Result<PathBuf> {
    let bytes = std::fs::read(exe).with_context(|| format!("reading {}", exe.display()))?;
    let hash = crate::sweep::short_hash(&bytes);
    let dir = sweep_dir.join("bin");
    let staged = dir.join(format!("experiments-{hash}"));
    if !staged.exists() {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // Complete and executable before it appears under its name.
        let tmp = dir.join(format!(".experiments-{hash}.{}.tmp", std::process::id()));
        std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
        std::fs::rename(&tmp, &staged).with_context(|| format!("staging {}", staged.display()))?;
    }
    Ok(staged)
}

/// A word for the shell: single-quoted, with single quotes inside escaped.
pub fn quote(word: impl AsRef<std::ffi::OsStr>) -> String {
    format!("'{}'", word.as_ref().to_string_lossy().replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn quoted_words_survive_the_shell() {
        assert_eq!(quote("/a b/c"), "'/a b/c'");
        let tricky = "it's $HOME `x`";
        let out = std::process::Command::new("sh").args(["-c", &format!("printf %s {}", quote(tricky))]).output().unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), tricky);
    }
}
