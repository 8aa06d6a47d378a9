//! Writing `submission.csv`: streaming rows into any writer, and an atomic file target.
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Result, SubmitError};
use crate::reader::RowKind;
use crate::rle::{write_labels, ClassRuns, MaskView};

/// The header line of a submission.
pub const HEADER: &str = "Id,Predicted";

/// A file written under a temporary name in the same folder and renamed into place by
/// [`AtomicFile::commit`], so a reader never sees half a file. Dropped without a commit, the
/// temporary file is removed.
#[derive(Debug)]
pub struct AtomicFile {
    file: Option<BufWriter<File>>,
    tmp: PathBuf,
    path: PathBuf,
}

impl AtomicFile {
    pub fn create(path: &Path) -> Result<Self> {
        let name = path
            .file_name()
            .ok_or_else(|| SubmitError::Invalid(format!("{}: not a file path", path.display())))?;
        let tmp = path.with_file_name(format!(
            ".{}.{}.tmp",
            name.to_string_lossy(),
            std::process::id()
        ));
        let file = File::create(&tmp).map_err(|source| SubmitError::Io {
            path: tmp.clone(),
            source,
        })?;
        Ok(Self {
            file: Some(BufWriter::with_capacity(1 << 20, file)),
            tmp,
            path: path.to_path_buf(),
        })
    }

    /// Flushes, syncs and renames the file to its final name; returns that name.
    pub fn commit(mut self) -> Result<PathBuf> {
        let io_err = |source| SubmitError::Io {
            path: self.tmp.clone(),
            source,
        };
        let file = self
            .file
            .take()
            .expect("an AtomicFile holds its file until commit");
        let file = file.into_inner().map_err(|e| io_err(e.into_error()))?;
        file.sync_all().map_err(io_err)?;
        drop(file);
        std::fs::rename(&self.tmp, &self.path).map_err(|source| SubmitError::Io {
            path: self.path.clone(),
            source,
        })?;
        Ok(self.path.clone())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file
            .as_mut()
            .expect("an AtomicFile holds its file until commit")
            .write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file
            .as_mut()
            .expect("an AtomicFile holds its file until commit")
            .write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file
            .as_mut()
            .expect("an AtomicFile holds its file until commit")
            .flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

fn check_id(id: &str) -> Result<()> {
    if id.is_empty() || id.contains([',', '"', '\n', '\r']) {
        return Err(SubmitError::BadId { id: id.to_string() });
    }
    Ok(())
}

/// Streams submission rows, byte for byte in the competition's format: the header, then per image
/// `{id}_classification,{rle}` and `{id}_segmentation,{rle}`, each line ending in `\n`.
///
/// Each row is checked (labels 0/1, mask values 0..=20 or 255) before any of its bytes are written, so
/// after an error the output still holds only whole rows.
pub struct SubmissionWriter<W: Write> {
    out: W,
    runs: ClassRuns,
    rows: usize,
}

impl<W: Write> SubmissionWriter<W> {
    /// Writes the header.
    pub fn new(mut out: W) -> Result<Self> {
        out.write_all(HEADER.as_bytes())?;
        out.write_all(b"\n")?;
        Ok(Self {
            out,
            runs: ClassRuns::new(),
            rows: 0,
        })
    }

    fn start_row(&mut self, id: &str, kind: RowKind) -> Result<()> {
        self.out.write_all(id.as_bytes())?;
        self.out.write_all(kind.suffix().as_bytes())?;
        self.out.write_all(b",")?;
        Ok(())
    }

    /// Writes `{id}_classification,{RLE of the 20 labels}`.
    pub fn write_classification(&mut self, id: &str, labels: &[u8]) -> Result<()> {
        check_id(id)?;
        crate::rle::check_labels(labels)?;
        self.start_row(id, RowKind::Classification)?;
        write_labels(&mut self.out, labels)?;
        self.out.write_all(b"\n")?;
        self.rows += 1;
        Ok(())
    }

    /// Writes `{id}_segmentation,{RLE of the 20xHxW class stack}`.
    pub fn write_segmentation(&mut self, id: &str, mask: MaskView<'_>) -> Result<()> {
        check_id(id)?;
        self.runs.fill(mask)?;
        self.write_segmentation_runs(id)
    }

    /// Writes a segmentation row from runs already split per class (a model's prediction kept as runs).
    pub fn write_class_runs(&mut self, id: &str, runs: &ClassRuns) -> Result<()> {
        check_id(id)?;
        self.start_row(id, RowKind::Segmentation)?;
        runs.write_rle(&mut self.out)?;
        self.out.write_all(b"\n")?;
        self.rows += 1;
        Ok(())
    }

    fn write_segmentation_runs(&mut self, id: &str) -> Result<()> {
        self.start_row(id, RowKind::Segmentation)?;
        self.runs.write_rle(&mut self.out)?;
        self.out.write_all(b"\n")?;
        self.rows += 1;
        Ok(())
    }

    /// Writes both rows of one image. Both are checked before either is written.
    pub fn write_image(&mut self, id: &str, labels: &[u8], mask: MaskView<'_>) -> Result<()> {
        check_id(id)?;
        crate::rle::check_labels(labels)?;
        self.runs.fill(mask)?;
        self.write_classification(id, labels)?;
        self.write_segmentation_runs(id)
    }

    /// Rows written so far (two per image).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Flushes and returns the writer.
    pub fn into_inner(mut self) -> Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

impl SubmissionWriter<AtomicFile> {
    /// A submission written to `path` atomically: call [`SubmissionWriter::finish`] at the end.
    pub fn create(path: &Path) -> Result<Self> {
        Self::new(AtomicFile::create(path)?)
    }

    /// Moves the finished file into place; returns its path.
    pub fn finish(self) -> Result<PathBuf> {
        self.into_inner()?.commit()
    }
}
