//! Output paths checked before a command starts its work: a path that cannot be written fails in the
//! first second, not after an hour of training, and no output lands inside the data it reads.
use std::path::Path;

use anyhow::bail;

/// The folder a command reads (`--data`) must not receive its outputs: `out` inside it is refused.
fn outside_data(out: &Path, data: Option<&Path>, flag: &str) -> anyhow::Result<()> {
    let Some(data) = data else { return Ok(()) };
    let (Ok(data), Some(out)) = (data.canonicalize(), absolute_existing_prefix(out)) else {
        return Ok(());
    };
    if out.starts_with(&data) {
        bail!(
            "{flag} {} is inside the data folder {}; write outputs elsewhere so the data stays as it was",
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
