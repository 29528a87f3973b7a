//! Reading and writing NumPy `.npy` files (version 1.0 and 2.0 headers) for `engine run`: float32
//! written; float32, float64, int64, int32 and bool read (as f32, integers exactly up to 2^24).
//! Anything else is rejected with the reason.

use std::path::Path;

use crate::error::{EngineError, Result};

/// An array: shape and row-major values.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

pub fn read(path: &Path) -> Result<Array> {
    read_typed(path).map(|(array, _)| array)
}

/// The array and the NumPy type it was stored as (`<f4`, `|u1`, `<i8`, ...).
pub fn read_typed(path: &Path) -> Result<(Array, String)> {
    let bytes = std::fs::read(path).map_err(|e| EngineError::io(path, e))?;
    parse(&bytes).map_err(|reason| EngineError::Npy { path: path.display().to_string(), reason })
}

fn parse(bytes: &[u8]) -> std::result::Result<(Array, String), String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("missing the \\x93NUMPY magic".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        v => return Err(format!("unsupported format version {v}")),
    };
    let end = header_len.checked_add(start).ok_or("truncated header")?;
    let header = bytes.get(start..end).ok_or("truncated header")?;
    let header = std::str::from_utf8(header).map_err(|_| "header is not text")?;
    let h = Header::parse(header)?;
    // Integer and boolean arrays (token ids, attention masks) are read into exact f32s.
    let (width, decode): (usize, fn(&[u8]) -> f64) = match h.descr.as_str() {
        "<f4" => (4, |c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64),
        "<f8" => (8, |c| f64::from_le_bytes(c.try_into().expect("8 bytes"))),
        "<i8" => (8, |c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as f64),
        "<i4" => (4, |c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64),
        "|b1" | "|u1" => (1, |c| c[0] as f64),
        other => return Err(format!("dtype '{other}' is not supported; save float32 ('<f4'), int64, int32 or bool")),
    };
    if h.fortran_order {
        return Err("Fortran-ordered arrays are not supported".into());
    }
    let bytes_needed = h.shape.iter().try_fold(width, |a, &d| a.checked_mul(d)).ok_or("shape too large")?;
    let data = &bytes[end..];
    if data.len() != bytes_needed {
        return Err(format!("shape {:?} needs {bytes_needed} bytes of data, found {}", h.shape, data.len()));
    }
    let integer = !h.descr.starts_with("<f");
    let values: Vec<f64> = data.chunks_exact(width).map(decode).collect();
    if integer && let Some(v) = values.iter().find(|v| v.abs() > (1u32 << 24) as f64) {
        return Err(format!("integer {v} is beyond 2^24, which float32 holds exactly"));
    }
    Ok((Array { shape: h.shape, data: values.into_iter().map(|v| v as f32).collect() }, h.descr))
}

/// The header: a Python dict literal with exactly the keys `descr` (a string), `fortran_order`
/// (`True` or `False`) and `shape` (a tuple of integers), then spaces and a newline.
struct Header {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

impl Header {
    fn parse(text: &str) -> std::result::Result<Header, String> {
        let mut p = Cursor { rest: text.trim_end_matches([' ', '\n']) };
        let (mut descr, mut fortran, mut shape) = (None, None, None);
        p.expect('{')?;
        while !p.eat('}') {
            let key = p.string()?;
            p.expect(':')?;
            let duplicate = match key.as_str() {
                "descr" => descr.replace(p.string()?).is_some(),
                "fortran_order" => fortran.replace(p.boolean()?).is_some(),
                "shape" => shape.replace(p.tuple()?).is_some(),
                other => return Err(format!("header has an unknown key '{other}'")),
            };
            if duplicate {
                return Err(format!("header has '{key}' twice"));
            }
            if !p.eat(',') {
                p.expect('}')?;
                break;
            }
        }
        if !p.rest.trim_start().is_empty() {
            return Err("header has text after its dict".into());
        }
        match (descr, fortran, shape) {
            (Some(descr), Some(fortran_order), Some(shape)) => Ok(Header { descr, fortran_order, shape }),
            _ => Err("header needs descr, fortran_order and shape".into()),
        }
    }
}

/// What is left of a header being read.
struct Cursor<'a> {
    rest: &'a str,
}

