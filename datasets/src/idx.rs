//! Reader and writer for the IDX format of MNIST and its relatives (Fashion-MNIST, KMNIST).
//!
//! An IDX file is a 4-byte magic (`0x00 0x00 dtype ndims`), `ndims` big-endian u32 sizes, then
//! the data in row-major order. We read unsigned-byte files (dtype `0x08`): images with 3
//! dimensions (magic 2051) and labels with 1 (magic 2049), gzip-compressed or raw. Every size is
//! checked against the bytes present before anything is indexed, so a bad file is an error.

use std::io::{Read, Write};
use std::path::Path;

use flate2::read::GzDecoder;

use crate::error::{DataError, Result};

/// Magic number of an unsigned-byte IDX file with 3 dimensions (images).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an unsigned-byte IDX file with 1 dimension (labels).
pub const LABELS_MAGIC: u32 = 0x0000_0801;

/// Images as stored in an IDX file: `count` images of `rows x cols` bytes, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct IdxImages {
    pub count: usize,
    pub rows: usize,
    pub cols: usize,
    /// `[count, rows, cols]`, row-major.
    pub pixels: Vec<u8>,
}

/// Un-gzips `raw` when it starts with the gzip magic or `path` ends in `.gz` (a `.gz` name on
/// bytes that are not gzip is reported as such). `path` is only used in messages.
pub fn decode(path: &Path, raw: Vec<u8>) -> Result<Vec<u8>> {
    let named_gz = path.extension().is_some_and(|e| e == "gz");
    let is_gz = raw.starts_with(&[0x1f, 0x8b]);
    if named_gz && !is_gz {
        return Err(DataError::Gzip { path: path.into(), reason: "missing gzip header".into() });
    }
    if !is_gz {
        return Ok(raw);
    }
    let mut out = Vec::with_capacity(raw.len() * 4);
    GzDecoder::new(&raw[..]).read_to_end(&mut out).map_err(|e| DataError::Gzip { path: path.into(), reason: e.to_string() })?;
    Ok(out)
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| DataError::io(path, e))
}

/// Parses the header and returns the dimensions and the data slice, checking the magic and
/// that the data length is exactly the product of the dimensions.
fn parse<'a>(path: &Path, bytes: &'a [u8], magic: u32) -> Result<(Vec<usize>, &'a [u8])> {
    let ndims = (magic & 0xff) as usize;
    let header = 4 + 4 * ndims;
    if bytes.len() < 4 {
        return Err(DataError::Truncated { path: path.into(), expected: header as u64, found: bytes.len() as u64 });
    }
    let found = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if found != magic {
        return Err(DataError::BadMagic { path: path.into(), expected: magic, found });
    }
    if bytes.len() < header {
        return Err(DataError::Truncated { path: path.into(), expected: header as u64, found: bytes.len() as u64 });
    }
    let dims: Vec<usize> = bytes[4..header].chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize).collect();
    let Some(data_len) = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64)) else {
        return Err(DataError::Shape {
            path: path.into(),
            what: "dimensions".into(),
            expected: "a size that fits in memory".into(),
            found: format!("{dims:?}"),
        });
    };
    let have = (bytes.len() - header) as u64;
    if have < data_len {
        return Err(DataError::Truncated { path: path.into(), expected: header as u64 + data_len, found: bytes.len() as u64 });
    }
    if have > data_len {
        return Err(DataError::TrailingBytes { path: path.into(), extra: have - data_len });
    }
    Ok((dims, &bytes[header..]))
}

/// Parses image bytes (gzip or raw); `path` names them in errors.
pub fn images_from_bytes(path: &Path, raw: Vec<u8>) -> Result<IdxImages> {
    let bytes = decode(path, raw)?;
    let (dims, data) = parse(path, &bytes, IMAGES_MAGIC)?;
    Ok(IdxImages { count: dims[0], rows: dims[1], cols: dims[2], pixels: data.to_vec() })
}

