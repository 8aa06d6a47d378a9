//! Batches as candle tensors, prepared by worker threads ahead of the consumer.
//!
//! Each epoch shuffles the sample order from `(seed, epoch)`, and each sample's augmentation is seeded from
//! `(seed, epoch, sample index)`, so batches are bit-identical for the same seed whatever the thread timing.
//! Worker `w` prepares batches `w, w + workers, ...` into its own bounded queue
//! (`std::sync::mpsc::sync_channel(prefetch)`), and the iterator takes them round-robin: order is fixed and
//! at most `workers * prefetch` batches wait in memory.
use std::sync::mpsc::{sync_channel, Receiver};
use std::thread::JoinHandle;

use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use voc_core::Normalization;

use crate::augment::{write_chw, AugmentConfig};
use crate::competition::Dataset;
use crate::error::{DataError, Result};
use crate::{NUM_CLASSES, VOID};

/// How batches are made.
#[derive(Debug, Clone)]
pub struct BatchConfig {
    /// Samples per batch (at least 1).
    pub batch_size: usize,
    /// Shuffle the order every epoch (from `seed` and the epoch number).
    pub shuffle: bool,
    /// Drop a last batch smaller than `batch_size`.
    pub drop_last: bool,
    /// Seed of the shuffles and of every sample's augmentation.
    pub seed: u64,
    /// Worker threads (at least 1).
    pub workers: usize,
    /// Batches each worker may have ready ahead of the consumer.
    pub prefetch: usize,
    /// Pad H and W of every batch up to a multiple of this (e.g. 32 for stride-32 networks); padding is
    /// image 0 (after normalisation) and mask 255, and [`Batch::sizes`] records each sample's real size.
    pub pad_multiple: Option<usize>,
    /// Augmentation of each sample, seeded by [`sample_seed`].
    pub augment: AugmentConfig,
    /// How pixels become inputs (voc-core's presets: `IMAGENET`, `MINUS_ONE_TO_ONE`, `ZERO_ONE`).
    pub normalize: Normalization,
    /// Include masks (as u32) when the dataset has them.
    pub masks: bool,
    /// Copy-paste augmentation (Ghiasi et al. 2021): with this probability, a sample gets the object
    /// pixels (mask 1..=20) of another sample of the dataset, augmented on its own, pasted over it,
    /// image and mask alike. Needs masks; 0 turns it off.
    pub copy_paste: f32,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            batch_size: 16,
            shuffle: true,
            drop_last: false,
            seed: 0,
            workers: 2,
            prefetch: 2,
            pad_multiple: None,
            augment: AugmentConfig::default(),
            normalize: Normalization::IMAGENET,
            masks: true,
            copy_paste: 0.0,
        }
    }
}

/// One batch.
#[derive(Debug, Clone)]
pub struct Batch {
    /// [N, 3, H, W] f32, normalised.
    pub images: Tensor,
    /// [N, 20] f32 0/1, when the dataset is labelled.
    pub labels: Option<Tensor>,
    /// [N, H, W] u32 with 0..=20 and 255 (void), when the dataset has masks and masks were asked for.
    pub masks: Option<Tensor>,
    /// Sample positions in the dataset (CSV order).
    pub indices: Vec<usize>,
    /// Sample Ids, in batch order.
    pub ids: Vec<String>,
    /// Each sample's (height, width) before padding: crop predictions with `[..h, ..w]`.
    pub sizes: Vec<(usize, usize)>,
}

impl Batch {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// Whether the batch has no sample.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// (H, W) of the batch tensors, padding included.
    pub fn padded_size(&self) -> Result<(usize, usize)> {
        let (_, _, h, w) = self.images.dims4()?;
        Ok((h, w))
    }
}

/// Makes batches of a [`Dataset`].
///
/// ```
/// use candle_core::{DType, Device};
/// use ndarray::{Array2, Array3};
/// use voc_data::{AugmentConfig, BatchConfig, BatchLoader, Dataset, LabelSet, ResizeMode, Sample};
///
/// // Five in-memory samples of different sizes, each a "cat" (mask value 8) on background.
/// let cat = LabelSet::from_classes([7])?;
/// let samples: Vec<Sample> = (0..5)
///     .map(|i| Sample {
///         id: i.to_string(),
///         image: Array3::from_elem((40 + 10 * i, 60, 3), 100u8),
///         mask: Some(Array2::from_elem((40 + 10 * i, 60), 8u8)),
///         labels: Some(cat),
///     })
///     .collect();
/// let config = BatchConfig {
///     batch_size: 2,
///     augment: AugmentConfig::eval(ResizeMode::Stretch { height: 32, width: 32 }),
///     ..BatchConfig::default()
/// };
/// let loader = BatchLoader::new(Dataset::from_samples("toy", samples), config, Device::Cpu)?;
/// assert_eq!(loader.num_batches(), 3); // 2 + 2 + 1
/// let mut seen = 0;
/// for batch in loader.epoch(0) {
///     let batch = batch?;
///     let n = batch.len();
///     assert_eq!(batch.images.dims(), [n, 3, 32, 32]);
///     assert_eq!(batch.labels.as_ref().unwrap().dims(), [n, 20]);
///     let masks = batch.masks.as_ref().unwrap();
///     assert_eq!(masks.dims(), [n, 32, 32]);
///     assert_eq!(masks.dtype(), DType::U32);
///     seen += n;
/// }
/// assert_eq!(seen, 5);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct BatchLoader {
    dataset: Dataset,
    config: BatchConfig,
    device: Device,
}

