//! Reading and writing NumPy `.npy` files of little-endian float32 (version 1.0 and 2.0 headers),
//! for `engine run`. Anything else is rejected with the reason.

use std::path::Path;

use crate::error::{EngineError, Result};

/// An array: shape and row-major values.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

pub fn read(path: &Path) -> Result<Array> {
    let bytes = std::fs::read(path).map_err(|e| EngineError::io(path, e))?;
    parse(&bytes).map_err(|reason| EngineError::Npy { path: path.display().to_string(), reason })
}

fn parse(bytes: &[u8]) -> std::result::Result<Array, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("missing the \\x93NUMPY magic".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        v => return Err(format!("unsupported format version {v}")),
    };
    let header = bytes.get(start..start + header_len).ok_or("truncated header")?;
    let header = std::str::from_utf8(header).map_err(|_| "header is not text")?;
    let field = |key: &str| -> Option<&str> { header.split(&format!("'{key}':")).nth(1).map(str::trim_start) };
    let descr = field("descr").ok_or("header has no descr")?;
    if !descr.starts_with("'<f4'") {
        return Err(format!("dtype {} is not supported; save float32 ('<f4')", descr.split(',').next().unwrap_or("?")));
    }
    if field("fortran_order").is_some_and(|v| v.starts_with("True")) {
        return Err("Fortran-ordered arrays are not supported".into());
    }
    let shape_text = field("shape").and_then(|s| s.strip_prefix('(')).and_then(|s| s.split(')').next()).ok_or("header has no shape")?;
    let shape: Vec<usize> = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| format!("bad dimension '{s}'")))
        .collect::<std::result::Result<_, _>>()?;
    let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or("shape too large")?;
    let data = &bytes[start + header_len..];
    if data.len() != numel * 4 {
        return Err(format!("shape {shape:?} needs {} bytes of data, found {}", numel * 4, data.len()));
    }
    Ok(Array { shape, data: data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect() })
}

/// Encodes an array as `.npy` (version 1.0).
pub fn to_bytes(a: &Array) -> Vec<u8> {
    let dims: Vec<String> = a.shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend(a.data.iter().flat_map(|v| v.to_le_bytes()));
    out
}

/// Writes an array atomically.
pub fn write(path: &Path, a: &Array) -> Result<()> {
    crate::fsutil::write_atomic(path, &to_bytes(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let a = Array { shape: vec![2, 3], data: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.5] };
        assert_eq!(parse(&to_bytes(&a)).unwrap(), a);
        let mut b = to_bytes(&a);
        b.pop();
        assert!(parse(&b).unwrap_err().contains("needs 24 bytes"));
        assert!(parse(b"nonsense!!!").is_err());
        let f8 = to_bytes(&a).iter().map(|&c| if c == b'4' { b'8' } else { c }).collect::<Vec<_>>();
        assert!(parse(&f8).unwrap_err().contains("not supported"));
    }
}
