//! For the workspace's tests: a check that cannot run on this machine (no ONNX Runtime, a CPU
//! without AVX-512 or AMX) says so instead of passing silently. `scripts/test` sets
//! `TEST_SKIPS_DIR`; each skip leaves a file there, and the test command's closing line counts
//! them (`N passed, N failed, N skipped`).

use std::path::Path;

/// Environment variable naming the folder where skipped checks are recorded.
pub const SKIPS_ENV: &str = "TEST_SKIPS_DIR";

/// Records that the calling test skipped `what` (and prints it).
pub fn record_skip(what: &str) {
    eprintln!("skipped: {what}");
    let Some(dir) = std::env::var_os(SKIPS_ENV) else { return };
    let test = std::thread::current().name().unwrap_or("test").replace("::", ".");
    // One file per test and reason (FNV-1a of the reason), so repeated skips count once.
    let hash = what.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
    let _ = std::fs::write(Path::new(&dir).join(format!("{test}.{hash:016x}")), format!("{test}: {what}\n"));
}
