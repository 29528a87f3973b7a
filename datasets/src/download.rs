//! Downloads a file over HTTP(S) with a progress bar and SHA-256 verification. The body goes to
//! a temporary file next to the destination and is renamed into place only once its checksum
//! matches: a mismatch, a cut connection or Ctrl-C leaves no file at the destination.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::error::{DataError, Result};

/// Hex SHA-256 of a byte slice.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Downloads `url` to `dest`, verifying that the bytes hash to `sha256` (lowercase hex).
pub fn download(url: &str, dest: &Path, sha256: &str, quiet: bool) -> Result<()> {
    let fail = |reason: String| DataError::Download { url: url.to_string(), reason };
    let agent = ureq::AgentBuilder::new().timeout_connect(Duration::from_secs(15)).timeout_read(Duration::from_secs(60)).build();
    let response = agent.get(url).call().map_err(|e| fail(e.to_string()))?;
    let expected_len: Option<u64> = response.header("Content-Length").and_then(|v| v.parse().ok());

    let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    // Dropped (and so deleted) on every early return below.
    let mut part = tempfile::Builder::new().prefix(".download-").suffix(".part").tempfile_in(dir).map_err(|e| DataError::io(dir, e))?;

    let bar = progress_bar(expected_len, dest, quiet);
    let mut hasher = Sha256::new();
    let mut reader = response.into_reader();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf).map_err(|e| fail(format!("connection failed after {total} bytes: {e}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        part.write_all(&buf[..n]).map_err(|e| DataError::io(part.path(), e))?;
        total += n as u64;
        bar.set_position(total);
    }
    bar.finish_and_clear();
    if let Some(len) = expected_len.filter(|&len| len != total) {
        return Err(fail(format!("connection closed after {total} of {len} bytes")));
    }
    let found = hex(&hasher.finalize());
    if found != sha256 {
        return Err(DataError::Checksum { url: url.to_string(), expected: sha256.to_string(), found });
    }
    part.as_file().sync_all().map_err(|e| DataError::io(part.path(), e))?;
    part.persist(dest).map_err(|e| DataError::io(dest, e.error))?;
    Ok(())
}

fn progress_bar(len: Option<u64>, dest: &Path, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = match len {
        Some(len) => ProgressBar::new(len),
        None => ProgressBar::new_spinner(),
    };
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_message(dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
    bar
}
