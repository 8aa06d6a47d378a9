//! Atomic file output: everything is written under a temporary name in the target folder, then renamed.
use std::fs::File;
use std::path::Path;

use voc_tensor::VocError;

use crate::error::{DataError, Result};

/// Writes `path` through `write`, into a temporary file in the same folder that is renamed on success
/// (voc-tensor's [`voc_tensor::checkpoint::write_atomic_with`], with its errors as [`DataError`]s).
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> Result<()> {
    voc_tensor::checkpoint::write_atomic_with(path, write).map_err(|e| match e {
        VocError::Io { path, source } => DataError::io(path, source),
        VocError::BadFile { path, .. } => {
            DataError::BadArgument(format!("{}: not a file path", path.display()))
        }
        other => DataError::Tensor(other),
    })
}

/// Creates a folder and its parents.
pub fn create_dir_all(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|e| DataError::io(path, e))
}
