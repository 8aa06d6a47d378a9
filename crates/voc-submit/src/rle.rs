//! Run-length encoding in the competition's format, and its inverse.
//!
//! A binary array is flattened in row-major order; every run of ones is written as its 1-based start
//! and its length, `start length start length ...`, separated by single spaces. An array of zeros is
//! the empty string. A segmentation row encodes the 20xHxW stack whose channel `c` is `mask == c + 1`,
//! flattened channel-first. Nothing here materialises that stack: a mask is scanned once into runs per
//! class, and runs are formatted straight into the writer.
use std::io::{self, Write};

use crate::error::{Result, RleError, SubmitError};
use crate::{CLASS_NAMES, NUM_CLASSES};

/// A run of ones in a flattened array: `start` is 0-based here (the text form is 1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Run {
    /// First position, 0-based.
    pub start: u64,
    /// Number of ones.
    pub len: u64,
}

impl Run {
    /// One past the last position of the run.
    pub fn end(self) -> u64 {
        self.start + self.len
    }
}

/// Formats runs into a writer, merging runs that touch so the text is the canonical encoding of the
/// array (runs from two channels of a stack touch when one plane ends and the next begins with ones).
struct RunSink<'w, W: Write + ?Sized> {
    out: &'w mut W,
    pending: Option<Run>,
    written: bool,
    digits: itoa::Buffer,
}

impl<'w, W: Write + ?Sized> RunSink<'w, W> {
    fn new(out: &'w mut W) -> Self {
        Self {
            out,
            pending: None,
            written: false,
            digits: itoa::Buffer::new(),
        }
    }

    #[inline]
    fn push(&mut self, run: Run) -> io::Result<()> {
        if run.len == 0 {
            return Ok(());
        }
        match &mut self.pending {
            Some(p) if p.end() == run.start => p.len += run.len,
            Some(p) if p.end() > run.start => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "runs out of order: a run at {} follows one ending at {}",
                        run.start,
                        p.end()
                    ),
                ))
            }
            Some(p) => {
                let done = *p;
                *p = run;
                self.emit(done)?;
            }
            None => self.pending = Some(run),
        }
        Ok(())
    }

    #[inline]
    fn emit(&mut self, run: Run) -> io::Result<()> {
        if self.written {
            self.out.write_all(b" ")?;
        }
        self.written = true;
        self.out
            .write_all(self.digits.format(run.start + 1).as_bytes())?;
        self.out.write_all(b" ")?;
        self.out.write_all(self.digits.format(run.len).as_bytes())
    }

    fn finish(mut self) -> io::Result<()> {
        if let Some(p) = self.pending.take() {
            self.emit(p)?;
        }
        Ok(())
    }
}

/// Writes runs (sorted, non-overlapping, 0-based starts) in the text form. Touching runs are merged;
/// runs out of order are an `InvalidInput` error rather than a wrong encoding.
pub fn write_runs<W: Write + ?Sized>(
    out: &mut W,
    runs: impl IntoIterator<Item = Run>,
) -> io::Result<()> {
    let mut sink = RunSink::new(out);
    for run in runs {
        sink.push(run)?;
    }
    sink.finish()
}

/// The runs of ones of a binary array.
pub fn runs_of_bits(bits: &[bool]) -> Vec<Run> {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < bits.len() {
        if bits[i] {
            let start = i;
            while i < bits.len() && bits[i] {
                i += 1;
            }
            runs.push(Run {
                start: start as u64,
                len: (i - start) as u64,
            });
        } else {
            i += 1;
        }
    }
    runs
}

/// The RLE text of a binary array.
pub fn encode_bits(bits: &[bool]) -> String {
    let mut out = Vec::new();
    write_runs(&mut out, runs_of_bits(bits))
        .expect("runs of a bit array are sorted; writing to a Vec cannot fail");
    String::from_utf8(out).expect("RLE text is ASCII")
}

