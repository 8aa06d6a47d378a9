//! End-to-end tests of `voc attack`: budget sweeps on the pretrained ImageNet MobileNetV2 and the VOC
//! DeepLabV3 (from the shared hub cache; skipped with a `SKIPPED` line without it, failing under
//! `VOC_REQUIRE_SHARED=1`), and bad input refused before any attack runs.
use std::collections::HashMap;

use voc_core::testing::{hub_model, shared_with};
use voc_tensor::checkpoint::{save_checkpoint_tensors, CheckpointMeta};
use voc_tensor::{Device, Tensor};

mod common;
use common::{assert_fails_naming, json_line, path_str, repo_root, voc};

#[test]
fn imagenet_pgd_changes_every_top1_within_4_levels_and_writes_the_run() {
    let Some(shared) = shared_with(
        "imagenet_pgd_changes_every_top1_within_4_levels_and_writes_the_run",
        &[
            hub_model("google/mobilenet_v2_1.0_224"),
            "data/photos/bird.png".into(),
            "data/photos/cat.png".into(),
        ],
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let photos = [
        shared.join("data/photos/bird.png"),
        shared.join("data/photos/cat.png"),
    ];
    let out = voc(
        &[
            "attack",
            "classify",
            "--classifier",
            "imagenet:mobilenet_v2",
            "--images",
            path_str(&photos[0]),
            path_str(&photos[1]),
            "--attack",
            "pgd",
            "--steps",
            "10",
            "--eps",
            "0,4",
            "--out",
            path_str(&run),
            "--device",
            "cpu",
            "--json",
        ],
        Some(&shared.join("hf")),
    );
    let report = json_line(&out, "voc attack classify");
    assert_eq!(report["task"], "classify");
    assert_eq!(report["images"], 2);
    let sweep = report["sweep"].as_array().unwrap();
    assert_eq!(sweep.len(), 2);
    assert_eq!(sweep[0]["eps"], 0.0);
    assert_eq!(sweep[0]["success_rate"], 0.0);
    assert_eq!(sweep[1]["success_rate"], 1.0, "{report}");
    assert_eq!(sweep[1]["top1_unchanged"], 0.0, "{report}");
    // A budget of 4 levels: L-inf exactly 4 after rounding, PSNR above 35 dB.
    assert!(sweep[1]["linf_max"].as_f64().unwrap() <= 4.0);
    assert!(sweep[1]["psnr"].as_f64().unwrap() >= 35.0, "{report}");
    assert!(sweep[1]["ssim"].as_f64().unwrap() > 0.8);
    for file in [
        "report.json",
        "curves.png",
        "eps_4/bird.png",
        "eps_4/cat.png",
        "eps_0/bird.png",
        "gallery/bird.png",
    ] {
        assert!(run.join(file).is_file(), "{file} missing");
    }
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap()).unwrap();
    assert_eq!(saved["sweep"], report["sweep"]);
    // The adversarial PNG is what was scored: 224x224, within 4 levels of the fitted photo.
    let adv = voc_data::read_rgb_image(&run.join("eps_4/bird.png")).unwrap();
    let clean = voc_data::read_rgb_image(&run.join("eps_0/bird.png")).unwrap();
    assert_eq!((adv.height(), adv.width()), (224, 224));
    assert!(voc_attack::quality::linf(&clean, &adv).unwrap() <= 4.0);

    // A target equal to what the photo already is changes nothing: a clear error.
    let out = voc(
        &[
            "attack",
            "classify",
            "--classifier",
            "imagenet:mobilenet_v2",
            "--images",
            path_str(&photos[0]),
            "--target",
            "chickadee",
            "--out",
            path_str(&tmp.path().join("same")),
            "--device",
            "cpu",
        ],
        Some(&shared.join("hf")),
    );
    assert_fails_naming(&out, &["changes nothing", "target equals"]);
}

