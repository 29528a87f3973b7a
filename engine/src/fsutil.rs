//! Files written so that a kill at any instant leaves the old content or the new, never half:
//! atomic writes (a temporary file created exclusively in the destination's folder, synced, then
//! renamed over the destination), removal of the temporaries a killed writer left, and a lock
//! that gives a folder one writer at a time.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{EngineError, Result};

/// The ending of every temporary file `write_atomic` makes (`.NAME.PID.N.tmp`).
const TMP_SUFFIX: &str = ".tmp";

/// Writes `bytes` to `path` atomically, creating parent folders. The temporary file is created
/// exclusively (`O_EXCL`: never through a symbolic link, never someone else's file).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| EngineError::io(dir, e))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let (tmp, mut file) = loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.{}.{n}{TMP_SUFFIX}", std::process::id()));
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => break (tmp, f),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(EngineError::io(&tmp, e)),
        }
    };
    let result = file.write_all(bytes).and_then(|_| file.sync_all()).and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(EngineError::io(path, e));
    }
    Ok(())
}

/// Removes the temporary files of `write_atomic` in `dir` (not below it) that no live writer
/// owns: call it while holding the folder's lock. Returns how many went.
pub fn remove_stale_temporaries(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.ends_with(TMP_SUFFIX) && e.file_type().is_ok_and(|t| t.is_file()) {
            removed += std::fs::remove_file(e.path()).is_ok() as usize;
        }
    }
    removed
}

/// An exclusive lock on a folder (`flock` on `DIR/.lock`, released when the process ends, however
/// it ends): one writer per run or results folder. The file names the holder for the refusal.
#[derive(Debug)]
pub struct DirLock {
    _file: std::fs::File,
    path: PathBuf,
}

impl DirLock {
    /// Locks `dir` (created if missing), or fails naming the process that holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock> {
        std::fs::create_dir_all(dir).map_err(|e| EngineError::io(dir, e))?;
        let path = dir.join(".lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| EngineError::io(&path, e))?;
        if !try_lock(&file) {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            return Err(EngineError::io(
                dir,
                std::io::Error::other(format!("in use by another process ({}); wait for it or choose another folder", holder.trim())),
            ));
        }
        let holder = format!("pid {} on {}", std::process::id(), hostname());
        let _ = file.set_len(0).and_then(|_| file.write_all(holder.as_bytes())).and_then(|_| file.sync_all());
        Ok(DirLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(target_os = "linux")]
fn try_lock(file: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor this process owns; no memory is passed.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn try_lock(_file: &std::fs::File) -> bool {
    true
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map_or_else(|_| "this machine".into(), |h| h.trim().to_string())
}

/// The CPU's model name from /proc/cpuinfo.
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|s| s.trim().to_string()))
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_a_link_and_locks_exclude_a_second_writer() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, b"keep").unwrap();
        let link = dir.path().join("out.json");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write_atomic(&link, b"new").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"keep", "the link's target is untouched");
        assert_eq!(std::fs::read(&link).unwrap(), b"new");
        std::fs::write(dir.path().join(".out.json.1.0.tmp"), b"half").unwrap();
        assert_eq!(remove_stale_temporaries(dir.path()), 1);
        let first = DirLock::acquire(dir.path()).unwrap();
        let err = DirLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(err.contains("in use by another process (pid"), "{err}");
        drop(first);
        DirLock::acquire(dir.path()).unwrap();
    }
}
