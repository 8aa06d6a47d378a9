//! `voc data ...` end to end on the shared sample.
use std::process::Command;

const VOC: &str = env!("CARGO_BIN_EXE_voc");

fn voc(args: &[&str]) -> std::process::Output {
    Command::new(VOC)
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("running voc")
}

#[test]
fn convert_stats_split_check_preview() {
    let Some(shared) = voc_core::testing::shared_with(
        "convert_stats_split_check_preview",
        &["data/voc-sample/train", "data/voc-sample/vocdevkit"],
    ) else {
        return;
    };
    let sample = shared.join("data/voc-sample");
    let sample = sample.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("conv");
    let devkit = format!("{sample}/vocdevkit");
    let o = voc(&[
        "data",
        "convert",
        "--vocdevkit",
        &devkit,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("6 train and 2 test"));
    assert_eq!(
        std::fs::read_to_string(out.join("train/train_set.csv")).unwrap(),
        std::fs::read_to_string(shared.join("data/voc-sample/train/train_set.csv")).unwrap(),
        "same labels, same CSV"
    );
    let again = voc(&[
        "data",
        "convert",
        "--vocdevkit",
        &devkit,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        !again.status.success(),
        "refuses to overwrite without --force"
    );

    let o = voc(&["data", "stats", "--data", sample, "--json"]);
    assert!(o.status.success());
    let stats: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(stats["split"], "train");
    assert_eq!(stats["images"], 6);
    assert_eq!(stats["classes"].as_array().unwrap().len(), 20);
    assert_eq!(stats["classes"][16]["name"], "sheep");
    assert_eq!(stats["classes"][16]["images"], 2);
    assert_eq!(stats["classes"][16]["pos_weight"], 2.0);

    let o = voc(&[
        "data",
        "split",
        "--data",
        sample,
        "--val-fraction",
        "0.5",
        "--seed",
        "3",
    ]);
    assert!(o.status.success());
    let split: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        split["train"].as_array().unwrap().len() + split["val"].as_array().unwrap().len(),
        6
    );

    let o = voc(&["data", "check", "--data", sample, "--json"]);
    assert!(o.status.success());

    let png = tmp.path().join("grid.png");
    let o = voc(&[
        "data",
        "preview",
        "--data",
        sample,
        "--out",
        png.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let grid = image::open(&png).unwrap();
    assert!(grid.width() > 500 && grid.height() > 300);

    let o = voc(&["data", "stats", "--data", "/nonexistent/voc"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/voc"));
}
