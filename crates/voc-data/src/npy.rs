//! A small reader and writer for the `.npy` arrays of the competition layout.
//!
//! The competition stores masks as uint8, int8, int32 or int64 depending on who wrote them, so the reader
//! parses the header itself: that gives one code path for every dtype, errors that say which dtype or
//! shape was found, and a header-only read for image sizes.
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;

use ndarray::{Array2, Array3};

use crate::error::{DataError, Result};
use crate::VOID;

/// Element types the reader understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NpyDtype {
    /// `u1`, uint8.
    U8,
    /// `i1`, int8.
    I8,
    /// `i2`, int16.
    I16,
    /// `u2`, uint16.
    U16,
    /// `i4`, int32.
    I32,
    /// `u4`, uint32.
    U32,
    /// `i8`, int64.
    I64,
    /// `u8`, uint64.
    U64,
}

impl NpyDtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::U8 | Self::I8 => 1,
            Self::I16 | Self::U16 => 2,
            Self::I32 | Self::U32 => 4,
            Self::I64 | Self::U64 => 8,
        }
    }
}

/// The parsed header of a `.npy` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyHeader {
    /// Element type.
    pub dtype: NpyDtype,
    /// The descriptor exactly as written in the file (`|u1`, `<i8`, ...), for error messages.
    pub descr: String,
    /// Whether the elements are stored big-endian (`>`).
    pub big_endian: bool,
    /// Whether the data is in column-major (Fortran) order.
    pub fortran_order: bool,
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Byte offset of the data.
    pub data_offset: usize,
}

/// The longest header voc reads: numpy writes a few hundred bytes; a larger claim is a broken or
/// hostile file, refused before anything is allocated for it.
const MAX_HEADER_LEN: usize = 1 << 16;

fn read_header_from(reader: &mut impl Read, path: &Path) -> Result<NpyHeader> {
    let mut prefix = [0u8; 10];
    reader
        .read_exact(&mut prefix)
        .map_err(|e| short_or_io(path, e))?;
    if &prefix[..6] != b"\x93NUMPY" {
        return Err(DataError::bad_array(
            path,
            "not a .npy file (magic bytes \\x93NUMPY missing)",
        ));
    }
    let major = prefix[6];
    let (header_len, prefix_len) = match major {
        1 => (u16::from_le_bytes([prefix[8], prefix[9]]) as usize, 10),
        2 | 3 => {
            let mut rest = [0u8; 2];
            reader
                .read_exact(&mut rest)
                .map_err(|e| short_or_io(path, e))?;
            (
                u32::from_le_bytes([prefix[8], prefix[9], rest[0], rest[1]]) as usize,
                12,
            )
        }
        v => {
            return Err(DataError::bad_array(
                path,
                format!("unsupported .npy format version {v}"),
            ))
        }
    };
    if header_len > MAX_HEADER_LEN {
        return Err(DataError::bad_array(
            path,
            format!("the header claims {header_len} bytes; at most {MAX_HEADER_LEN} are read"),
        ));
    }
    let mut header = vec![0u8; header_len];
    reader
        .read_exact(&mut header)
        .map_err(|e| short_or_io(path, e))?;
    let header = String::from_utf8_lossy(&header);
    parse_header_dict(&header, path, prefix_len + header_len)
}

fn short_or_io(path: &Path, e: std::io::Error) -> DataError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        DataError::bad_array(path, "file is truncated")
    } else {
        DataError::io(path, e)
    }
}

fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header.find(&format!("'{key}'"))?;
    let rest = &header[at + key.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    Some(rest)
}

