//! Statistics and stratified splits.
use std::path::Path;

use voc_data::{stratified_split, CompetitionDir, LabelSet, LoadMode, SplitIndex, SplitStats};

/// The repository's own sample, `assets/voc-sample`: train 2 (horse) and 5 (chair and dog), with masks.
fn repository_train() -> SplitIndex {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/voc-sample");
    CompetitionDir::open(&dir).unwrap().split("train").unwrap()
}

#[test]
fn stats_of_the_repository_sample() {
    let train = repository_train();
    let stats = SplitStats::compute(&train).unwrap();
    assert_eq!(stats.images, 2);
    let horse = &stats.classes[12];
    assert_eq!(horse.images, 1);
    assert_eq!(horse.weight, Some(2.0 / (20.0 * 1.0)));
    assert_eq!(horse.pos_weight, Some(1.0));
    assert_eq!(stats.classes[1].pos_weight, None, "no bicycles");
    // Pixel shares from the masks: all classes plus background sum to 1.
    let total: f64 = stats
        .classes
        .iter()
        .map(|c| c.pixel_share.unwrap())
        .sum::<f64>()
        + stats.background_pixel_share.unwrap();
    assert!((total - 1.0).abs() < 1e-9);
    let mut pixels = [0u64; 21];
    for id in &train.ids {
        for &v in train.read_mask(id).unwrap().iter() {
            pixels[v as usize] += 1;
        }
    }
    let all: u64 = pixels.iter().sum();
    assert!(pixels[12] > 0, "dog pixels in train_5");
    assert_eq!(
        stats.classes[11].pixel_share,
        Some(pixels[12] as f64 / all as f64),
        "dog"
    );
    let w = stats.seg_weights.as_ref().unwrap();
    assert_eq!(w[2], 0.0, "no bicycle pixels");
    assert!((w[0] - all as f64 / (21.0 * pixels[0] as f64)).abs() < 1e-12);
    let json = serde_json::to_value(&stats).unwrap();
    assert_eq!(json["split"], "train");
    assert_eq!(json["classes"][12]["name"], "horse");
    assert_eq!(json["classes"][12]["images"], 1);
    assert!(stats.table().contains("horse"));
}

fn synthetic_labels(n: usize) -> Vec<LabelSet> {
    (0..n)
        .map(|i| {
            let mut l = LabelSet::EMPTY;
            l.insert(i % 20);
            if i % 3 == 0 {
                l.insert(14); // person: common
            }
            if i % 50 == 0 {
                l.insert((i / 50) % 20);
            }
            l
        })
        .collect()
}

#[test]
fn stratified_split_is_deterministic_and_balanced() {
    let labels = synthetic_labels(400);
    let (train, val) = stratified_split(&labels, 0.25, 5).unwrap();
    assert_eq!(train.len() + val.len(), 400);
    assert!(val.len().abs_diff(100) <= 2, "{} in validation", val.len());
    let mut all: Vec<usize> = train.iter().chain(&val).copied().collect();
    all.sort();
    assert_eq!(all, (0..400).collect::<Vec<_>>());
    for c in 0..20 {
        let total = labels.iter().filter(|l| l.contains(c)).count() as f64;
        let in_val = val.iter().filter(|&&i| labels[i].contains(c)).count() as f64;
        assert!(
            (in_val - total * 0.25).abs() <= (0.05 * total).max(2.0),
            "class {c}: {in_val} of {total} in validation"
        );
    }
    assert_eq!(
        stratified_split(&labels, 0.25, 5).unwrap(),
        (train.clone(), val.clone())
    );
    assert_ne!(stratified_split(&labels, 0.25, 6).unwrap().1, val);
    assert!(stratified_split(&labels, 1.0, 0).is_err());
    assert_eq!(stratified_split(&labels, 0.0, 0).unwrap().1.len(), 0);
}

#[test]
fn subsets_of_index_and_dataset() {
    let train = repository_train();
    let sub = train.subset(&[1, 0]).unwrap();
    assert_eq!(sub.ids, ["5", "2"]);
    assert_eq!(
        sub.labels.as_ref().unwrap()[0],
        train.labels.as_ref().unwrap()[1]
    );
    let data = train
        .load(LoadMode::Eager)
        .unwrap()
        .subset(&[1, 0])
        .unwrap();
    assert_eq!(data.get(0).unwrap().id, "5");
    assert!(train.subset(&[2]).is_err());
}

/// The loss weights: negatives / positives, and 1 (neutral) for a class in no image or in every image.
#[test]
fn pos_weights_for_a_loss() {
    // 4 images: person (14) in all, cat (7) in one, bird (2) in none.
    let labels: Vec<LabelSet> = (0..4)
        .map(|i| {
            if i == 0 {
                LabelSet::from_classes([7, 14])
            } else {
                LabelSet::from_classes([14])
            }
        })
        .collect::<Result<_, _>>()
        .unwrap();
    let weights = SplitStats::from_labels("train", &labels).pos_weights();
    assert_eq!(weights[7], 3.0);
    assert_eq!(
        weights[14], 1.0,
        "in every image: weight 0 would silence its positives"
    );
    assert_eq!(weights[2], 1.0, "in no image");
}