/// A 64-bit mix (splitmix64) so nearby (seed, epoch, index) triples give unrelated streams.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The augmentation seed of sample `index` in `epoch`.
pub fn sample_seed(seed: u64, epoch: usize, index: usize) -> u64 {
    mix(mix(mix(seed) ^ epoch as u64) ^ index as u64)
}

impl BatchLoader {
    /// A loader putting its tensors on `device`; a batch size or pad multiple of 0 is
    /// [`DataError::BadArgument`].
    pub fn new(dataset: Dataset, config: BatchConfig, device: Device) -> Result<Self> {
        if config.batch_size == 0 {
            return Err(DataError::BadArgument(
                "batch size must be at least 1".into(),
            ));
        }
        if config.pad_multiple == Some(0) {
            return Err(DataError::BadArgument(
                "pad multiple must be at least 1".into(),
            ));
        }
        Ok(Self {
            dataset,
            config,
            device,
        })
    }

    /// The dataset batches are made of.
    pub fn dataset(&self) -> &Dataset {
        &self.dataset
    }

    /// How batches are made.
    pub fn config(&self) -> &BatchConfig {
        &self.config
    }

    /// Batches per epoch.
    pub fn num_batches(&self) -> usize {
        let n = self.dataset.len();
        if self.config.drop_last {
            n / self.config.batch_size
        } else {
            n.div_ceil(self.config.batch_size)
        }
    }

    /// Sample order of `epoch`.
    pub fn order(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.dataset.len()).collect();
        if self.config.shuffle {
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(
                mix(self.config.seed) ^ mix(epoch as u64 + 1),
            ));
        }
        order
    }

    /// Builds the batch of these sample positions on the calling thread, augmented as in `epoch`; a
    /// sample that cannot be read or a tensor error fails it.
    pub fn make_batch(&self, epoch: usize, indices: &[usize]) -> Result<Batch> {
        make_batch(&self.dataset, &self.config, &self.device, epoch, indices)
    }

    /// Iterates over the batches of `epoch`, prepared by `workers` threads. A failed batch is yielded as
    /// its error and ends the iteration.
    pub fn epoch(&self, epoch: usize) -> EpochIter {
        let order = self.order(epoch);
        let bs = self.config.batch_size;
        let chunks: Vec<Vec<usize>> = order
            .chunks(bs)
            .filter(|c| !self.config.drop_last || c.len() == bs)
            .map(|c| c.to_vec())
            .collect();
        let total = chunks.len();
        let workers = self.config.workers.max(1).min(total.max(1));
        let mut receivers = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        let chunks = std::sync::Arc::new(chunks);
        for w in 0..workers {
            let (tx, rx) = sync_channel::<Result<Batch>>(self.config.prefetch.max(1));
            receivers.push(rx);
            let (dataset, config, device, chunks) = (
                self.dataset.clone(),
                self.config.clone(),
                self.device.clone(),
                chunks.clone(),
            );
            let handle = std::thread::Builder::new()
                .name(format!("voc-data-worker-{w}"))
                .spawn(move || {
                    for b in (w..chunks.len()).step_by(workers) {
                        let batch = make_batch(&dataset, &config, &device, epoch, &chunks[b]);
                        let failed = batch.is_err();
                        // The consumer has gone (dropped the iterator): stop quietly.
                        if tx.send(batch).is_err() || failed {
                            return;
                        }
                    }
                })
                .expect("spawning a worker thread");
            handles.push(handle);
        }
        EpochIter {
            receivers,
            handles,
            next: 0,
            total,
        }
    }
}

/// The batches of one epoch, in order. Dropping it stops the workers.
pub struct EpochIter {
    receivers: Vec<Receiver<Result<Batch>>>,
    handles: Vec<JoinHandle<()>>,
    next: usize,
    total: usize,
}

impl EpochIter {
    /// Batches still to come.
    pub fn remaining(&self) -> usize {
        self.total - self.next
    }
}

impl Iterator for EpochIter {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if self.next >= self.total {
            return None;
        }
        let rx = &self.receivers[self.next % self.receivers.len()];
        self.next += 1;
        match rx.recv() {
            Ok(batch) => {
                if batch.is_err() {
                    self.next = self.total;
                }
                Some(batch)
            }
            Err(_) => {
                self.next = self.total;
                Some(Err(DataError::BadArgument(
                    "a batch worker thread stopped unexpectedly".into(),
                )))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining(), Some(self.remaining()))
    }
}