impl Cursor<'_> {
    fn eat(&mut self, c: char) -> bool {
        self.rest = self.rest.trim_start();
        self.rest.strip_prefix(c).map(|r| self.rest = r).is_some()
    }
    fn expect(&mut self, c: char) -> std::result::Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("malformed header: expected '{c}' at \"{}\"", self.rest.chars().take(20).collect::<String>()))
        }
    }
    fn string(&mut self) -> std::result::Result<String, String> {
        self.rest = self.rest.trim_start();
        let quote = self.rest.chars().next().filter(|q| *q == '\'' || *q == '"').ok_or("malformed header: expected a string")?;
        let body = &self.rest[1..];
        let close = body.find(quote).ok_or("malformed header: unterminated string")?;
        self.rest = &body[close + 1..];
        Ok(body[..close].to_string())
    }
    fn boolean(&mut self) -> std::result::Result<bool, String> {
        self.rest = self.rest.trim_start();
        for (word, value) in [("True", true), ("False", false)] {
            if let Some(r) = self.rest.strip_prefix(word) {
                self.rest = r;
                return Ok(value);
            }
        }
        Err("malformed header: fortran_order must be True or False".into())
    }
    fn tuple(&mut self) -> std::result::Result<Vec<usize>, String> {
        self.expect('(')?;
        let mut dims = Vec::new();
        while !self.eat(')') {
            self.rest = self.rest.trim_start();
            let digits = self.rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(self.rest.len());
            let d = self.rest[..digits]
                .parse::<usize>()
                .map_err(|_| format!("bad dimension at \"{}\"", self.rest.chars().take(20).collect::<String>()))?;
            dims.push(d);
            self.rest = &self.rest[digits..];
            if !self.eat(',') {
                self.expect(')')?;
                break;
            }
        }
        Ok(dims)
    }
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
        assert_eq!(parse(&to_bytes(&a)).unwrap(), (a.clone(), "<f4".to_string()));
        let mut b = to_bytes(&a);
        b.pop();
        assert!(parse(&b).unwrap_err().contains("needs 24 bytes"));
        assert!(parse(b"nonsense!!!").is_err());
        // The header says f8: 24 bytes hold 3 values, not the 6 the shape needs.
        let f8 = to_bytes(&a).iter().map(|&c| if c == b'4' { b'8' } else { c }).collect::<Vec<_>>();
        assert!(parse(&f8).unwrap_err().contains("needs 48 bytes"));
        let f2 = to_bytes(&a).iter().map(|&c| if c == b'4' { b'2' } else { c }).collect::<Vec<_>>();
        assert!(parse(&f2).unwrap_err().contains("not supported"));
        // Integers: exact, and refused beyond what f32 holds exactly.
        let ints = |v: &[i64]| {
            let h = format!("{{'descr': '<i8', 'fortran_order': False, 'shape': ({},), }}\n", v.len());
            let mut b = b"\x93NUMPY\x01\x00".to_vec();
            b.extend_from_slice(&(h.len() as u16).to_le_bytes());
            b.extend_from_slice(h.as_bytes());
            v.iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes()));
            parse(&b).map(|(a, descr)| {
                assert_eq!(descr, "<i8");
                a
            })
        };
        assert_eq!(ints(&[3, -2, 30521]).unwrap().data, [3.0, -2.0, 30521.0]);
        assert!(ints(&[1 << 25]).unwrap_err().contains("beyond 2^24"));
        let with_header = |h: &str| {
            let mut b = b"\x93NUMPY\x01\x00".to_vec();
            b.extend_from_slice(&(h.len() as u16).to_le_bytes());
            b.extend_from_slice(h.as_bytes());
            b.extend_from_slice(&[0; 8]);
            parse(&b).map(|(a, _)| a)
        };
        let ok = with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }\n").unwrap();
        assert_eq!(ok.shape, vec![2]);
        assert_eq!(with_header("{'shape': (1, 2), \"descr\": '<f4', 'fortran_order': False}").unwrap().shape, vec![1, 2]);
        for (header, says) in [
            ("{'descr': '<f4' if False else '<f8', 'fortran_order': False, 'shape': (2,), }", "malformed header"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'descr': '<f4'}", "twice"),
            ("{'descr': '<f4', 'fortran_order': False}", "needs descr"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (-2,)}", "bad dimension"),
            ("{'descr': '<f4', 'fortran_order': 0, 'shape': (2,)}", "True or False"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}", "unknown key"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 4)}", "too large"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (2,)} junk", "after its dict"),
        ] {
            let err = with_header(header).unwrap_err();
            assert!(err.contains(says), "{header}: {err}");
        }
    }
}