fn parse_header_dict(header: &str, path: &Path, data_offset: usize) -> Result<NpyHeader> {
    let bad = |what: &str| {
        DataError::bad_array(
            path,
            format!("malformed .npy header ({what}): {}", header.trim()),
        )
    };
    let descr_rest = dict_value(header, "descr").ok_or_else(|| bad("no 'descr'"))?;
    let quote = descr_rest
        .chars()
        .next()
        .ok_or_else(|| bad("empty 'descr'"))?;
    let descr = descr_rest[quote.len_utf8()..]
        .split(quote)
        .next()
        .ok_or_else(|| bad("unterminated 'descr'"))?
        .to_string();
    let first = descr.chars().next().map_or(0, char::len_utf8);
    let (order, code) = descr.split_at(first);
    let big_endian = order == ">";
    let dtype = match code {
        "u1" => NpyDtype::U8,
        "i1" => NpyDtype::I8,
        "i2" => NpyDtype::I16,
        "u2" => NpyDtype::U16,
        "i4" => NpyDtype::I32,
        "u4" => NpyDtype::U32,
        "i8" => NpyDtype::I64,
        "u8" => NpyDtype::U64,
        _ => {
            return Err(DataError::bad_array(
                path,
                format!("dtype '{descr}' is not supported; expected an integer dtype (uint8, int8, int32 or int64)"),
            ))
        }
    };
    let fortran_order = dict_value(header, "fortran_order")
        .ok_or_else(|| bad("no 'fortran_order'"))?
        .starts_with("True");
    let shape_rest = dict_value(header, "shape").ok_or_else(|| bad("no 'shape'"))?;
    let shape_rest = shape_rest
        .strip_prefix('(')
        .ok_or_else(|| bad("'shape' is not a tuple"))?;
    let inner = shape_rest
        .split(')')
        .next()
        .ok_or_else(|| bad("unterminated 'shape'"))?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim_end_matches('L')
                .parse::<usize>()
                .map_err(|_| bad("non-integer dimension"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(NpyHeader {
        dtype,
        descr,
        big_endian,
        fortran_order,
        shape,
        data_offset,
    })
}

/// Reads only the header of a `.npy` file; [`DataError::BadArray`] when it is not one of the
/// integer dtypes above or is malformed.
pub fn read_header(path: &Path) -> Result<NpyHeader> {
    let mut file = File::open(path).map_err(|e| DataError::io(path, e))?;
    read_header_from(&mut file, path)
}

/// Header and raw data bytes (in file byte order) of a whole `.npy` file in memory. The data size
/// the header claims is checked (overflow included) against the bytes there before anything is copied.
fn split_raw<'a>(bytes: &'a [u8], path: &Path) -> Result<(NpyHeader, &'a [u8])> {
    let header = read_header_from(&mut &bytes[..], path)?;
    let nbytes = header
        .shape
        .iter()
        .try_fold(header.dtype.size(), |n, &d| n.checked_mul(d))
        .ok_or_else(|| {
            DataError::bad_array(
                path,
                format!(
                    "header shape {:?} is too large to be an array",
                    header.shape
                ),
            )
        })?;
    let available = bytes.len().saturating_sub(header.data_offset);
    if nbytes > available {
        return Err(DataError::bad_array(
            path,
            format!(
                "file is truncated: header shape {:?} needs {nbytes} data bytes, the file has {available}",
                header.shape
            ),
        ));
    }
    let start = header.data_offset;
    Ok((header, &bytes[start..start + nbytes]))
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| DataError::io(path, e))
}

/// Converts Fortran-ordered data of `shape` to C order.
fn to_c_order<T: Copy>(data: Vec<T>, shape: &[usize]) -> Vec<T> {
    let reversed: Vec<usize> = shape.iter().rev().copied().collect();
    let arr =
        ndarray::ArrayD::from_shape_vec(reversed, data).expect("length checked by the reader");
    let t = arr.reversed_axes();
    t.as_standard_layout().iter().copied().collect()
}

/// Reads an HxWx3 uint8 image (C or Fortran order); another dtype or shape is [`DataError::BadArray`].
pub fn read_image(path: &Path) -> Result<Array3<u8>> {
    decode_image(&read_file(path)?, path)
}

/// [`read_image`] of a file's bytes already in memory; `path` only names it in errors.
pub fn decode_image(bytes: &[u8], path: &Path) -> Result<Array3<u8>> {
    let (header, data) = split_raw(bytes, path)?;
    let data = data.to_vec();
    if header.dtype != NpyDtype::U8 {
        return Err(DataError::bad_array(
            path,
            format!("image dtype is '{}'; expected uint8 ('|u1')", header.descr),
        ));
    }
    if header.shape.len() != 3 || header.shape[2] != 3 {
        return Err(DataError::bad_array(
            path,
            format!("image shape is {:?}; expected (H, W, 3)", header.shape),
        ));
    }
    let data = if header.fortran_order {
        to_c_order(data, &header.shape)
    } else {
        data
    };
    let (h, w) = (header.shape[0], header.shape[1]);
    Array3::from_shape_vec((h, w, 3), data).map_err(|e| DataError::bad_array(path, e.to_string()))
}

