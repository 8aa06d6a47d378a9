//! The competition's file layout:
//!
//! ```text
//! DIR/train/train_set.csv        Id + the 20 class columns (0/1), any column order
//! DIR/train/img/train_{Id}.npy   HxWx3 uint8
//! DIR/train/seg/train_{Id}.npy   HxW, uint8/int8/int32/int64, 0 = background, 1..=20 classes, 255 void
//! DIR/test/test_set.csv          labels all -1
//! DIR/test/img/test_{Id}.npy
//! ```
//! A split is labelled for segmentation when its `seg/` folder exists.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ndarray::{Array2, Array3};
use rayon::prelude::*;

use crate::error::{DataError, Result};
use crate::{npy, LabelSet, CLASS_NAMES, NUM_CLASSES};

/// A competition data folder holding `train/` and/or `test/`.
///
/// ```
/// use voc_data::CompetitionDir;
///
/// // The repository's sample (path relative to this crate): train Ids 2 and 5 with masks, test Id 1.
/// let dir = CompetitionDir::open("../../assets/voc-sample".as_ref())?;
/// let train = dir.split("train")?;
/// assert_eq!(train.ids, ["2", "5"]);
/// assert!(train.has_masks);
/// let test = dir.split("test")?;
/// assert!(test.labels.is_none() && !test.has_masks); // test labels are all -1
/// assert!(CompetitionDir::open("no/such/folder".as_ref()).is_err());
/// # Ok::<(), voc_data::DataError>(())
/// ```
#[derive(Debug, Clone)]
pub struct CompetitionDir {
    root: PathBuf,
}

impl CompetitionDir {
    /// Opens `root`; fails when it is not a folder.
    pub fn open(root: &Path) -> Result<Self> {
        if !root.is_dir() {
            return Err(DataError::Missing {
                path: root.to_path_buf(),
                what: "data folder (expected the competition layout: train/train_set.csv, train/img/, ...)".into(),
            });
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// The folder given to [`CompetitionDir::open`].
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Reads the CSV of split `name` ("train" or "test") and checks that its files exist; see
    /// [`SplitIndex::open`] for the errors.
    pub fn split(&self, name: &str) -> Result<SplitIndex> {
        SplitIndex::open(&self.root.join(name), name)
    }
}

/// The index of one split: ids in CSV order, labels, and where the arrays are. Reading pixels is separate.
///
/// ```
/// use voc_data::{CompetitionDir, CLASS_NAMES};
///
/// let train = CompetitionDir::open("../../assets/voc-sample".as_ref())?.split("train")?;
/// let labels = train.labels_of("5").expect("the train split is labelled"); // a voc_core::LabelSet
/// assert_eq!(labels.names().collect::<Vec<_>>(), ["chair", "dog"]);
/// assert!(labels.contains(CLASS_NAMES.iter().position(|&c| c == "dog").unwrap()));
/// assert_eq!(labels.to_flags().iter().filter(|&&f| f == 1).count(), 2);
/// assert_eq!(train.labels_of("no such Id"), None);
///
/// assert_eq!(train.image_size("5")?, (375, 500)); // from the .npy header alone
/// let sample = train.read_sample(train.position("5").unwrap())?;
/// assert_eq!(sample.image.dim(), (375, 500, 3));
/// assert_eq!(sample.mask.as_ref().map(|m| m.dim()), Some((375, 500)));
/// assert_eq!(sample.labels, Some(labels));
/// # Ok::<(), voc_data::DataError>(())
/// ```
#[derive(Debug, Clone)]
pub struct SplitIndex {
    /// The split's name and file prefix (`train` reads `train_set.csv` and `img/train_{Id}.npy`).
    pub name: String,
    /// Ids in CSV order.
    pub ids: Vec<String>,
    /// Per-id labels; `None` when every label in the CSV is -1 (unlabelled).
    pub labels: Option<Vec<LabelSet>>,
    /// Whether `seg/` exists (then every id has a mask).
    pub has_masks: bool,
    dir: PathBuf,
    csv_path: PathBuf,
}

/// One loaded example.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The Id, as in the CSV.
    pub id: String,
    /// HxWx3 uint8.
    pub image: Array3<u8>,
    /// HxW, 0..=20 and 255 (void).
    pub mask: Option<Array2<u8>>,
    /// The CSV labels, when the split is labelled.
    pub labels: Option<LabelSet>,
}

/// A CSV label that disagrees with what the mask shows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LabelMismatch {
    /// The image's Id.
    pub id: String,
    /// The class name, from [`CLASS_NAMES`].
    pub class: &'static str,
    /// The CSV's value (0/1).
    pub csv: u8,
    /// Whether the mask contains the class.
    pub in_mask: bool,
}

