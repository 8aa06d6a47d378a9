//! Batches: shapes, every sample once per epoch, padding, determinism.
use candle_core::{DType, Device};
use ndarray::{Array2, Array3};
use voc_data::{AugmentConfig, BatchConfig, BatchLoader, Dataset, ResizeMode, Sample};

fn synthetic(n: usize) -> Dataset {
    let samples = (0..n)
        .map(|i| {
            let (h, w) = (20 + i % 7, 30 + (i * 3) % 11);
            let image =
                Array3::from_shape_fn((h, w, 3), |(y, x, c)| ((y * 7 + x * 3 + c + i) % 256) as u8);
            let mask = Array2::from_shape_fn((h, w), |(y, x)| ((y / 4 + x / 4 + i) % 21) as u8);
            let labels = voc_data::LabelSet::from_classes([i % 20]).unwrap();
            Sample {
                id: format!("s{i}"),
                image,
                mask: Some(mask),
                labels: Some(labels),
            }
        })
        .collect();
    Dataset::from_samples("train", samples)
}

fn loader(seed: u64, config: BatchConfig) -> BatchLoader {
    BatchLoader::new(synthetic(23), BatchConfig { seed, ..config }, Device::Cpu).unwrap()
}

fn aug_config() -> BatchConfig {
    BatchConfig {
        batch_size: 5,
        workers: 3,
        prefetch: 1,
        augment: AugmentConfig::segmentation(24),
        ..BatchConfig::default()
    }
}

#[test]
fn every_sample_once_per_epoch_with_shapes() {
    let loader = loader(7, aug_config());
    assert_eq!(loader.num_batches(), 5);
    for epoch in 0..2 {
        let mut seen = Vec::new();
        for batch in loader.epoch(epoch) {
            let batch = batch.unwrap();
            let n = batch.len();
            assert_eq!(batch.images.dims(), &[n, 3, 24, 24]);
            assert_eq!(batch.images.dtype(), DType::F32);
            assert_eq!(batch.labels.as_ref().unwrap().dims(), &[n, 20]);
            let masks = batch.masks.as_ref().unwrap();
            assert_eq!(
                (masks.dims(), masks.dtype()),
                (&[n, 24, 24][..], DType::U32)
            );
            let labels = batch.labels.as_ref().unwrap().to_vec2::<f32>().unwrap();
            for (row, &i) in labels.iter().zip(&batch.indices) {
                assert_eq!(row[i % 20], 1.0);
                assert_eq!(row.iter().sum::<f32>(), 1.0);
            }
            seen.extend(batch.indices);
        }
        let mut sorted = seen.clone();
        sorted.sort();
        assert_eq!(sorted, (0..23).collect::<Vec<_>>(), "epoch {epoch}");
        assert_ne!(seen, (0..23).collect::<Vec<_>>(), "shuffled");
    }
    assert_ne!(
        loader.order(0),
        loader.order(1),
        "each epoch has its own order"
    );
}

fn collect(loader: &BatchLoader, epoch: usize) -> Vec<(Vec<f32>, Vec<u32>, Vec<usize>)> {
    loader
        .epoch(epoch)
        .map(|b| {
            let b = b.unwrap();
            let images = b.images.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let masks = b
                .masks
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<u32>()
                .unwrap();
            (images, masks, b.indices)
        })
        .collect()
}

#[test]
fn same_seed_bit_identical_different_seed_differs() {
    let a = collect(&loader(11, aug_config()), 3);
    let b = collect(
        &loader(
            11,
            BatchConfig {
                workers: 1,
                prefetch: 4,
                ..aug_config()
            },
        ),
        3,
    );
    assert_eq!(a, b, "worker count and timing must not change the batches");
    let c = collect(&loader(12, aug_config()), 3);
    assert_ne!(a, c);
    assert!(
        a.iter().zip(&c).any(|(x, y)| x.0 != y.0 && x.2 == y.2)
            || a.iter().zip(&c).any(|(x, y)| x.2 != y.2)
    );
}

