//! Output paths checked before a command starts its work: a path that cannot be written fails in the
//! first second, not after an hour of training, and no output lands inside the data it reads.
use std::path::Path;

use anyhow::bail;

/// Outputs must not land among the data a command reads: `out` may not be the data folder itself or lie
/// inside one of its existing subfolders (`train/`, `test/`, ...), where the inputs are. A file or a new
/// folder right in the data folder (`data/submission.csv`, `data/runs`) is allowed.
fn outside_data(out: &Path, data: Option<&Path>, flag: &str) -> anyhow::Result<()> {
    let Some(data) = data else { return Ok(()) };
    let (Ok(data), Some(out)) = (data.canonicalize(), absolute_existing_prefix(out)) else {
        return Ok(());
    };
    let Ok(rel) = out.strip_prefix(&data) else {
        return Ok(());
    };
    let mut parts = rel.components();
    let inside = match parts.next() {
        None => true,
        Some(first) => parts.next().is_some() && data.join(first).is_dir(),
    };
    if inside {
        bail!(
            "{flag} {} is among the data of {}; write outputs elsewhere so the data stays as it was",
            out.display(),
            data.display()
        );
    }
    Ok(())
}

/// `path` made absolute through its longest existing ancestor (the rest need not exist yet).
fn absolute_existing_prefix(path: &Path) -> Option<std::path::PathBuf> {
    let mut rest = Vec::new();
    let mut cur = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().ok()?.join(path)
    };
    loop {
        if let Ok(c) = cur.canonicalize() {
            return Some(rest.into_iter().rev().fold(c, |p, part| p.join(part)));
        }
        rest.push(cur.file_name()?.to_os_string());
        cur = cur.parent()?.to_path_buf();
    }
}

/// `--out DIR` of a run: a folder that can be written, not inside `data`.
pub fn check_dir(out: &Path, data: Option<&Path>, flag: &str) -> anyhow::Result<()> {
    outside_data(out, data, flag)?;
    voc_core::check_output_dir(out).map_err(|e| anyhow::anyhow!("{flag}: {e}"))
}

/// `--out FILE`: a file that can be written, not inside `data`.
pub fn check_file(out: &Path, data: Option<&Path>, flag: &str) -> anyhow::Result<()> {
    outside_data(out, data, flag)?;
    voc_core::check_output_file(out).map_err(|e| anyhow::anyhow!("{flag}: {e}"))
}