/// The largest label CSV voc reads (64 MiB, a million images): checked before reading, so a broken
/// or hostile file cannot take the memory.
pub const MAX_LABEL_CSV_BYTES: u64 = 64 << 20;

impl SplitIndex {
    /// Opens a split folder directly (`DIR/train`); `name` is the file prefix (`train` -> `train_set.csv`).
    ///
    /// Errors: [`DataError::Missing`] for the folder, `img/`, or an image (or, when `seg/` exists, a
    /// mask) of a listed Id; [`DataError::MissingColumn`] and [`DataError::BadCsvRow`] for the CSV, as
    /// [`parse_label_csv`] reports them.
    pub fn open(dir: &Path, name: &str) -> Result<Self> {
        if !dir.is_dir() {
            return Err(DataError::Missing {
                path: dir.to_path_buf(),
                what: format!("split folder '{name}'"),
            });
        }
        let csv_path = dir.join(format!("{name}_set.csv"));
        let len = std::fs::metadata(&csv_path)
            .map_err(|e| DataError::io(&csv_path, e))?
            .len();
        if len > MAX_LABEL_CSV_BYTES {
            return Err(DataError::BadArgument(format!(
                "{}: {len} bytes; a label CSV of 21 columns per image is far smaller (at most {MAX_LABEL_CSV_BYTES} bytes are read)",
                csv_path.display()
            )));
        }
        let text = std::fs::read_to_string(&csv_path).map_err(|e| DataError::io(&csv_path, e))?;
        let (ids, labels) = parse_label_csv(&text, &csv_path)?;
        let has_masks = dir.join("seg").is_dir();
        let index = Self {
            name: name.to_string(),
            ids,
            labels,
            has_masks,
            dir: dir.to_path_buf(),
            csv_path,
        };
        index.check_files_exist()?;
        Ok(index)
    }