/// Reads an HxW mask of any integer dtype; values must be 0..=20 or 255 (void), else
/// [`DataError::BadMaskValue`] names the first pixel that is not (an int8 -1 is void 255).
pub fn read_mask(path: &Path) -> Result<Array2<u8>> {
    decode_mask(&read_file(path)?, path)
}

/// [`read_mask`] of a file's bytes already in memory; `path` only names it in errors.
pub fn decode_mask(bytes: &[u8], path: &Path) -> Result<Array2<u8>> {
    let (header, data) = split_raw(bytes, path)?;
    if header.shape.len() != 2 {
        return Err(DataError::bad_array(
            path,
            format!("mask shape is {:?}; expected (H, W)", header.shape),
        ));
    }
    let (h, w) = (header.shape[0], header.shape[1]);
    if header.dtype == NpyDtype::U8 && !header.fortran_order {
        // The common case: validate in place, no conversion.
        if let Some(i) = data.iter().position(|&v| !voc_core::is_mask_value(v)) {
            return Err(DataError::BadMaskValue {
                path: path.to_path_buf(),
                value: data[i] as i64,
                row: i / w.max(1),
                col: i % w.max(1),
            });
        }
        return Array2::from_shape_vec((h, w), data.to_vec())
            .map_err(|e| DataError::bad_array(path, e.to_string()));
    }
    let size = header.dtype.size();
    let values: Vec<i64> = data
        .chunks_exact(size)
        .map(|c| {
            let mut b = [0u8; 8];
            if header.big_endian {
                b[..size].copy_from_slice(c);
                b[..size].reverse();
            } else {
                b[..size].copy_from_slice(c);
            }
            match header.dtype {
                NpyDtype::U8 => b[0] as i64,
                NpyDtype::I8 => b[0] as i8 as i64,
                NpyDtype::I16 => i16::from_le_bytes([b[0], b[1]]) as i64,
                NpyDtype::U16 => u16::from_le_bytes([b[0], b[1]]) as i64,
                NpyDtype::I32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64,
                NpyDtype::U32 => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64,
                NpyDtype::I64 => i64::from_le_bytes(b),
                NpyDtype::U64 => u64::from_le_bytes(b).min(i64::MAX as u64) as i64,
            }
        })
        .collect();
    let values = if header.fortran_order {
        to_c_order(values, &header.shape)
    } else {
        values
    };
    let mut out = Vec::with_capacity(values.len());
    for (i, &v) in values.iter().enumerate() {
        // int8 masks written from uint8 data store void 255 as -1.
        let v = if header.dtype == NpyDtype::I8 && v == -1 {
            i64::from(VOID)
        } else {
            v
        };
        if !u8::try_from(v).is_ok_and(voc_core::is_mask_value) {
            return Err(DataError::BadMaskValue {
                path: path.to_path_buf(),
                value: v,
                row: i / w.max(1),
                col: i % w.max(1),
            });
        }
        out.push(v as u8);
    }
    Array2::from_shape_vec((h, w), out).map_err(|e| DataError::bad_array(path, e.to_string()))
}

/// Writes a uint8 array as `.npy` (format 1.0, C order), atomically: temporary name, then rename.
pub fn write_u8(path: &Path, shape: &[usize], data: &[u8]) -> Result<()> {
    if shape.iter().product::<usize>() != data.len() {
        return Err(DataError::bad_array(
            path,
            format!("{} bytes do not fill shape {shape:?}", data.len()),
        ));
    }
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_str = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '|u1', 'fortran_order': False, 'shape': {shape_str}, }}");
    // numpy pads the header with spaces so the data starts at a multiple of 64 bytes, ending in '\n'.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    voc_core::write_atomic(path, |w| {
        let mut w = BufWriter::new(w);
        w.write_all(b"\x93NUMPY\x01\x00")?;
        w.write_all(&(header.len() as u16).to_le_bytes())?;
        w.write_all(header.as_bytes())?;
        w.write_all(data)?;
        w.flush()
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_header() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        let data: Vec<u8> = (0..24).collect();
        write_u8(&p, &[2, 4, 3], &data).unwrap();
        let h = read_header(&p).unwrap();
        assert_eq!(h.shape, vec![2, 4, 3]);
        assert_eq!(h.data_offset % 64, 0);
        let img = read_image(&p).unwrap();
        assert_eq!(img.as_slice().unwrap(), &data[..]);
    }
}
