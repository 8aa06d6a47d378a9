//! Writing `submission.csv`: streaming rows into any writer, and an atomic file target.
use std::io::Write;
use std::path::{Path, PathBuf};

use voc_core::AtomicFile;

use crate::error::{Result, SubmitError};
use crate::reader::RowKind;
use crate::rle::{write_labels, ClassRuns, MaskView};

/// The header line of a submission.
pub const HEADER: &str = "Id,Predicted";

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
///
/// ```
/// use voc_submit::{MaskView, SubmissionWriter};
///
/// let mut labels = [0u8; 20];
/// labels[0] = 1; // aeroplane
/// let mask = [0u8, 1, 1, 255]; // 2x2: aeroplane at (0, 1) and (1, 0), void counts as background
///
/// let mut writer = SubmissionWriter::new(Vec::new())?;
/// writer.write_image("17", &labels, MaskView::new(&mask, 2, 2)?)?;
/// assert!(writer.write_classification("18", &[2; 20]).is_err()); // checked first: nothing written
/// assert_eq!(writer.rows(), 2);
/// let bytes = writer.into_inner()?;
/// assert_eq!(
///     String::from_utf8(bytes).unwrap(),
///     "Id,Predicted\n17_classification,1 1\n17_segmentation,2 2\n"
/// );
///
/// // To a file: written under a temporary name, renamed into place by `finish`.
/// let dir = tempfile::tempdir()?;
/// let mut writer = SubmissionWriter::create(&dir.path().join("submission.csv"))?;
/// writer.write_image("17", &labels, MaskView::new(&mask, 2, 2)?)?;
/// let path = writer.finish()?;
/// assert!(std::fs::read_to_string(path)?.ends_with("17_segmentation,2 2\n"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct SubmissionWriter<W: Write> {
    out: W,
    runs: ClassRuns,
    rows: usize,
}

impl<W: Write> SubmissionWriter<W> {
    /// Writes the header to `out`; then rows follow.
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
    /// Dropped without it, the temporary file is removed and `path` is left as it was.
    pub fn create(path: &Path) -> Result<Self> {
        Self::new(AtomicFile::create(path)?)
    }

    /// Moves the finished file into place; returns its path.
    pub fn finish(self) -> Result<PathBuf> {
        Ok(self.into_inner()?.commit()?)
    }
}
