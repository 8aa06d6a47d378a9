//! Classification metrics against scikit-learn (tests/data/metrics_sklearn.json, made by the script
//! in tests/data/SOURCES.md) and hand-worked cases; threshold choice against brute force.
use serde::Deserialize;
use voc_classify::metrics::{
    average_precision, choose_thresholds, classification_dice, evaluate, macro_f1,
    mean_average_precision, per_class_average_precision, per_class_f1, ThresholdRule, Thresholds,
    SEED_THRESHOLD,
};
use voc_classify::ClassifyError;

#[derive(Deserialize)]
struct Golden {
    sklearn: String,
    num_images: usize,
    num_classes: usize,
    probs: Vec<f32>,
    truth: Vec<u8>,
    average_precision: Vec<Option<f64>>,
    threshold: f32,
    pred: Vec<u8>,
    macro_f1: f64,
    per_class_f1: Vec<f64>,
}

fn golden() -> Golden {
    serde_json::from_str(include_str!("data/metrics_sklearn.json")).expect("metrics_sklearn.json")
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

/// Deterministic pseudo-random numbers in [0, 1) (xorshift64*), so no dev-dependency is needed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// VOC-like data: every image holds 1-3 true classes; probabilities are noisy, partly rounded
/// (ties).
fn synthetic(n: usize, c: usize, seed: u64) -> (Vec<f32>, Vec<u8>) {
    let mut rng = Rng(seed);
    let mut truth = vec![0u8; n * c];
    let mut probs = vec![0f32; n * c];
    for i in 0..n {
        let labels = 1 + (rng.next() * 3.0) as usize;
        for _ in 0..labels {
            truth[i * c + (rng.next() * c as f64) as usize] = 1;
        }
        for k in 0..c {
            let signal = if truth[i * c + k] == 1 { 0.45 } else { 0.0 };
            let p = (signal + 0.6 * rng.next() * rng.next().sqrt()).min(1.0);
            probs[i * c + k] = if k % 3 == 0 {
                (p * 50.0).round() / 50.0
            } else {
                p
            } as f32;
        }
    }
    (probs, truth)
}

fn dice_of(probs: &[f32], truth: &[u8], c: usize, t: &Thresholds) -> f64 {
    classification_dice(&t.decide_all(probs).unwrap(), truth, c).unwrap()
}

fn bad_argument(e: ClassifyError) -> String {
    match e {
        ClassifyError::BadArgument(m) => m,
        other => panic!("expected BadArgument, got {other:?}"),
    }
}

#[test]
fn average_precision_matches_sklearn() {
    let g = golden();
    assert!(!g.sklearn.is_empty());
    let ap = per_class_average_precision(&g.probs, &g.truth, g.num_classes).unwrap();
    assert_eq!(ap.len(), g.num_classes);
    for (c, (ours, theirs)) in ap.iter().zip(&g.average_precision).enumerate() {
        match (ours, theirs) {
            (Some(a), Some(b)) => assert!(close(*a, *b, 1e-12), "class {c}: {a} vs sklearn {b}"),
            (None, None) => {}
            _ => panic!("class {c}: {ours:?} vs sklearn {theirs:?}"),
        }
    }
    assert!(
        g.average_precision.contains(&None),
        "the fixture has a class without positives"
    );
    let defined: Vec<f64> = g.average_precision.iter().flatten().copied().collect();
    let expected = defined.iter().sum::<f64>() / defined.len() as f64;
    assert!(close(mean_average_precision(&ap), expected, 1e-12));
}

#[test]
fn f1_matches_sklearn() {
    let g = golden();
    let c = g.num_classes;
    let t = Thresholds::uniform(g.threshold, c, false);
    let pred = t.decide_all(&g.probs).unwrap();
    assert_eq!(pred, g.pred, "p >= 0.5 as numpy");
    let f1 = per_class_f1(&pred, &g.truth, c).unwrap();
    for (k, (a, b)) in f1.iter().zip(&g.per_class_f1).enumerate() {
        assert!(close(*a, *b, 1e-12), "class {k}: {a} vs sklearn {b}");
    }
    assert!(close(
        macro_f1(&pred, &g.truth, c).unwrap(),
        g.macro_f1,
        1e-12
    ));
    assert_eq!(g.probs.len(), g.num_images * c);
}

#[test]
fn average_precision_by_hand() {
    // Perfect ranking.
    assert_eq!(
        average_precision(&[0.9, 0.7, 0.4, 0.2], &[true, true, false, false]),
        Some(1.0)
    );
    assert_eq!(average_precision(&[0.3], &[true]), Some(1.0));
    // Worst ranking: the positive last of two -> precision 1/2 at recall 1.
    assert_eq!(average_precision(&[0.9, 0.1], &[false, true]), Some(0.5));
    // No positive: undefined, whatever the scores.
    assert_eq!(average_precision(&[0.9, 0.1, 0.5], &[false; 3]), None);
    assert_eq!(average_precision(&[], &[]), None);
    // All positive: 1.
    assert_eq!(average_precision(&[0.2, 0.2, 0.9], &[true; 3]), Some(1.0));
}

#[test]
fn average_precision_groups_ties() {
    // Three tied at 0.5 (one positive) then a positive at 0.2:
    // threshold 0.5: precision 1/3, recall 1/2; threshold 0.2: precision 2/4, recall 1.
    let expected = 0.5 * (1.0 / 3.0) + 0.5 * 0.5;
    let scores = [0.5, 0.5, 0.5, 0.2];
    for truth in [
        [true, false, false, true],
        [false, true, false, true],
        [false, false, true, true],
    ] {
        let ap = average_precision(&scores, &truth).unwrap();
        assert!(close(ap, expected, 1e-15), "{truth:?}: {ap}");
    }
    // All tied: precision = prevalence.
    assert_eq!(
        average_precision(&[0.4; 4], &[true, false, false, false]),
        Some(0.25)
    );
}

#[test]
fn mean_average_precision_skips_undefined() {
    assert_eq!(mean_average_precision(&[Some(0.5), None, Some(1.0)]), 0.75);
    assert_eq!(mean_average_precision(&[None, None]), 0.0);
    assert_eq!(mean_average_precision(&[]), 0.0);
}

#[test]
fn dice_by_hand() {
    // Image 0: pred {0, 1}, truth {1, 2}: 2·1/4. Image 1: both empty: 1.
    // Image 2: pred {2}, truth {}: 0. Image 3: identical: 1.
    let pred = [
        1, 1, 0, /* */ 0, 0, 0, /* */ 0, 0, 1, /* */ 1, 0, 1,
    ];
    let truth = [
        0, 1, 1, /* */ 0, 0, 0, /* */ 0, 0, 0, /* */ 1, 0, 1,
    ];
    assert_eq!(
        classification_dice(&pred, &truth, 3).unwrap(),
        (0.5 + 1.0 + 0.0 + 1.0) / 4.0
    );
    assert_eq!(classification_dice(&[0, 0], &[0, 0], 2).unwrap(), 1.0);
    assert_eq!(classification_dice(&[1, 0], &[0, 1], 2).unwrap(), 0.0);
}

#[test]
fn f1_by_hand() {
    // Class 0: TP 2. Class 1: FP 1, FN 1 -> 0.
    // Class 2: never true nor predicted -> 0 (zero_division).
    let pred = [1, 1, 0, /* */ 1, 0, 0];
    let truth = [1, 0, 0, /* */ 1, 1, 0];
    assert_eq!(per_class_f1(&pred, &truth, 3).unwrap(), [1.0, 0.0, 0.0]);
    assert_eq!(macro_f1(&pred, &truth, 3).unwrap(), 1.0 / 3.0);
}

#[test]
fn argmax_fallback() {
    let t = Thresholds {
        per_class: vec![0.5, 0.5, 0.5],
        argmax_fallback: true,
    };
    assert_eq!(t.decide(&[0.2, 0.4, 0.3]), [0, 1, 0]);
    assert_eq!(t.decide(&[0.4, 0.1, 0.4]), [1, 0, 0], "ties: the first");
    assert_eq!(
        t.decide(&[0.5, 0.1, 0.9]),
        [1, 0, 1],
        "no fallback when a class passes"
    );
    let strict = Thresholds {
        argmax_fallback: false,
        ..t.clone()
    };
    assert_eq!(strict.decide(&[0.2, 0.4, 0.3]), [0, 0, 0]);
    // The fallback is per image.
    let probs = [0.2, 0.4, 0.3, /* */ 0.6, 0.1, 0.2];
    assert_eq!(t.decide_all(&probs).unwrap(), [0, 1, 0, 1, 0, 0]);
    // Per-class thresholds: at or above.
    let t = Thresholds {
        per_class: vec![0.3, 0.9],
        argmax_fallback: true,
    };
    assert_eq!(t.decide(&[0.3, 0.8]), [1, 0]);
    assert_eq!(t.decide_all(&[]).unwrap(), Vec::<u8>::new());
}

#[test]
fn seed_rule() {
    let g = golden();
    let t = choose_thresholds(&g.probs, &g.truth, g.num_classes, ThresholdRule::Seed).unwrap();
    assert_eq!(t, Thresholds::uniform(0.15, g.num_classes, true));
    assert_eq!(SEED_THRESHOLD, 0.15);
}

/// Global's Dice is at least that of the seed rule, of every grid threshold and of every distinct
/// probability taken as a uniform threshold; per-class's at least global's, and no single class's
/// threshold can then improve it (checked at every distinct probability of the class).
fn check_rules(probs: &[f32], truth: &[u8], c: usize) {
    let dice = |t: &Thresholds| dice_of(probs, truth, c, t);
    let seed = choose_thresholds(probs, truth, c, ThresholdRule::Seed).unwrap();
    let global = choose_thresholds(probs, truth, c, ThresholdRule::Global).unwrap();
    let per_class = choose_thresholds(probs, truth, c, ThresholdRule::PerClass).unwrap();
    assert!(global.argmax_fallback && per_class.argmax_fallback);
    assert!(global.per_class.iter().all(|&t| t == global.per_class[0]));
    let (d_seed, d_global, d_per_class) = (dice(&seed), dice(&global), dice(&per_class));
    assert!(
        d_global >= d_seed - 1e-12,
        "global {d_global} < seed {d_seed}"
    );
    let mut candidates: Vec<f32> = (1..100).map(|k| k as f32 / 100.0).collect();
    candidates.extend_from_slice(probs);
    candidates.push(1.5);
    for &t in &candidates {
        let d = dice(&Thresholds::uniform(t, c, true));
        assert!(
            d_global >= d - 1e-12,
            "global {d_global} < {d} at threshold {t}"
        );
    }
    assert!(
        d_per_class >= d_global - 1e-12,
        "per-class {d_per_class} < global {d_global}"
    );
    for k in 0..c {
        for &t in probs.iter().skip(k).step_by(c).chain(&[1.5]) {
            let mut changed = per_class.clone();
            changed.per_class[k] = t;
            let d = dice(&changed);
            assert!(
                d <= d_per_class + 1e-9,
                "class {k} at {t}: {d} > per-class {d_per_class}"
            );
        }
    }
    println!(
        "seed {d_seed:.6}, global {d_global:.6} ({:.4}), per-class {d_per_class:.6}",
        global.per_class[0]
    );
}

#[test]
fn threshold_rules_on_the_fixture() {
    let g = golden();
    check_rules(&g.probs, &g.truth, g.num_classes);
}

#[test]
fn threshold_rules_on_synthetic_data() {
    for (n, c, seed) in [(60, 4, 1), (200, 20, 7), (31, 1, 3)] {
        let (probs, truth) = synthetic(n, c, seed);
        check_rules(&probs, &truth, c);
    }
}

#[test]
fn thresholds_sit_between_probabilities() {
    // Image 0 holds both classes, the others one. Any threshold in (0.6, 0.9] is perfect (above 0.8
    // and 0.7, images 2 and 3 fall back to their argmax, which is right); at or below 0.6 image 1
    // gains class 0, above 0.9 image 0 loses class 1. The middle of the range: 0.75.
    let probs = [
        0.95, 0.9, /* */ 0.6, 0.65, /* */ 0.8, 0.2, /* */ 0.3, 0.7,
    ];
    let truth = [1, 1, /* */ 0, 1, /* */ 1, 0, /* */ 0, 1];
    let t = choose_thresholds(&probs, &truth, 2, ThresholdRule::Global).unwrap();
    assert!(
        close(f64::from(t.per_class[0]), 0.75, 1e-6),
        "{:?}",
        t.per_class
    );
    assert_eq!(dice_of(&probs, &truth, 2, &t), 1.0);
}

#[test]
fn per_class_recovers_separable_classes() {
    // Class k is true exactly when its probability exceeds 0.1 + 0.2 k.
    let (n, c) = (300, 4);
    let mut rng = Rng(11);
    let mut probs = vec![0f32; n * c];
    let mut truth = vec![0u8; n * c];
    for i in 0..n {
        // Redrawn until the image holds a class (the fallback always predicts one).
        while !truth[i * c..(i + 1) * c].contains(&1) {
            for k in 0..c {
                let p = rng.next() as f32;
                probs[i * c + k] = p;
                truth[i * c + k] = u8::from(p > 0.1 + 0.2 * k as f32);
            }
        }
    }
    let t = choose_thresholds(&probs, &truth, c, ThresholdRule::PerClass).unwrap();
    assert_eq!(dice_of(&probs, &truth, c, &t), 1.0, "{:?}", t.per_class);
    for k in 0..c {
        assert!(
            (t.per_class[k] - (0.1 + 0.2 * k as f32)).abs() < 0.02,
            "{:?}",
            t.per_class
        );
    }
}

#[test]
fn evaluate_reports_every_metric() {
    let g = golden();
    let c = g.num_classes;
    let t = choose_thresholds(&g.probs, &g.truth, c, ThresholdRule::Global).unwrap();
    let report = evaluate(&g.probs, &g.truth, c, &t).unwrap();
    let pred = t.decide_all(&g.probs).unwrap();
    assert_eq!(report.images, g.num_images);
    assert_eq!(
        report.per_class_ap,
        per_class_average_precision(&g.probs, &g.truth, c).unwrap()
    );
    assert_eq!(report.map, mean_average_precision(&report.per_class_ap));
    assert_eq!(
        report.per_class_f1,
        per_class_f1(&pred, &g.truth, c).unwrap()
    );
    assert!(close(
        report.macro_f1,
        macro_f1(&pred, &g.truth, c).unwrap(),
        1e-15
    ));
    assert_eq!(
        report.dice,
        classification_dice(&pred, &g.truth, c).unwrap()
    );
    let json = serde_json::to_string(&report).unwrap();
    assert!(
        json.contains("\"per_class_ap\":[") && json.contains("null"),
        "{json}"
    );
    let back: voc_classify::ClassificationReport = serde_json::from_str(&json).unwrap();
    assert_eq!(back.images, report.images);
}

#[test]
fn threshold_rule_names() {
    for (rule, name) in [
        (ThresholdRule::PerClass, "per-class"),
        (ThresholdRule::Global, "global"),
        (ThresholdRule::Seed, "seed"),
    ] {
        assert_eq!(rule.to_string(), name);
        assert_eq!(name.parse::<ThresholdRule>().unwrap(), rule);
        assert_eq!(serde_json::to_string(&rule).unwrap(), format!("\"{name}\""));
        assert_eq!(
            serde_json::from_str::<ThresholdRule>(&format!("\"{name}\"")).unwrap(),
            rule
        );
    }
    let message = bad_argument("perclass".parse::<ThresholdRule>().unwrap_err());
    assert!(
        message.contains("perclass") && message.contains("per-class, global, seed"),
        "{message}"
    );
    let t = Thresholds::uniform(0.3, 2, true);
    let json = serde_json::to_string(&t).unwrap();
    assert_eq!(json, r#"{"per_class":[0.3,0.3],"argmax_fallback":true}"#);
    assert_eq!(serde_json::from_str::<Thresholds>(&json).unwrap(), t);
}

#[test]
fn bad_arguments() {
    let message = bad_argument(per_class_average_precision(&[0.5; 6], &[0; 4], 2).unwrap_err());
    assert!(
        message.contains("6") && message.contains("4") && message.contains("N x C"),
        "{message}"
    );
    let message = bad_argument(classification_dice(&[0; 5], &[0; 5], 2).unwrap_err());
    assert!(
        message.contains("5 values") && message.contains("N x 2"),
        "{message}"
    );
    let message = bad_argument(macro_f1(&[], &[], 0).unwrap_err());
    assert!(message.contains("num_classes is 0"), "{message}");
    let message = bad_argument(classification_dice(&[], &[], 3).unwrap_err());
    assert!(message.contains("no images"), "{message}");
    let message = bad_argument(per_class_f1(&[0, 2], &[0, 1], 2).unwrap_err());
    assert!(
        message.contains("pred[1]") && message.contains("is 2"),
        "{message}"
    );
    let message = bad_argument(
        choose_thresholds(&[0.5, f32::NAN], &[0, 1], 2, ThresholdRule::Global).unwrap_err(),
    );
    assert!(
        message.contains("probs[1]") && message.contains("NaN"),
        "{message}"
    );
    let message = bad_argument(
        Thresholds::uniform(0.5, 2, true)
            .decide_all(&[0.5, f32::INFINITY])
            .unwrap_err(),
    );
    assert!(message.contains("inf"), "{message}");
    let message = bad_argument(
        evaluate(&[0.5, 0.5], &[1, 0], 2, &Thresholds::uniform(0.5, 3, true)).unwrap_err(),
    );
    assert!(message.contains("3 thresholds for 2 classes"), "{message}");
    let message =
        bad_argument(choose_thresholds(&[], &[], 2, ThresholdRule::PerClass).unwrap_err());
    assert!(message.contains("no images"), "{message}");
}

/// The threshold search on a competition-sized validation set (750 images x 20 classes) stays fast:
/// the trainer runs it every epoch. A quadratic search would take seconds even in release; this bound
/// holds in the unoptimised test build.
#[test]
fn threshold_search_on_750_by_20_is_fast() {
    let (probs, truth) = synthetic(750, 20, 5);
    for rule in [ThresholdRule::Global, ThresholdRule::PerClass] {
        let start = std::time::Instant::now();
        std::hint::black_box(choose_thresholds(&probs, &truth, 20, rule).unwrap());
        let ms = start.elapsed().as_secs_f64() * 1e3;
        println!("{rule}: {ms:.1} ms");
        assert!(ms < 2000.0, "{rule}: {ms:.0} ms for 750 x 20");
    }
}
