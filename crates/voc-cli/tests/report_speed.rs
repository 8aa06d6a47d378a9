//! `voc report`'s speed and size: five segmentation runs of 112 validation images each, reported in
//! under 5 s and 10 MB. Its own test binary, so that no other test shares the cores while it is timed.
use std::path::Path;

mod common;
use common::{path_str, small_seg_data, text, voc};

#[test]
fn five_runs_of_112_images_report_in_seconds_and_megabytes() {
    // Five segmentation-sized runs: 112 validation images each, 30 epochs of metrics, confusion,
    // examples, and a data folder of 112 images to draw them from.
    let dir = tempfile::tempdir().unwrap();
    let data = small_seg_data(dir.path(), 112);
    let metrics_line = |e: usize| {
        serde_json::json!({
            "epoch": e, "train_loss": 1.0 / e as f64, "val_loss": 1.2 / e as f64,
            "val_pixel_accuracy": 0.8, "val_miou": 0.5 + 0.01 * e as f64, "val_miou_classes": 0.5,
            "val_iou": vec![0.5; 21], "val_dice": 0.6, "lr": 1e-4, "seconds": 300.0, "images_per_s": 1.5
        })
        .to_string()
    };
    let ids: Vec<String> = std::fs::read_to_string(data.join("train/train_set.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().to_string())
        .collect();
    let mut runs = Vec::new();
    for r in 0..5 {
        let run = dir.path().join(format!("run{r}"));
        std::fs::create_dir_all(run.join("val_examples")).unwrap();
        let config = serde_json::json!({
            "format": 1,
            "config": {"model": "deeplabv3plus", "backbone": "voc", "crop": 321, "epochs": 30, "monitor": "val_miou"},
            "data": data,
        });
        std::fs::write(run.join("config.json"), config.to_string()).unwrap();
        let lines: Vec<String> = (1..=30).map(metrics_line).collect();
        std::fs::write(run.join("metrics.jsonl"), lines.join("\n") + "\n").unwrap();
        let mut scores = String::from("Id,pixel_accuracy,miou,truth,predicted\n");
        for (i, id) in ids.iter().enumerate() {
            scores.push_str(&format!("{id},0.9,{},person,person\n", i as f64 / 112.0));
        }
        std::fs::write(run.join("val_scores.csv"), scores).unwrap();
        for id in ids.iter().take(6).chain(ids.iter().rev().take(6)) {
            let mask = voc_core_mask(&data, id);
            mask.write_png(&run.join("val_examples").join(format!("{id}.png")))
                .unwrap();
        }
        let mut confusion = format!(
            "truth\\predicted,{}\n",
            voc_core::MASK_CLASS_NAMES.join(",")
        );
        for name in voc_core::MASK_CLASS_NAMES {
            confusion.push_str(&format!("{name},{}\n", vec!["10"; 21].join(",")));
        }
        std::fs::write(run.join("confusion.csv"), confusion).unwrap();
        runs.push(run);
    }
    let report = dir.path().join("report.html");
    let mut args: Vec<&str> = vec!["report"];
    args.extend(runs.iter().map(|r| path_str(r)));
    args.extend([
        "--data",
        path_str(&data),
        "--out",
        path_str(&report),
        "--json",
    ]);
    let t0 = std::time::Instant::now();
    let out = voc(&args, None);
    let seconds = t0.elapsed().as_secs_f64();
    assert!(out.status.success(), "{}", text(&out));
    let bytes = std::fs::metadata(&report).unwrap().len();
    println!("5 runs: {seconds:.2} s, {:.2} MB", bytes as f64 / 1e6);
    assert!(seconds < 5.0, "{seconds:.2} s");
    assert!(bytes < 10_000_000, "{bytes} bytes");
}

fn voc_core_mask(data: &Path, id: &str) -> voc_core::Mask {
    voc_data::CompetitionDir::open(data)
        .unwrap()
        .split("train")
        .unwrap()
        .read_checked_mask(id)
        .unwrap()
}