#[test]
fn pads_to_multiple_of_32_and_records_sizes() {
    let config = BatchConfig {
        batch_size: 4,
        shuffle: false,
        pad_multiple: Some(32),
        normalize: voc_core::Normalization::MINUS_ONE_TO_ONE,
        augment: AugmentConfig::eval(ResizeMode::Keep),
        ..BatchConfig::default()
    };
    let loader = loader(0, config);
    let dataset = synthetic(23);
    let batch = loader.epoch(0).next().unwrap().unwrap();
    assert_eq!(batch.indices, vec![0, 1, 2, 3]);
    let (ph, pw) = batch.padded_size().unwrap();
    assert_eq!((ph % 32, pw % 32), (0, 0));
    let masks = batch.masks.as_ref().unwrap();
    for (k, &(h, w)) in batch.sizes.iter().enumerate() {
        let sample = dataset.get(k).unwrap();
        assert_eq!((h, w), (sample.image.shape()[0], sample.image.shape()[1]));
        let m = masks.get(k).unwrap().to_vec2::<u32>().unwrap();
        assert_eq!(
            m[h - 1][w - 1],
            sample.mask.as_ref().unwrap()[[h - 1, w - 1]] as u32
        );
        assert_eq!(m[h][0], 255, "padding rows are void");
        assert_eq!(m[0][w], 255, "padding columns are void");
        let img = batch.images.get(k).unwrap().to_vec3::<f32>().unwrap();
        assert_eq!(img[1][2][3], sample.image[[2, 3, 1]] as f32 / 127.5 - 1.0);
        assert_eq!(img[0][h][0], 0.0);
    }
}

#[test]
fn drop_last_and_early_drop_of_the_iterator() {
    let loader = loader(
        1,
        BatchConfig {
            drop_last: true,
            ..aug_config()
        },
    );
    assert_eq!(loader.num_batches(), 4);
    assert_eq!(loader.epoch(0).count(), 4);
    let mut it = loader.epoch(1);
    assert!(it.next().unwrap().is_ok());
    drop(it); // must not hang on workers blocked on a full queue
}

#[test]
fn unlabelled_dataset_has_no_label_tensor() {
    let samples = (0..3)
        .map(|i| Sample {
            id: i.to_string(),
            image: Array3::zeros((8, 8, 3)),
            mask: None,
            labels: None,
        })
        .collect();
    let loader = BatchLoader::new(
        Dataset::from_samples("test", samples),
        BatchConfig::default(),
        Device::Cpu,
    )
    .unwrap();
    let batch = loader.epoch(0).next().unwrap().unwrap();
    assert!(batch.labels.is_none() && batch.masks.is_none());
    assert_eq!(batch.images.dims(), &[3, 3, 8, 8]);
}

/// Copy-paste: with probability 1 every sample gets another sample's object pixels (image and mask
/// together), background pixels stay its own, and the result is the same for the same seed.
#[test]
fn copy_paste_pastes_objects_with_their_masks() {
    // Two samples: a background-only image of grey 10 and an image of grey 200 with a class-7 square.
    let blank = Sample {
        id: "blank".into(),
        image: Array3::from_elem((16, 16, 3), 10),
        mask: Some(Array2::zeros((16, 16))),
        labels: None,
    };
    let mut mask = Array2::zeros((16, 16));
    mask.slice_mut(ndarray::s![4..8, 4..8]).fill(7);
    let object = Sample {
        id: "object".into(),
        image: Array3::from_elem((16, 16, 3), 200),
        mask: Some(mask),
        labels: None,
    };
    let dataset = Dataset::from_samples("train", vec![blank, object]);
    let make = |copy_paste: f32| {
        let loader = BatchLoader::new(
            dataset.clone(),
            BatchConfig {
                batch_size: 2,
                shuffle: false,
                workers: 1,
                augment: AugmentConfig::eval(ResizeMode::Keep),
                normalize: voc_core::Normalization::ZERO_ONE,
                copy_paste,
                ..BatchConfig::default()
            },
            Device::Cpu,
        )
        .unwrap();
        let batch = loader.epoch(0).next().unwrap().unwrap();
        let masks = batch.masks.unwrap().to_vec3::<u32>().unwrap();
        let pixels = batch
            .images
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        (masks, pixels)
    };
    let (masks, pixels) = make(0.0);
    assert!(
        masks[0].iter().flatten().all(|&v| v == 0),
        "no paste at p = 0"
    );
    let (masks, pixels_pasted) = make(1.0);
    // The blank sample (first) got the square with its pixels; outside it stays its own.
    let plane = 16 * 16;
    for y in 0..16 {
        for x in 0..16 {
            let inside = (4..8).contains(&y) && (4..8).contains(&x);
            assert_eq!(masks[0][y][x], if inside { 7 } else { 0 }, "({y}, {x})");
            let expected = if inside { 200.0 / 255.0 } else { 10.0 / 255.0 };
            assert!((pixels_pasted[y * 16 + x] - expected).abs() < 1e-6);
            assert!((pixels_pasted[2 * plane + y * 16 + x] - expected).abs() < 1e-6);
        }
    }
    // The object sample pasted the blank one's objects: none, so it is unchanged.
    assert_eq!(masks[1][5][5], 7);
    assert_eq!(pixels_pasted[3 * plane..], pixels[3 * plane..]);
    assert_eq!(make(1.0).1, pixels_pasted, "the same seed pastes the same");
}