    fn check_files_exist(&self) -> Result<()> {
        if !self.dir.join("img").is_dir() {
            return Err(DataError::Missing {
                path: self.dir.join("img"),
                what: "image folder".into(),
            });
        }
        for id in &self.ids {
            let img = self.image_path(id);
            if !img.is_file() {
                return Err(DataError::Missing {
                    path: img,
                    what: format!("image for Id {id} listed in {}", self.csv_path.display()),
                });
            }
            if self.has_masks {
                let seg = self.mask_path(id);
                if !seg.is_file() {
                    return Err(DataError::Missing {
                        path: seg,
                        what: format!(
                            "mask for Id {id} (the split has a seg/ folder, so every Id needs one)"
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// The split folder (`DIR/train`); empty for a [`Dataset::from_samples`] dataset.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The label CSV (`DIR/train/train_set.csv`).
    pub fn csv_path(&self) -> &Path {
        &self.csv_path
    }

    /// Number of Ids.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the split lists no Id.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// `DIR/{name}/img/{name}_{id}.npy` (whether or not it exists).
    pub fn image_path(&self, id: &str) -> PathBuf {
        self.dir.join("img").join(format!("{}_{id}.npy", self.name))
    }

    /// `DIR/{name}/seg/{name}_{id}.npy` (whether or not it exists).
    pub fn mask_path(&self, id: &str) -> PathBuf {
        self.dir.join("seg").join(format!("{}_{id}.npy", self.name))
    }

    /// Position of `id` in CSV order.
    pub fn position(&self, id: &str) -> Option<usize> {
        self.ids.iter().position(|i| i == id)
    }

    /// The split restricted to these positions (in the given order), e.g. one side of
    /// [`stratified_split`](crate::stratified_split); a position out of range is
    /// [`DataError::BadArgument`].
    pub fn subset(&self, positions: &[usize]) -> Result<SplitIndex> {
        if let Some(&bad) = positions.iter().find(|&&i| i >= self.len()) {
            return Err(DataError::BadArgument(format!(
                "position {bad} out of range: split '{}' has {} ids",
                self.name,
                self.len()
            )));
        }
        Ok(SplitIndex {
            ids: positions.iter().map(|&i| self.ids[i].clone()).collect(),
            labels: self
                .labels
                .as_ref()
                .map(|l| positions.iter().map(|&i| l[i]).collect()),
            ..self.clone()
        })
    }

    /// The CSV labels of `id`, when the split is labelled.
    pub fn labels_of(&self, id: &str) -> Option<LabelSet> {
        let i = self.position(id)?;
        self.labels.as_ref().map(|l| l[i])
    }

    /// HxWx3 uint8 image of `id`; [`DataError::BadArray`] when the file is not that.
    pub fn read_image(&self, id: &str) -> Result<Array3<u8>> {
        npy::read_image(&self.image_path(id))
    }

    /// The image of `id` as an [`voc_core::RgbImage`] (what the model crates take).
    pub fn read_rgb_image(&self, id: &str) -> Result<voc_core::RgbImage> {
        crate::image_io::rgb_from_array(self.read_image(id)?)
    }

    /// The mask of `id` as a [`voc_core::Mask`], checked against the size of its image (the size a
    /// submission row must have): [`DataError::SizeMismatch`] if they differ.
    pub fn read_checked_mask(&self, id: &str) -> Result<voc_core::Mask> {
        let mask = self.read_mask(id)?;
        let (mask_h, mask_w) = mask.dim();
        let (image_h, image_w) = self.image_size(id)?;
        if (mask_h, mask_w) != (image_h, image_w) {
            return Err(DataError::SizeMismatch {
                image: self.image_path(id),
                mask: self.mask_path(id),
                image_h,
                image_w,
                mask_h,
                mask_w,
            });
        }
        Ok(voc_core::Mask::new(
            mask_h,
            mask_w,
            crate::image_io::into_row_major(mask),
        )?)
    }

    /// HxW mask of `id` (values 0..=20, 255), from any integer dtype; [`DataError::Missing`] when the
    /// split has no masks, [`DataError::BadMaskValue`] for a value outside those.
    pub fn read_mask(&self, id: &str) -> Result<Array2<u8>> {
        if !self.has_masks {
            return Err(DataError::Missing {
                path: self.dir.join("seg"),
                what: format!("mask folder (split '{}' has no masks)", self.name),
            });
        }
        npy::read_mask(&self.mask_path(id))
    }

    /// (H, W) of the image of `id`, from the `.npy` header only; an image that is not HxWx3 uint8 is an
    /// error naming the file.
    pub fn image_size(&self, id: &str) -> Result<(usize, usize)> {
        let path = self.image_path(id);
        let h = npy::read_header(&path)?;
        if h.shape.len() != 3 || h.shape[2] != 3 {
            return Err(DataError::bad_array(
                &path,
                format!("image shape is {:?}; expected (H, W, 3)", h.shape),
            ));
        }
        if h.dtype != npy::NpyDtype::U8 {
            return Err(DataError::bad_array(
                &path,
                format!(
                    "image dtype is '{}'; expected uint8 ('|u1') of shape (H, W, 3)",
                    h.descr
                ),
            ));
        }
        Ok((h.shape[0], h.shape[1]))
    }

    /// Reads image, mask (when the split has masks) and labels of the `index`-th id, checking that image
    /// and mask have the same size ([`DataError::SizeMismatch`] if not).
    pub fn read_sample(&self, index: usize) -> Result<Sample> {
        let id = self.ids.get(index).ok_or_else(|| {
            DataError::BadArgument(format!(
                "sample {index} out of range: split '{}' has {} ids",
                self.name,
                self.len()
            ))
        })?;
        let image = self.read_image(id)?;
        let mask = if self.has_masks {
            let mask = self.read_mask(id)?;
            let (ih, iw) = (image.shape()[0], image.shape()[1]);
            let (mh, mw) = mask.dim();
            if (ih, iw) != (mh, mw) {
                return Err(DataError::SizeMismatch {
                    image: self.image_path(id),
                    mask: self.mask_path(id),
                    image_h: ih,
                    image_w: iw,
                    mask_h: mh,
                    mask_w: mw,
                });
            }
            Some(mask)
        } else {
            None
        };
        let labels = self.labels.as_ref().map(|l| l[index]);
        Ok(Sample {
            id: id.clone(),
            image,
            mask,
            labels,
        })
    }

    /// Reads every sample in parallel (rayon), in CSV order; the first error wins.
    pub fn load_all(&self) -> Result<Vec<Sample>> {
        (0..self.len())
            .into_par_iter()
            .map(|i| self.read_sample(i))
            .collect()
    }

    /// Opens the split as a [`Dataset`]: `Eager` reads everything now (in parallel), `Lazy` reads on access.
    pub fn load(&self, mode: LoadMode) -> Result<Dataset> {
        Dataset::new(self.clone(), mode)
    }

    /// Reads every mask (in parallel) and compares the CSV labels with the classes present. Disagreements
    /// are returned, not raised: the competition's own CSVs have a few.
    pub fn label_mismatches(&self) -> Result<Vec<LabelMismatch>> {
        let (Some(labels), true) = (&self.labels, self.has_masks) else {
            return Ok(Vec::new());
        };
        let per_id: Vec<Vec<LabelMismatch>> = self
            .ids
            .par_iter()
            .zip(labels.par_iter())
            .map(|(id, l)| Ok(mismatches(id, *l, mask_labels(&self.read_mask(id)?))))
            .collect::<Result<_>>()?;
        Ok(per_id.into_iter().flatten().collect())
    }
}

/// Compares `csv` labels with labels derived from a mask.
pub fn mismatches(id: &str, csv: LabelSet, from_mask: LabelSet) -> Vec<LabelMismatch> {
    (0..NUM_CLASSES)
        .filter(|&c| csv.contains(c) != from_mask.contains(c))
        .map(|c| LabelMismatch {
            id: id.to_string(),
            class: CLASS_NAMES[c],
            csv: u8::from(csv.contains(c)),
            in_mask: from_mask.contains(c),
        })
        .collect()
}

/// Which classes a mask contains (value v in 1..=20 is class v-1; 0 and 255 are ignored).
pub fn mask_labels(mask: &Array2<u8>) -> LabelSet {
    voc_core::image::labels_with_at_least(&voc_core::image::value_counts(mask), 0.0)
}

/// Parses a label CSV: `Id` plus the 20 class columns by name, in any order; extra columns are ignored.
/// Returns ids and labels (`None` when every label is -1).
pub fn parse_label_csv(text: &str, path: &Path) -> Result<(Vec<String>, Option<Vec<LabelSet>>)> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines.next().ok_or_else(|| DataError::BadCsvRow {
        path: path.to_path_buf(),
        line: 1,
        msg: "empty file; expected a header row".into(),
    })?;
    let columns: Vec<&str> = header
        .trim_start_matches('\u{feff}')
        .split(',')
        .map(|c| c.trim().trim_matches('"'))
        .collect();
    let expected = format!("({})", CLASS_NAMES.join(","));
    let find = |name: &str| {
        columns
            .iter()
            .position(|c| c.eq_ignore_ascii_case(name))
            .ok_or_else(|| DataError::MissingColumn {
                path: path.to_path_buf(),
                column: name.to_string(),
                expected: expected.clone(),
            })
    };
    let id_col = find("Id")?;
    let class_cols: Vec<usize> = CLASS_NAMES.iter().map(|c| find(c)).collect::<Result<_>>()?;
    let mut ids = Vec::new();
    let mut labels = Vec::new();
    let mut unlabelled_rows = 0usize;
    for (line_index, line) in lines {
        let line_no = line_index + 1;
        let bad = |msg: String| DataError::BadCsvRow {
            path: path.to_path_buf(),
            line: line_no,
            msg,
        };
        let fields: Vec<&str> = line
            .split(',')
            .map(|f| f.trim().trim_matches('"'))
            .collect();
        if fields.len() != columns.len() {
            return Err(bad(format!(
                "{} fields, header has {}",
                fields.len(),
                columns.len()
            )));
        }
        let id = fields[id_col];
        if id.is_empty() || id.contains(['/', '\\']) {
            return Err(bad(format!(
                "Id '{id}' is empty or contains a path separator"
            )));
        }
        let mut row = LabelSet::EMPTY;
        let mut minus_ones = 0;
        for (c, &col) in class_cols.iter().enumerate() {
            let v = fields[col];
            let parsed: f64 = v
                .parse()
                .map_err(|_| bad(format!("column {}: '{v}' is not a number", CLASS_NAMES[c])))?;
            if parsed == 1.0 {
                row.insert(c);
            } else if parsed == -1.0 {
                minus_ones += 1;
            } else if parsed != 0.0 {
                return Err(bad(format!(
                    "column {}: '{v}'; expected 0, 1 or -1 (unlabelled)",
                    CLASS_NAMES[c]
                )));
            };
        }
        if minus_ones == NUM_CLASSES {
            unlabelled_rows += 1;
        } else if minus_ones > 0 {
            return Err(bad(format!(
                "{minus_ones} of {NUM_CLASSES} labels are -1; a row is either all -1 (unlabelled) or all 0/1"
            )));
        }
        ids.push(id.to_string());
        labels.push(row);
    }
    if unlabelled_rows > 0 && unlabelled_rows != ids.len() {
        return Err(DataError::BadCsvRow {
            path: path.to_path_buf(),
            line: 0,
            msg: format!(
                "{unlabelled_rows} of {} rows are unlabelled (-1); expected all or none",
                ids.len()
            ),
        });
    }
    let mut seen = std::collections::HashSet::new();
    for id in &ids {
        if !seen.insert(id) {
            return Err(DataError::BadCsvRow {
                path: path.to_path_buf(),
                line: 0,
                msg: format!("Id '{id}' appears twice"),
            });
        }
    }
    let labels = (unlabelled_rows == 0 && !ids.is_empty()).then_some(labels);
    Ok((ids, labels))
}

/// How a [`Dataset`] reads its pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoadMode {
    /// Everything in memory up front (parallel read).
    #[default]
    Eager,
    /// Each sample read from disk when asked for.
    Lazy,
}

/// A split whose samples can be fetched by position, from memory (eager) or disk (lazy).
#[derive(Debug, Clone)]
pub struct Dataset {
    index: SplitIndex,
    samples: Option<Arc<Vec<Arc<Sample>>>>,
}

impl Dataset {
    /// The split's samples, read now in parallel (`Eager`, failing on the first bad file) or on each
    /// [`Dataset::get`] (`Lazy`).
    pub fn new(index: SplitIndex, mode: LoadMode) -> Result<Self> {
        let samples = match mode {
            LoadMode::Eager => Some(Arc::new(
                index.load_all()?.into_iter().map(Arc::new).collect(),
            )),
            LoadMode::Lazy => None,
        };
        Ok(Self { index, samples })
    }

    /// A dataset of samples already in memory (synthetic data, another reader).
    pub fn from_samples(name: &str, samples: Vec<Sample>) -> Self {
        let ids = samples.iter().map(|s| s.id.clone()).collect();
        let labels = samples.iter().map(|s| s.labels).collect::<Option<Vec<_>>>();
        let has_masks = !samples.is_empty() && samples.iter().all(|s| s.mask.is_some());
        let index = SplitIndex {
            name: name.into(),
            ids,
            labels,
            has_masks,
            dir: PathBuf::new(),
            csv_path: PathBuf::new(),
        };
        Self {
            index,
            samples: Some(Arc::new(samples.into_iter().map(Arc::new).collect())),
        }
    }

    /// The split's Ids and labels.
    pub fn index(&self) -> &SplitIndex {
        &self.index
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether there is no sample.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Whether the pixels are in memory (eager or [`Dataset::from_samples`]).
    pub fn is_eager(&self) -> bool {
        self.samples.is_some()
    }

    /// The `i`-th sample in CSV order: shared from memory, or read from disk now (lazy, with
    /// [`SplitIndex::read_sample`]'s errors); out of range is [`DataError::BadArgument`].
    pub fn get(&self, i: usize) -> Result<Arc<Sample>> {
        match &self.samples {
            Some(s) => s.get(i).cloned().ok_or_else(|| {
                DataError::BadArgument(format!(
                    "sample {i} out of range: dataset has {} samples",
                    s.len()
                ))
            }),
            None => self.index.read_sample(i).map(Arc::new),
        }
    }

    /// The dataset restricted to these positions (shares the loaded pixels).
    pub fn subset(&self, positions: &[usize]) -> Result<Dataset> {
        let index = self.index.subset(positions)?;
        let samples = self
            .samples
            .as_ref()
            .map(|s| Arc::new(positions.iter().map(|&i| s[i].clone()).collect()));
        Ok(Dataset { index, samples })
    }

    /// Compares CSV labels with mask contents for every sample.
    pub fn label_mismatches(&self) -> Result<Vec<LabelMismatch>> {
        match &self.samples {
            None => self.index.label_mismatches(),
            Some(samples) => Ok(samples
                .iter()
                .filter_map(|s| Some(mismatches(&s.id, s.labels?, mask_labels(s.mask.as_ref()?))))
                .flatten()
                .collect()),
        }
    }
}