/// Checks a label vector: 20 values, each 0 or 1, in the order of [`CLASS_NAMES`].
pub fn check_labels(labels: &[u8]) -> Result<()> {
    if labels.len() != NUM_CLASSES {
        return Err(SubmitError::SizeMismatch {
            what: "label vector (one 0/1 per class, aeroplane..tvmonitor)".into(),
            expected: NUM_CLASSES,
            actual: labels.len(),
        });
    }
    match labels.iter().position(|&v| v > 1) {
        Some(index) => Err(SubmitError::BadLabel {
            index,
            class: CLASS_NAMES[index],
            value: labels[index] as i64,
        }),
        None => Ok(()),
    }
}

/// The runs of a checked label vector.
pub fn runs_of_labels(labels: &[u8]) -> Result<Vec<Run>> {
    check_labels(labels)?;
    let bits: Vec<bool> = labels.iter().map(|&v| v == 1).collect();
    Ok(runs_of_bits(&bits))
}

/// Writes the classification RLE of 20 labels (0/1).
pub fn write_labels<W: Write + ?Sized>(out: &mut W, labels: &[u8]) -> Result<()> {
    write_runs(out, runs_of_labels(labels)?)?;
    Ok(())
}

/// The classification RLE of 20 labels: aeroplane=1, bus=1 gives `1 1 6 1`.
pub fn encode_labels(labels: &[u8]) -> Result<String> {
    let mut out = Vec::new();
    write_labels(&mut out, labels)?;
    Ok(String::from_utf8(out).expect("RLE text is ASCII"))
}

/// A borrowed HxW class-index mask in row-major order: 0 background, 1..=20 classes, 255 void
/// (counted as background).
#[derive(Debug, Clone, Copy)]
pub struct MaskView<'a> {
    data: &'a [u8],
    height: usize,
    width: usize,
}

impl<'a> MaskView<'a> {
    /// Wraps `data`, which must hold exactly `height * width` values ([`SubmitError::SizeMismatch`]
    /// otherwise). Values are checked when the mask is encoded.
    pub fn new(data: &'a [u8], height: usize, width: usize) -> Result<Self> {
        let expected = height
            .checked_mul(width)
            .ok_or_else(|| SubmitError::Invalid(format!("mask size {height}x{width} overflows")))?;
        if data.len() != expected {
            return Err(SubmitError::SizeMismatch {
                what: format!("mask of {height}x{width}"),
                expected,
                actual: data.len(),
            });
        }
        Ok(Self {
            data,
            height,
            width,
        })
    }

    /// The values, row-major.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// Rows.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Columns.
    pub fn width(&self) -> usize {
        self.width
    }
}

/// Index one past the run of `value` that contains `i - 1`, comparing eight bytes at a time: masks are
/// long runs, so most words are skipped whole.
#[inline]
fn run_end(data: &[u8], mut i: usize, value: u8) -> usize {
    let splat = u64::from_ne_bytes([value; 8]);
    while let Some(chunk) = data.get(i..i + 8) {
        let word = u64::from_ne_bytes(chunk.try_into().expect("slice of 8 bytes"));
        let diff = word ^ splat;
        if diff != 0 {
            let same = if cfg!(target_endian = "little") {
                diff.trailing_zeros()
            } else {
                diff.leading_zeros()
            };
            return i + (same / 8) as usize;
        }
        i += 8;
    }
    while i < data.len() && data[i] == value {
        i += 1;
    }
    i
}

/// The runs of each class of one mask, i.e. the segmentation row kept as runs per channel. Reuse one
/// value across masks ([`ClassRuns::fill`]) to keep its buffers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClassRuns {
    classes: [Vec<Run>; NUM_CLASSES],
    plane: u64,
}

impl ClassRuns {
    /// No runs, planes of 0 pixels.
    pub fn new() -> Self {
        Self::default()
    }

    /// Scans a mask into runs per class.
    pub fn from_mask(mask: MaskView<'_>) -> Result<Self> {
        let mut runs = Self::new();
        runs.fill(mask)?;
        Ok(runs)
    }

