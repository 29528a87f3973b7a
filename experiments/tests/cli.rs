//! The `experiments` command's error paths: a missing or malformed sweep, a recipe that is not
//! there, an unknown point, nothing to collect, a dataset that cannot be found. Each gets one
//! error line that names the problem and a non-zero exit, never a panic.

use std::path::Path;
use std::process::Command;

/// Runs `experiments` in `dir`; returns whether it succeeded and its stderr.
fn experiments(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_experiments")).args(args).current_dir(dir).env("SPARSIFY_OFFLINE", "1").output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn fails_with(dir: &Path, args: &[&str], expected: &[&str]) {
    let (ok, err) = experiments(dir, args);
    assert!(!ok, "{args:?} succeeded");
    assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: one error line, got:\n{err}");
    assert!(err.starts_with("error: ") && !err.contains("panicked"), "{args:?}: {err}");
    for e in expected {
        assert!(err.contains(e), "{args:?}: '{e}' not in: {err}");
    }
}

#[test]
fn mistakes_get_one_line_and_a_failing_exit() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes/gmp90.toml");
    let write = |name: &str, text: &str| std::fs::write(d.join(name), text).unwrap();
    write("typo.toml", "version = 1\nname = \"x\"\nbatchez = [1]\n");
    write("broken.toml", "version = 1\nname = \"x\n");
    write("norecipe.toml", "version = 1\nname = \"x\"\nbatches = [1]\n[[study]]\nrecipe = \"nothere.toml\"\n");
    write("v2.toml", "version = 2\nname = \"x\"\n[[study]]\nrecipe = \"r.toml\"\n");
    write("ok.toml", &format!("version = 1\nname = \"t\"\nbatches = [1]\n[[study]]\nrecipe = \"{}\"\n", recipe.display()));

    fails_with(d, &["run", "missing.toml", "--quiet"], &["missing.toml"]);
    fails_with(d, &["plan", "typo.toml"], &["typo.toml:3", "unknown field `batchez`"]);
    fails_with(d, &["collect", "broken.toml"], &["broken.toml:2"]);
    fails_with(d, &["run", "norecipe.toml", "--quiet"], &["nothere.toml not found"]);
    fails_with(d, &["plan", "v2.toml"], &["version 2"]);
    fails_with(d, &["run-point", "ok.toml", "nosuchid"], &["no point with id nosuchid"]);
    fails_with(d, &["plan", "ok.toml", "--with-collect"], &["--with-collect goes with --emit slurm"]);
    write(
        "badcluster.toml",
        &format!("version = 1\nname = \"t\"\n[cluster]\ntime = \"1:00\\n#SBATCH --x\"\n[[study]]\nrecipe = \"{}\"\n", recipe.display()),
    );
    fails_with(d, &["plan", "badcluster.toml", "--emit", "slurm"], &["[cluster] time"]);
    fails_with(d, &["collect", "ok.toml", "--results", "empty"], &["no finished points"]);
    // A point whose dataset is not where --data says: named, nothing trained on other images.
    let (ok, plan) = {
        let out = Command::new(env!("CARGO_BIN_EXE_experiments")).args(["plan", "ok.toml"]).current_dir(d).output().unwrap();
        (out.status.success(), String::from_utf8(out.stdout).unwrap())
    };
    assert!(ok, "plan");
    // `... run-point 'SWEEP' 'ID' ...`
    let words: Vec<&str> = plan.lines().next().unwrap().split_whitespace().collect();
    let id = words[words.iter().position(|w| *w == "run-point").unwrap() + 2].trim_matches('\'');
    fails_with(d, &["run-point", "ok.toml", id, "--data", "nodata"], &["not found in nodata"]);
    assert!(!d.join("results/t/points").join(id).join("point.json").exists());
    // Usage mistakes are clap's: non-zero, no panic.
    let (ok, err) = experiments(d, &["run"]);
    assert!(!ok && err.contains("Usage") && !err.contains("panicked"), "{err}");
}
