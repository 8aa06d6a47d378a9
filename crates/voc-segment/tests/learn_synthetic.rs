//! The training step learns: DeepLabV3+ from random weights (batch norm in training mode, Adam) on a
//! synthetic segmentation task — coloured squares (class 1) and discs (class 2) on noise, 48x48 —
//! reaches a mIoU (background and both classes) of at least 0.9 on 16 held-out images in under two
//! minutes on two cores (about 140 steps of batch 8 and 75 s here; the last points are the shapes'
//! borders, which the decoder sees at stride 4).
use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use voc_core::metrics::SegmentationMetrics;
use voc_segment::train::{
    SegArch, SegBatchNorm, SegLearner, SegLearnerConfig, SegOptimizer, SegTrainable,
};
use voc_segment::DeepLabV3PlusConfig;

const SIZE: usize = 48;

/// A tiny deterministic generator (no rand in this crate's dev-dependencies).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }

    fn below(&mut self, n: usize) -> usize {
        ((self.next() * n as f32) as usize).min(n - 1)
    }
}

/// `n` images (`N x 3 x S x S`, values in [-1, 1]) and masks (`N x S x S`): noise, one square of
/// class 1 (reddish) and one disc of class 2 (greenish) at random places and sizes.
fn shapes(n: usize, rng: &mut Lcg) -> (Tensor, Tensor) {
    let plane = SIZE * SIZE;
    let mut pixels = vec![0f32; n * 3 * plane];
    let mut masks = vec![0u32; n * plane];
    for i in 0..n {
        for v in &mut pixels[i * 3 * plane..(i + 1) * 3 * plane] {
            *v = rng.next() * 1.2 - 0.6;
        }
        let mask = &mut masks[i * plane..(i + 1) * plane];
        // The square.
        let side = 10 + rng.below(10);
        let (top, left) = (rng.below(SIZE - side), rng.below(SIZE - side));
        for y in top..top + side {
            for x in left..left + side {
                mask[y * SIZE + x] = 1;
            }
        }
        // The disc, drawn over the square where they meet.
        let r = 5 + rng.below(6);
        let (cy, cx) = (r + rng.below(SIZE - 2 * r), r + rng.below(SIZE - 2 * r));
        for y in 0..SIZE {
            for x in 0..SIZE {
                let (dy, dx) = (y as f32 - cy as f32, x as f32 - cx as f32);
                if dy * dy + dx * dx <= (r * r) as f32 {
                    mask[y * SIZE + x] = 2;
                }
            }
        }
        for p in 0..plane {
            let colour = match mask[p] {
                1 => [0.9, -0.6, -0.6],
                2 => [-0.6, 0.9, -0.6],
                _ => continue,
            };
            for (c, v) in colour.iter().enumerate() {
                pixels[(i * 3 + c) * plane + p] = v + 0.2 * (rng.next() - 0.5);
            }
        }
    }
    let device = Device::Cpu;
    (
        Tensor::from_vec(pixels, (n, 3, SIZE, SIZE), &device).unwrap(),
        Tensor::from_vec(masks, (n, SIZE, SIZE), &device).unwrap(),
    )
}

#[test]
fn deeplabv3plus_learns_shapes_on_noise() -> anyhow::Result<()> {
    const MAX_STEPS: usize = 250;
    let started = Instant::now();
    let mut rng = Lcg(7);
    let config = SegLearnerConfig {
        optimizer: SegOptimizer::Adam,
        lr: 5e-3,
        weight_decay: 0.0,
        bn: SegBatchNorm::All,
        class_weight: None,
        dice_weight: 0.0,
    };
    let arch = SegArch::DeepLabV3Plus(DeepLabV3PlusConfig::default());
    let mut learner = SegLearner::new(
        arch,
        HashMap::new(),
        SegTrainable::All,
        1,
        &config,
        &Device::Cpu,
    )?;
    let (val_x, val_y) = shapes(16, &mut Lcg(99));
    let score = |learner: &SegLearner| -> anyhow::Result<f64> {
        // Eval mode, the whole held-out set in one batch: argmax labels against the masks.
        let pred = learner
            .logits(&val_x, false)?
            .argmax(1)?
            .to_dtype(DType::U8)?;
        let mut metrics = SegmentationMetrics::new();
        let truth: Vec<u8> = val_y.to_dtype(DType::U8)?.flatten_all()?.to_vec1()?;
        let pred: Vec<u8> = pred.flatten_all()?.to_vec1()?;
        metrics.add_image(&truth, &pred)?;
        Ok(metrics.mean_iou().unwrap_or(0.0))
    };
    let mut miou = 0.0;
    let mut steps = 0;
    // Bounded by steps, not time: the run is deterministic (seeded data and weights) and reaches 0.9
    // at step 140; a time bound failed on a loaded machine (106 steps in 115 s).
    while steps < MAX_STEPS {
        let (x, y) = shapes(8, &mut rng);
        learner.step(&x, &y)?;
        steps += 1;
        if steps % 10 == 0 {
            miou = score(&learner)?;
            eprintln!(
                "step {steps}: val mIoU {miou:.3} at {:.0?}",
                started.elapsed()
            );
            if miou >= 0.9 {
                break;
            }
        }
    }
    assert!(
        miou >= 0.9,
        "val mIoU {miou:.3} after {steps} steps in {:.0?}",
        started.elapsed()
    );
    Ok(())
}