impl Drop for EpochIter {
    fn drop(&mut self) {
        self.receivers.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// Copy-paste: with probability `config.copy_paste` (drawn from `seed`), the object pixels of another
/// sample (chosen from `seed`, augmented with its own seed) overwrite `image` and `mask` where the two
/// canvases overlap (top-left aligned).
fn paste_objects(
    dataset: &Dataset,
    config: &BatchConfig,
    epoch: usize,
    index: usize,
    seed: u64,
    image: &mut ndarray::Array3<u8>,
    mask: &mut ndarray::Array2<u8>,
) -> Result<()> {
    use rand::Rng;
    if config.copy_paste <= 0.0 || dataset.len() < 2 {
        return Ok(());
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xC0FF_EE00_C0FF_EE00);
    if rng.gen::<f32>() >= config.copy_paste {
        return Ok(());
    }
    let mut other = rng.gen_range(0..dataset.len() - 1);
    if other >= index {
        other += 1;
    }
    let donor = dataset.get(other)?;
    let Some(donor_mask) = donor.mask.as_ref() else {
        return Ok(());
    };
    let donor_seed = sample_seed(config.seed, epoch, other) ^ rng.gen::<u64>();
    let (donor_image, donor_mask) =
        config
            .augment
            .augment(donor.image.view(), Some(donor_mask.view()), donor_seed);
    let donor_mask = donor_mask.expect("a mask in gives a mask out");
    let h = mask.dim().0.min(donor_mask.dim().0);
    let w = mask.dim().1.min(donor_mask.dim().1);
    for y in 0..h {
        for x in 0..w {
            let class = donor_mask[(y, x)];
            if class != 0 && class != VOID {
                mask[(y, x)] = class;
                for c in 0..3 {
                    image[(y, x, c)] = donor_image[(y, x, c)];
                }
            }
        }
    }
    Ok(())
}

fn make_batch(
    dataset: &Dataset,
    config: &BatchConfig,
    device: &Device,
    epoch: usize,
    indices: &[usize],
) -> Result<Batch> {
    let with_masks = config.masks && dataset.index().has_masks;
    let mut images = Vec::with_capacity(indices.len());
    let mut masks = Vec::with_capacity(indices.len());
    let mut labels = Vec::with_capacity(indices.len() * NUM_CLASSES);
    let mut ids = Vec::with_capacity(indices.len());
    let mut has_labels = true;
    for &i in indices {
        let sample = dataset.get(i)?;
        let mask = if with_masks {
            sample.mask.as_ref().map(|m| m.view())
        } else {
            None
        };
        let seed = sample_seed(config.seed, epoch, i);
        let (mut image, mut mask) = config.augment.augment(sample.image.view(), mask, seed);
        if let Some(m) = mask.as_mut() {
            paste_objects(dataset, config, epoch, i, seed, &mut image, m)?;
        }
        images.push(image);
        masks.push(mask);
        match sample.labels {
            Some(l) => labels.extend(l.to_flags().iter().map(|&v| v as f32)),
            None => has_labels = false,
        }
        ids.push(sample.id.clone());
    }
    let sizes: Vec<(usize, usize)> = images
        .iter()
        .map(|im| (im.shape()[0], im.shape()[1]))
        .collect();
    let round = |x: usize| config.pad_multiple.map_or(x, |m| x.div_ceil(m) * m);
    let ph = round(sizes.iter().map(|s| s.0).max().unwrap_or(0));
    let pw = round(sizes.iter().map(|s| s.1).max().unwrap_or(0));
    let n = indices.len();
    let mut pixels = vec![0f32; n * 3 * ph * pw];
    for (im, out) in images.iter().zip(pixels.chunks_exact_mut(3 * ph * pw)) {
        write_chw(&config.normalize, im.view(), out, ph, pw);
    }
    let images_t = Tensor::from_vec(pixels, (n, 3, ph, pw), &Device::Cpu)?.to_device(device)?;
    let masks_t = if with_masks {
        let mut all = vec![VOID as u32; n * ph * pw];
        for (m, out) in masks.iter().zip(all.chunks_exact_mut(ph * pw)) {
            let m = m
                .as_ref()
                .expect("every sample of a masked split has a mask");
            let (h, w) = m.dim();
            for (y, row) in m.outer_iter().enumerate() {
                for (d, &v) in out[y * pw..y * pw + w].iter_mut().zip(row.iter()) {
                    *d = v as u32;
                }
            }
            debug_assert!(h <= ph);
        }
        Some(Tensor::from_vec(all, (n, ph, pw), &Device::Cpu)?.to_device(device)?)
    } else {
        None
    };
    let labels_t = if has_labels && n > 0 {
        Some(Tensor::from_vec(labels, (n, NUM_CLASSES), &Device::Cpu)?.to_device(device)?)
    } else {
        None
    };
    Ok(Batch {
        images: images_t,
        labels: labels_t,
        masks: masks_t,
        indices: indices.to_vec(),
        ids,
        sizes,
    })
}
