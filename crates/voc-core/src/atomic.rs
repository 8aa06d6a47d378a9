//! Atomic file output: everything is written under a temporary name in the target's folder, flushed to
//! disk, then renamed over the target, so a reader (or a job killed half-way) sees the old file or the
//! complete new one, never a partial write.
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

use crate::error::{CoreError, Result};

/// The folder a file `path` lives in (`.` for a bare file name) and its file name.
fn split_target(path: &Path) -> Result<(&Path, String)> {
    let name = path.file_name().ok_or_else(|| {
        CoreError::BadArgument(format!(
            "{}: not a file path (it has no file name)",
            path.display()
        ))
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Ok((dir, name.to_string_lossy().into_owned()))
}

/// A uniquely named temporary file next to `path`, removed when dropped unless persisted. It gets
/// the permissions `File::create` would give (0o666 less the umask), not tempfile's owner-only 0o600:
/// the renamed result is an ordinary output file.
fn temp_file_for(path: &Path) -> Result<NamedTempFile> {
    let (dir, name) = split_target(path)?;
    let prefix = format!(".{name}.");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    builder.tempfile_in(dir).map_err(|e| CoreError::io(dir, e))
}

/// Flushes `file` to disk and renames it to `path`.
fn persist(file: NamedTempFile, path: &Path) -> Result<()> {
    file.as_file()
        .sync_all()
        .map_err(|e| CoreError::io(file.path(), e))?;
    file.persist(path)
        .map_err(|e| CoreError::io(path, e.error))?;
    Ok(())
}

/// Writes `path` atomically: `write` fills a temporary file in the same folder (wrap it in a
/// `BufWriter` for many small writes), which is then flushed to disk and renamed over `path`. On any
/// error the temporary file is removed and `path` is left as it was.
///
/// ```
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("hello.txt");
/// voc_core::write_atomic(&path, |f| std::io::Write::write_all(f, b"hello"))?;
/// assert_eq!(std::fs::read(&path)?, b"hello");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn write_atomic(path: &Path, write: impl FnOnce(&mut File) -> io::Result<()>) -> Result<()> {
    let mut file = temp_file_for(path)?;
    write(file.as_file_mut()).map_err(|e| CoreError::io(path, e))?;
    persist(file, path)
}

/// A file written under a temporary name in the same folder and renamed into place by
/// [`AtomicFile::commit`], for output streamed through [`Write`]. Dropped without a commit, the
/// temporary file is removed and the target is untouched.
#[derive(Debug)]
pub struct AtomicFile {
    file: BufWriter<NamedTempFile>,
    path: PathBuf,
}

impl AtomicFile {
    /// Opens a buffered temporary file that [`AtomicFile::commit`] will rename to `path`.
    pub fn create(path: &Path) -> Result<Self> {
        Ok(Self {
            file: BufWriter::with_capacity(1 << 20, temp_file_for(path)?),
            path: path.to_path_buf(),
        })
    }

    /// The final name of the file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Flushes, syncs and renames the file to its final name; returns that name.
    pub fn commit(self) -> Result<PathBuf> {
        let file = self
            .file
            .into_inner()
            .map_err(|e| CoreError::io(&self.path, e.into_error()))?;
        persist(file, &self.path)?;
        Ok(self.path)
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Checks, before any work, that `dir` can hold a command's outputs: it is a folder or can be created
/// as one, and a file can be written in it. Errors name the folder and say which of these fails (a
/// path that is a file, a read-only folder, a parent that cannot be created).
pub fn check_output_dir(dir: &Path) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        return Err(CoreError::BadArgument(format!(
            "{} is a file; a folder for the outputs was expected",
            dir.display()
        )));
    }
    // The folders this check creates are removed again: a command that fails later leaves nothing.
    let mut first_new = None;
    let mut ancestor = Some(dir);
    while let Some(a) = ancestor.filter(|a| !a.as_os_str().is_empty() && !a.exists()) {
        first_new = Some(a.to_path_buf());
        ancestor = a.parent();
    }
    std::fs::create_dir_all(dir).map_err(|e| {
        CoreError::BadArgument(format!(
            "cannot create the output folder {}: {e}",
            dir.display()
        ))
    })?;
    let probe = dir.join(format!(".voc-write-check-{}", std::process::id()));
    let outcome = match File::create(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(CoreError::BadArgument(format!(
            "cannot write in the output folder {}: {e}",
            dir.display()
        ))),
    };
    if let Some(new) = first_new {
        let _ = std::fs::remove_dir_all(new);
    }
    outcome
}

/// Checks, before any work, that the file `path` can be written: it is not a folder, and its folder
/// exists (or can be created) and takes a new file.
pub fn check_output_file(path: &Path) -> Result<()> {
    if path.is_dir() {
        return Err(CoreError::BadArgument(format!(
            "{} is a folder; a file name was expected",
            path.display()
        )));
    }
    if path.file_name().is_none() {
        return Err(CoreError::BadArgument(format!(
            "{} does not name a file",
            path.display()
        )));
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    check_output_dir(parent)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An atomically written file has the mode a plainly created one gets (the umask applies), not
    /// the temporary file's owner-only mode.
    #[cfg(unix)]
    #[test]
    fn written_files_get_ordinary_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        File::create(&plain).unwrap();
        let atomic = dir.path().join("atomic");
        write_atomic(&atomic, |f| f.write_all(b"x")).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&atomic), mode(&plain));
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.csv");
        write_atomic(&path, |f| f.write_all(b"old")).unwrap();
        let err = write_atomic(&path, |f| {
            f.write_all(b"half")?;
            Err(io::Error::other("disk full"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("out.csv"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(entries(dir.path()), ["out.csv"]);
    }

    #[test]
    fn an_uncommitted_file_disappears() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("submission.csv");
        let mut file = AtomicFile::create(&path).unwrap();
        file.write_all(b"Id,Predicted\n").unwrap();
        assert!(!path.exists());
        drop(file);
        assert!(entries(dir.path()).is_empty());
        let mut file = AtomicFile::create(&path).unwrap();
        file.write_all(b"Id,Predicted\n").unwrap();
        assert_eq!(file.commit().unwrap(), path);
        assert_eq!(std::fs::read(&path).unwrap(), b"Id,Predicted\n");
        assert_eq!(entries(dir.path()), ["submission.csv"]);
    }

    #[test]
    fn threads_writing_one_path_never_share_a_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("same.bin");
        std::thread::scope(|s| {
            for t in 0..8u8 {
                let path = &path;
                s.spawn(move || {
                    for _ in 0..20 {
                        write_atomic(path, |f| f.write_all(&[t; 4096])).unwrap();
                    }
                });
            }
        });
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 4096);
        assert!(bytes.iter().all(|&b| b == bytes[0]), "a torn file");
        assert_eq!(entries(dir.path()), ["same.bin"]);
    }

    #[test]
    fn a_path_without_file_name_is_refused() {
        let err = write_atomic(Path::new("/"), |_| Ok(())).unwrap_err();
        assert!(err.to_string().contains("not a file path"), "{err}");
    }
}