    /// Replaces the contents with the runs of `mask`. Values 21..=254 are an error naming the pixel;
    /// the contents are unspecified after an error.
    pub fn fill(&mut self, mask: MaskView<'_>) -> Result<()> {
        for class in &mut self.classes {
            class.clear();
        }
        self.plane = mask.data.len() as u64;
        let data = mask.data;
        let mut i = 0;
        while i < data.len() {
            let value = data[i];
            let start = i;
            i = run_end(data, i + 1, value);
            match value {
                voc_core::BACKGROUND | voc_core::VOID => {}
                class if voc_core::is_mask_value(class) => {
                    self.classes[value as usize - 1].push(Run {
                        start: start as u64,
                        len: (i - start) as u64,
                    })
                }
                _ => {
                    return Err(SubmitError::BadMaskValue {
                        value,
                        row: start / mask.width.max(1),
                        column: start % mask.width.max(1),
                    })
                }
            }
        }
        Ok(())
    }

    /// Splits runs of a flattened 20xHxW stack (`plane` = H*W) into runs per class; a run past the
    /// stack is [`SubmitError::Invalid`].
    pub fn from_stack_runs(runs: &[Run], plane: u64) -> Result<Self> {
        let mut out = Self {
            plane,
            ..Self::default()
        };
        for run in runs {
            let mut start = run.start;
            while start < run.end() {
                let class = (start / plane.max(1)) as usize;
                if class >= NUM_CLASSES || plane == 0 {
                    return Err(SubmitError::Invalid(format!(
                        "run at {} (length {}) is past the 20x{plane} stack",
                        run.start + 1,
                        run.len
                    )));
                }
                let base = class as u64 * plane;
                let end = run.end().min(base + plane);
                out.classes[class].push(Run {
                    start: start - base,
                    len: end - start,
                });
                start = end;
            }
        }
        Ok(out)
    }

    /// Pixels per plane (H*W).
    pub fn plane(&self) -> u64 {
        self.plane
    }

    /// Runs of class index `class` (0 = aeroplane), 0-based within the plane; panics for `class >= 20`.
    pub fn class(&self, class: usize) -> &[Run] {
        &self.classes[class]
    }

    /// Runs of the flattened 20xHxW stack, in order (runs touching across a plane boundary are not merged).
    pub fn stack_runs(&self) -> impl Iterator<Item = Run> + '_ {
        let plane = self.plane;
        self.classes.iter().enumerate().flat_map(move |(c, runs)| {
            let base = c as u64 * plane;
            runs.iter().map(move |r| Run {
                start: r.start + base,
                len: r.len,
            })
        })
    }

    /// Writes the segmentation RLE.
    pub fn write_rle<W: Write + ?Sized>(&self, out: &mut W) -> io::Result<()> {
        write_runs(out, self.stack_runs())
    }

    /// The segmentation RLE as a string.
    pub fn to_rle(&self) -> String {
        let mut out = Vec::new();
        self.write_rle(&mut out)
            .expect("class runs are sorted; writing to a Vec cannot fail");
        String::from_utf8(out).expect("RLE text is ASCII")
    }

    /// The class-index mask these runs describe (0 where no class is set). A pixel set in two channels
    /// has no class-index form and is an error naming it.
    pub fn to_mask(&self, height: usize, width: usize) -> Result<Vec<u8>> {
        if height.checked_mul(width).map(|p| p as u64) != Some(self.plane) {
            return Err(SubmitError::SizeMismatch {
                what: format!("a {height}x{width} mask from runs of planes of this many pixels"),
                expected: self.plane as usize,
                actual: height.saturating_mul(width),
            });
        }
        let mut mask = vec![0u8; height * width];
        for (c, runs) in self.classes.iter().enumerate() {
            for run in runs {
                let pixels = &mut mask[run.start as usize..run.end() as usize];
                if let Some(offset) = pixels.iter().position(|&v| v != 0) {
                    let at = run.start as usize + offset;
                    let other = pixels[offset] as usize - 1;
                    return Err(SubmitError::Invalid(format!(
                        "pixel at row {}, column {} is set in channel {other} ({}) and channel {c} ({}): a class mask has one class per pixel",
                        at / width.max(1),
                        at % width.max(1),
                        CLASS_NAMES[other],
                        CLASS_NAMES[c]
                    )));
                }
                pixels.fill(c as u8 + 1);
            }
        }
        Ok(mask)
    }
}

