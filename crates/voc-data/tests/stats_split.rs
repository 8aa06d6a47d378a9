//! Statistics and stratified splits.
use voc_data::{stratified_split, CompetitionDir, Labels, LoadMode, SplitStats};

#[test]
fn stats_of_shared_sample() {
    let Some(shared) = voc_tensor::testing::shared_or_skip("stats_of_shared_sample") else {
        return;
    };
    let train = CompetitionDir::open(&shared.join("data/voc-sample"))
        .unwrap()
        .split("train")
        .unwrap();
    let stats = SplitStats::compute(&train).unwrap();
    assert_eq!(stats.images, 6);
    let aeroplane = &stats.classes[0];
    assert_eq!(aeroplane.images, 2);
    assert_eq!(aeroplane.weight, Some(6.0 / (20.0 * 2.0)));
    assert_eq!(aeroplane.pos_weight, Some(2.0));
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
    assert_eq!(
        stats.classes[16].pixel_share,
        Some(pixels[17] as f64 / all as f64),
        "sheep"
    );
    let w = stats.seg_weights.as_ref().unwrap();
    assert_eq!(w[2], 0.0, "no bicycle pixels");
    assert!((w[0] - all as f64 / (21.0 * pixels[0] as f64)).abs() < 1e-12);
    let json = serde_json::to_value(&stats).unwrap();
    assert_eq!(json["split"], "train");
    assert_eq!(json["classes"][0]["name"], "aeroplane");
    assert_eq!(json["classes"][0]["images"], 2);
    assert!(stats.table().contains("aeroplane"));
}

fn synthetic_labels(n: usize) -> Vec<Labels> {
    (0..n)
        .map(|i| {
            let mut l = [0u8; 20];
            l[i % 20] = 1;
            if i % 3 == 0 {
                l[14] = 1; // person: common
            }
            if i % 50 == 0 {
                l[(i / 50) % 20] = 1;
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
        let total = labels.iter().filter(|l| l[c] == 1).count() as f64;
        let in_val = val.iter().filter(|&&i| labels[i][c] == 1).count() as f64;
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
    let Some(shared) = voc_tensor::testing::shared_or_skip("subsets_of_index_and_dataset") else {
        return;
    };
    let train = CompetitionDir::open(&shared.join("data/voc-sample"))
        .unwrap()
        .split("train")
        .unwrap();
    let sub = train.subset(&[5, 0]).unwrap();
    assert_eq!(sub.ids, ["5", "0"]);
    assert_eq!(
        sub.labels.as_ref().unwrap()[0],
        train.labels.as_ref().unwrap()[5]
    );
    let data = train
        .load(LoadMode::Eager)
        .unwrap()
        .subset(&[5, 0])
        .unwrap();
    assert_eq!(data.get(0).unwrap().id, "5");
    assert!(train.subset(&[6]).is_err());
}
