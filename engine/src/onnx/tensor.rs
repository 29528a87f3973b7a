//! An ONNX tensor's values, from the model file or from a file beside it (external data, as
//! PyTorch's default exporter writes large models): dims checked against the engine's cap,
//! integer and boolean types converted exactly to f32, external bytes read only from a plain
//! file inside the model's folder, at an offset and length checked against that file.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path};

use super::proto::{TensorProto, data_type};
use crate::graph::{MAX_WEIGHT_ELEMENTS, checked_numel};

/// Dims and values of `t`; `folder` is the model's folder, where external data may live (`None`
/// for a model read from memory, which cannot have any).
pub fn decode(t: &TensorProto, folder: Option<&Path>) -> Result<(Vec<usize>, Vec<f32>), String> {
    let dims: Vec<usize> =
        t.dims.iter().map(|&d| usize::try_from(d).map_err(|_| format!("negative dimension {d}"))).collect::<Result<_, _>>()?;
    let numel = checked_numel(&dims, MAX_WEIGHT_ELEMENTS)
        .ok_or_else(|| format!("dims {dims:?} hold more than {MAX_WEIGHT_ELEMENTS} elements (the engine's cap for one tensor)"))?;
    let width = match t.data_type {
        data_type::INT8 | data_type::UINT8 | data_type::BOOL => 1,
        data_type::INT32 | data_type::FLOAT => 4,
        data_type::INT64 | data_type::DOUBLE => 8,
        other => return Err(format!("data type {other} is not supported (float32, float64, int64, int32, int8, uint8 and bool are)")),
    };
    let external;
    let raw: &[u8] = if t.data_location == 1 {
        external = read_external(t, folder, numel * width)?;
        &external
    } else {
        &t.raw_data
    };
    let values: Vec<f32> = if raw.is_empty() && numel > 0 {
        match t.data_type {
            data_type::FLOAT => t.float_data.clone(),
            data_type::INT64 => t.int64_data.iter().map(|&v| v as f32).collect(),
            data_type::DOUBLE => t.double_data.iter().map(|&v| v as f32).collect(),
            _ => t.int32_data.iter().map(|&v| v as f32).collect(),
        }
    } else {
        let convert: fn(&[u8]) -> f32 = match t.data_type {
            data_type::INT8 => |c| c[0] as i8 as f32,
            data_type::UINT8 | data_type::BOOL => |c| c[0] as f32,
            data_type::INT32 => |c| i32::from_le_bytes(c.try_into().unwrap()) as f32,
            data_type::FLOAT => |c| f32::from_le_bytes(c.try_into().unwrap()),
            data_type::INT64 => |c| i64::from_le_bytes(c.try_into().unwrap()) as f32,
            _ => |c| f64::from_le_bytes(c.try_into().unwrap()) as f32,
        };
        raw.chunks_exact(width).map(convert).collect()
    };
    if values.len() != numel {
        return Err(format!("{} values for dims {dims:?}", values.len()));
    }
    Ok((dims, values))
}

/// The `bytes` bytes of an external tensor: `location` a relative path of plain components inside
/// `folder` (no `..`, not absolute, not a link out of it), `offset` and `length` within the file.
fn read_external(t: &TensorProto, folder: Option<&Path>, bytes: usize) -> Result<Vec<u8>, String> {
    let folder = folder.ok_or("its data is in an external file, which needs the model loaded from its folder")?;
    let get = |key: &str| t.external_data.iter().find(|e| e.key == key).map(|e| e.value.as_str());
    let location = get("location").ok_or("external data without a location")?;
    let relative = Path::new(location);
    if relative.as_os_str().is_empty() || !relative.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(format!("external data location '{location}' must be a file inside the model's folder"));
    }
    let canonical = |p: &Path| p.canonicalize().map_err(|e| format!("external data '{location}': {e}"));
    let (file_path, folder) = (canonical(&folder.join(relative))?, canonical(folder)?);
    if !file_path.starts_with(&folder) || !file_path.is_file() {
        return Err(format!("external data location '{location}' must be a file inside the model's folder"));
    }
    let number = |key: &str| get(key).map(|v| v.parse::<u64>().map_err(|_| format!("external data {key} '{v}' is not a number")));
    let offset = number("offset").transpose()?.unwrap_or(0);
    let length = number("length").transpose()?.unwrap_or(bytes as u64);
    if length != bytes as u64 {
        return Err(format!("external data length {length} is not the {bytes} bytes its dims and type need"));
    }
    let size = std::fs::metadata(&file_path).map_err(|e| format!("external data '{location}': {e}"))?.len();
    if offset.checked_add(length).is_none_or(|end| end > size) {
        return Err(format!(
            "external data '{location}': bytes {offset}..{} lie past its end ({size} bytes)",
            offset.saturating_add(length)
        ));
    }
    let mut f = std::fs::File::open(&file_path).map_err(|e| format!("external data '{location}': {e}"))?;
    let mut out = vec![0u8; bytes];
    f.seek(SeekFrom::Start(offset)).and_then(|_| f.read_exact(&mut out)).map_err(|e| format!("external data '{location}': {e}"))?;
    Ok(out)
}