/// The segmentation RLE of a mask: `[[0,1],[2,1]]` gives `2 1 4 1 7 1`.
pub fn encode_mask(mask: MaskView<'_>) -> Result<String> {
    Ok(ClassRuns::from_mask(mask)?.to_rle())
}

/// Parses `start length ...` text into runs of an array of `size` values, checking every rule of the
/// format: integers separated by single spaces, an even count, positive starts and lengths, strictly
/// increasing non-overlapping runs, all inside the array.
pub fn parse_runs(rle: &str, size: u64) -> std::result::Result<Vec<Run>, RleError> {
    if rle.is_empty() {
        return Ok(Vec::new());
    }
    let mut values = Vec::with_capacity(rle.len() / 4);
    for (index, text) in rle.split(' ').enumerate() {
        let value = index + 1;
        if text.is_empty() {
            return Err(RleError::EmptyValue { value });
        }
        let mut number: u64 = 0;
        for &b in text.as_bytes() {
            let digit = b.wrapping_sub(b'0');
            if digit > 9 {
                return Err(RleError::NotANumber {
                    value,
                    text: text.to_string(),
                });
            }
            number = number
                .checked_mul(10)
                .and_then(|n| n.checked_add(digit as u64))
                .ok_or_else(|| RleError::NotANumber {
                    value,
                    text: text.to_string(),
                })?;
        }
        values.push(number);
    }
    if values.len() % 2 != 0 {
        return Err(RleError::OddCount {
            count: values.len(),
        });
    }
    let mut runs = Vec::with_capacity(values.len() / 2);
    let mut prev_end = 0u64;
    for (i, pair) in values.chunks_exact(2).enumerate() {
        let (start, len, run) = (pair[0], pair[1], i + 1);
        if start == 0 {
            return Err(RleError::ZeroStart { run });
        }
        if len == 0 {
            return Err(RleError::ZeroLength { run, start });
        }
        let start0 = start - 1;
        if run > 1 && start0 < prev_end {
            return Err(RleError::NotIncreasing {
                run,
                start,
                prev: run - 1,
                prev_end,
            });
        }
        let end = start0.checked_add(len).filter(|&e| e <= size);
        let Some(end) = end else {
            return Err(RleError::PastEnd {
                run,
                start,
                len,
                end: start0.saturating_add(len),
                size,
            });
        };
        runs.push(Run { start: start0, len });
        prev_end = end;
    }
    Ok(runs)
}

/// Decodes RLE text into a binary array of `len` values.
pub fn decode_bits(rle: &str, len: usize) -> std::result::Result<Vec<bool>, RleError> {
    let mut bits = vec![false; len];
    for run in parse_runs(rle, len as u64)? {
        bits[run.start as usize..run.end() as usize].fill(true);
    }
    Ok(bits)
}

/// Decodes a classification RLE into 20 labels (0/1).
pub fn decode_labels(rle: &str) -> std::result::Result<[u8; NUM_CLASSES], RleError> {
    let mut labels = [0u8; NUM_CLASSES];
    for run in parse_runs(rle, NUM_CLASSES as u64)? {
        labels[run.start as usize..run.end() as usize].fill(1);
    }
    Ok(labels)
}

/// Decodes a segmentation RLE into an HxW class-index mask (void comes back as background).
pub fn decode_mask(rle: &str, height: usize, width: usize) -> Result<Vec<u8>> {
    let plane = height
        .checked_mul(width)
        .filter(|p| p.checked_mul(NUM_CLASSES).is_some())
        .ok_or_else(|| SubmitError::Invalid(format!("mask size {height}x{width} overflows")))?
        as u64;
    let runs = parse_runs(rle, NUM_CLASSES as u64 * plane).map_err(|source| SubmitError::Rle {
        context: format!("segmentation RLE of a {height}x{width} mask"),
        source,
    })?;
    ClassRuns::from_stack_runs(&runs, plane)?.to_mask(height, width)
}