/// Parses label bytes (gzip or raw); `path` names them in errors.
pub fn labels_from_bytes(path: &Path, raw: Vec<u8>) -> Result<Vec<u8>> {
    let bytes = decode(path, raw)?;
    let (_, data) = parse(path, &bytes, LABELS_MAGIC)?;
    Ok(data.to_vec())
}

/// Reads an image file (gzip or raw).
pub fn read_images(path: &Path) -> Result<IdxImages> {
    images_from_bytes(path, read_file(path)?)
}

/// Reads a label file (gzip or raw).
pub fn read_labels(path: &Path) -> Result<Vec<u8>> {
    labels_from_bytes(path, read_file(path)?)
}

/// Encodes images as IDX bytes (uncompressed).
pub fn encode_images(images: &IdxImages) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + images.pixels.len());
    out.extend_from_slice(&IMAGES_MAGIC.to_be_bytes());
    for d in [images.count, images.rows, images.cols] {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(&images.pixels);
    out
}

/// Encodes labels as IDX bytes (uncompressed).
pub fn encode_labels(labels: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + labels.len());
    out.extend_from_slice(&LABELS_MAGIC.to_be_bytes());
    out.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    out.extend_from_slice(labels);
    out
}

/// Gzips bytes deterministically (no timestamp, fixed level), so regenerated files are identical.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::GzBuilder::new().mtime(0).write(Vec::new(), flate2::Compression::best());
    enc.write_all(bytes).expect("writing to a Vec cannot fail");
    enc.finish().expect("writing to a Vec cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn sample() -> IdxImages {
        IdxImages { count: 3, rows: 2, cols: 2, pixels: (0..12).collect() }
    }

    #[test]
    fn round_trip_raw_and_gzip() {
        let dir = tempfile::tempdir().unwrap();
        let raw = write(dir.path(), "img", &encode_images(&sample()));
        let gz = write(dir.path(), "img.gz", &gzip(&encode_images(&sample())));
        assert_eq!(read_images(&raw).unwrap(), sample());
        assert_eq!(read_images(&gz).unwrap(), sample());
        let lab = write(dir.path(), "lab.gz", &gzip(&encode_labels(&[1, 2, 3])));
        assert_eq!(read_labels(&lab).unwrap(), vec![1, 2, 3]);
    }

    #[test]
    fn truncated_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = encode_images(&sample());
        bytes.truncate(bytes.len() - 3);
        let p = write(dir.path(), "img", &bytes);
        let err = read_images(&p).unwrap_err().to_string();
        assert!(err.contains("truncated") && err.contains("expected 28 bytes, found 25"), "{err}");
        let p = write(dir.path(), "tiny", &[0, 0]);
        assert!(matches!(read_images(&p), Err(DataError::Truncated { .. })));
        let p = write(dir.path(), "hdr", &[0, 0, 8, 3, 0, 0]);
        assert!(matches!(read_images(&p), Err(DataError::Truncated { .. })));
    }

    #[test]
    fn wrong_magic_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "lab", &encode_labels(&[1, 2]));
        let err = read_images(&p).unwrap_err().to_string();
        assert!(err.contains("bad IDX magic") && err.contains("0x00000803"), "{err}");
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = encode_labels(&[1, 2]);
        bytes.push(7);
        let p = write(dir.path(), "lab", &bytes);
        assert!(matches!(read_labels(&p), Err(DataError::TrailingBytes { extra: 1, .. })));
    }

    #[test]
    fn gz_name_without_gzip_content_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "lab.gz", &encode_labels(&[1]));
        let err = read_labels(&p).unwrap_err().to_string();
        assert!(err.contains("not a valid gzip"), "{err}");
        let mut gz = gzip(&encode_labels(&[1, 2, 3, 4]));
        gz.truncate(gz.len() / 2);
        let p = write(dir.path(), "cut.gz", &gz);
        assert!(matches!(read_labels(&p), Err(DataError::Gzip { .. })));
    }

    #[test]
    fn huge_declared_dimensions_do_not_allocate() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = IMAGES_MAGIC.to_be_bytes().to_vec();
        for _ in 0..3 {
            bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        }
        let p = write(dir.path(), "huge", &bytes);
        assert!(read_images(&p).is_err());
    }
}
