//! Folder creation with errors that name the folder. Files are written with [`voc_core::write_atomic`].
use std::path::Path;

use crate::error::{DataError, Result};

/// Creates a folder and its parents.
pub fn create_dir_all(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|e| DataError::io(path, e))
}
