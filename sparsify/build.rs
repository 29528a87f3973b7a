//! Records the code's own git revision, and whether its tracked files had changes, at build time
//! (`SPARSIFY_GIT_REVISION`): a run then names the code that produced it, whatever folder it is
//! started from.

use std::path::Path;
use std::process::Command;

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let root = Path::new(&manifest).join("..");
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let revision = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    println!("cargo:rustc-env=SPARSIFY_GIT_REVISION={revision}{}", if dirty { "-dirty" } else { "" });
    let head = git(&["symbolic-ref", "-q", "HEAD"]).map(|r| format!(".git/{r}"));
    for path in [".git/HEAD".to_string()]
        .into_iter()
        .chain(head)
        .chain(["engine/src", "sparsify/src", "datasets/src", "experiments/src"].map(String::from))
    {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
}