#[test]
fn erasing_the_bird_empties_its_mask() {
    let Some(shared) = shared_with(
        "erasing_the_bird_empties_its_mask",
        &[
            hub_model("google/deeplabv3_mobilenet_v2_1.0_513"),
            "data/photos/bird.png".into(),
        ],
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let bird = shared.join("data/photos/bird.png");
    let out = voc(
        &[
            "attack",
            "segment",
            "--images",
            path_str(&bird),
            "--goal",
            "erase:bird",
            "--attack",
            "bim",
            "--steps",
            "5",
            "--eps",
            "8",
            "--out",
            path_str(&run),
            "--device",
            "cpu",
            "--json",
        ],
        Some(&shared.join("hf")),
    );
    let report = json_line(&out, "voc attack segment");
    assert_eq!(report["task"], "segment");
    assert_eq!(report["clean"]["target_share"], 0.0);
    let reached = report["sweep"][0]["target_share"].as_f64().unwrap();
    assert!(
        reached >= 0.9,
        "{reached} of the bird's pixels erased: {report}"
    );
    assert!(run.join("gallery/bird.png").is_file());
    assert!(run.join("eps_8/bird.png").is_file());
}

#[test]
fn attack_bad_input_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let data = repo_root().join("assets/voc-sample");
    let out = tmp.path().join("run");
    let base = |extra: &[&str]| {
        let mut args = vec![
            "attack",
            "segment",
            "--data",
            path_str(&data),
            "--split",
            "train",
            "--out",
            path_str(&out),
            "--device",
            "cpu",
        ];
        args.extend(extra);
        voc(&args, None)
    };
    assert_fails_naming(&base(&["--eps=-1"]), &["--eps -1", "0 to 255"]);
    assert_fails_naming(&base(&["--eps", "2,300"]), &["--eps 300", "0 to 255"]);
    assert_fails_naming(
        &base(&["--goal", "erase:unicorn"]),
        &["'unicorn' is not a VOC mask class", "aeroplane"],
    );
    assert_fails_naming(&base(&["--goal", "paint:cat"]), &["erase:CLASS"]);
    assert_fails_naming(&base(&["--ids", "nope"]), &["'nope' is not an Id"]);
    assert_fails_naming(&base(&["--defence", "bits:9"]), &["bits:9", "1..=7"]);
    assert_fails_naming(&base(&["--adaptive"]), &["--defence"]);

    // A segmenter checkpoint passed as a classifier.
    let segmenter = tmp.path().join("segmenter.safetensors");
    let names: Vec<String> = voc_core::MASK_CLASS_NAMES
        .iter()
        .map(|s| s.to_string())
        .collect();
    save_checkpoint_tensors(
        &segmenter,
        &HashMap::from([(
            "decode_head.classifier.convolution.bias".to_string(),
            Tensor::zeros(21, voc_tensor::DType::F32, &Device::Cpu).unwrap(),
        )]),
        &CheckpointMeta::new("deeplabv3plus_mobilenet_v2", names),
    )
    .unwrap();
    let out_classify = voc(
        &[
            "attack",
            "classify",
            "--classifier",
            path_str(&segmenter),
            "--data",
            path_str(&data),
            "--split",
            "train",
            "--out",
            path_str(&out),
            "--device",
            "cpu",
        ],
        None,
    );
    assert_fails_naming(
        &out_classify,
        &[
            "segmenter.safetensors",
            "deeplabv3plus_mobilenet_v2",
            "not a classifier",
        ],
    );
    assert!(
        !out.exists(),
        "a failed attack left {} behind",
        out.display()
    );
}

/// The PyTorch golden of FGSM (`reference/attack.safetensors`: MobileNetV2, the bird at 224x224 in
/// 8-bit steps, 2/255 on the cross-entropy of its class) through the command: the photo written as a
/// PNG of exactly `u`, attacked by `voc attack classify`, gives PyTorch's adversarial image in every
/// value whose gradient is not too small to have a reliable sign, and PyTorch's new top-1 class.
#[test]
fn the_fgsm_golden_passes_through_the_command() {
    let Some(shared) = shared_with(
        "the_fgsm_golden_passes_through_the_command",
        &[
            hub_model("google/mobilenet_v2_1.0_224"),
            "reference/attack.safetensors".into(),
        ],
    ) else {
        return;
    };
    let golden =
        voc_tensor::testing::load_golden(&shared.join("reference/attack.safetensors")).unwrap();
    let to_bytes = |t: &Tensor| -> Vec<u8> {
        (t.squeeze(0).unwrap() * 255.0)
            .unwrap()
            .round()
            .unwrap()
            .permute((1, 2, 0))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_dtype(voc_tensor::DType::U8)
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let tmp = tempfile::tempdir().unwrap();
    let photo = tmp.path().join("u.png");
    voc_core::RgbImage::new(224, 224, to_bytes(&golden["u"]))
        .unwrap()
        .write_png(&photo)
        .unwrap();
    let run = tmp.path().join("run");
    let out = voc(
        &[
            "attack",
            "classify",
            "--classifier",
            "imagenet:mobilenet_v2",
            "--images",
            path_str(&photo),
            "--attack",
            "fgsm",
            "--eps",
            "2",
            "--out",
            path_str(&run),
            "--device",
            "cpu",
            "--json",
        ],
        Some(&shared.join("hf")),
    );
    let report = json_line(&out, "voc attack classify (FGSM golden)");
    assert_eq!(report["sweep"][0]["success_rate"], 1.0, "{report}");
    let ours = voc_data::read_rgb_image(&run.join("eps_2/u.png")).unwrap();
    let theirs = to_bytes(&golden["fgsm.u_adv"]);
    let grad: Vec<f32> = golden["fgsm.grad"]
        .squeeze(0)
        .unwrap()
        .permute((1, 2, 0))
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let (mut compared, mut differ) = (0, 0);
    for ((a, b), g) in ours.as_bytes().iter().zip(&theirs).zip(&grad) {
        if g.abs() > 1e-7 {
            compared += 1;
            differ += usize::from(a != b);
        }
    }
    assert!(compared > 100_000, "{compared} values compared");
    assert_eq!(
        differ, 0,
        "{differ} of {compared} values differ from PyTorch's FGSM image"
    );
    // The new top-1 is PyTorch's (class 21 of the hub model's 1001), the chickadee (20) gone.
    let golden_top = golden["fgsm.logits"]
        .flatten_all()
        .unwrap()
        .argmax(0)
        .unwrap()
        .to_scalar::<u32>()
        .unwrap();
    let cache = voc_tensor::hub::HubCache::new(shared.join("hf").join("hub"), true);
    let names = voc_classify::ModelPreset::MOBILENET_V2
        .class_names_in(&cache)
        .unwrap();
    assert_eq!(
        report["sweep"][0]["per_image"][0]["labels"][0],
        names[golden_top as usize].as_str(),
        "{report}"
    );
}
