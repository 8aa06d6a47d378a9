//! Hub resolution and weight loading, offline, against the shared hub cache (never written to).
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use voc_tensor::hub::{self, HubCache, WeightsSource};
use voc_tensor::{Device, Tensor, VocError};

const MOBILENET: &str = "google/mobilenet_v2_1.0_224";

/// Tests that set process-wide environment variables hold this lock.
static ENV_LOCK: Mutex<()> = Mutex::new(());

/// The shared hub cache `shared/hf/hub`, once it holds MobileNetV2 (else the test is skipped, or fails
/// under `VOC_REQUIRE_SHARED=1`).
fn shared_hub(test: &str) -> Option<PathBuf> {
    let model =
        voc_core::testing::shared_file(test, "hf/hub/models--google--mobilenet_v2_1.0_224")?;
    Some(model.parent().unwrap().to_path_buf())
}

#[test]
fn resolves_mobilenet_from_the_shared_cache_offline() {
    let Some(hub_dir) = shared_hub("resolves_mobilenet_from_the_shared_cache_offline") else {
        return;
    };
    let cache = HubCache::new(&hub_dir, true);
    let weights = cache
        .resolve_file(MOBILENET, None, "model.safetensors")
        .unwrap();
    assert!(
        weights.starts_with(&hub_dir),
        "{weights:?} is not in {hub_dir:?}"
    );
    assert!(weights.ends_with("model.safetensors"));

    let config = hub::read_config_in(&cache, MOBILENET, None).unwrap();
    assert_eq!(config["model_type"], "mobilenet_v2", "config: {config}");

    let tensors = hub::load_tensors(&weights, &Device::Cpu).unwrap();
    let stem = &tensors["mobilenet_v2.conv_stem.first_conv.convolution.weight"];
    assert_eq!(stem.dims(), &[32, 3, 3, 3]);
    assert_eq!(tensors["classifier.weight"].dims(), &[1001, 1280]);

    // An explicit revision: the snapshot commit in refs/main works as well as the branch name.
    let commit =
        std::fs::read_to_string(hub_dir.join("models--google--mobilenet_v2_1.0_224/refs/main"))
            .unwrap();
    let by_commit = cache
        .resolve_file(MOBILENET, Some(commit.trim()), "config.json")
        .unwrap();
    assert_eq!(by_commit, weights.with_file_name("config.json"));
}

#[test]
fn environment_selects_the_cache_and_offline_mode() {
    let Some(hub_dir) = shared_hub("environment_selects_the_cache_and_offline_mode") else {
        return;
    };
    let empty = tempfile::tempdir().unwrap();
    let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let saved: Vec<_> = ["HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE"]
        .iter()
        .map(|k| (*k, std::env::var_os(k)))
        .collect();

    std::env::remove_var("HF_HUB_CACHE");
    std::env::set_var("HF_HOME", hub_dir.parent().unwrap());
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let from_home = HubCache::from_env();
    let weights = hub::resolve_weights(&WeightsSource::hub(MOBILENET, None));
    let config = hub::read_config(MOBILENET, None);

    std::env::set_var("HF_HOME", empty.path());
    std::env::set_var("HF_HUB_CACHE", &hub_dir);
    let from_hub_cache = HubCache::from_env();

    std::env::remove_var("HF_HUB_CACHE");
    let missing = hub::resolve_file(MOBILENET, None, "model.safetensors");

    for (k, v) in saved {
        match v {
            Some(v) => std::env::set_var(k, v),
            None => std::env::remove_var(k),
        }
    }
    drop(_guard);

    assert_eq!(from_home.dir, hub_dir);
    assert!(from_home.offline);
    assert_eq!(from_hub_cache.dir, hub_dir);
    assert!(weights.unwrap().ends_with("model.safetensors"));
    assert_eq!(config.unwrap()["image_size"], 224);
    let message = missing.unwrap_err().to_string();
    assert!(
        message.contains(&empty.path().join("hub").display().to_string()),
        "{message}"
    );
}

#[test]
fn an_empty_cache_gives_an_error_naming_repo_file_cache_and_variable() {
    let empty = tempfile::tempdir().unwrap();
    let cache = HubCache::new(empty.path(), true);
    let err = cache
        .resolve_file(MOBILENET, None, "model.safetensors")
        .unwrap_err();
    assert!(matches!(err, VocError::HubFile { .. }), "{err:?}");
    let message = err.to_string();
    for needle in [
        MOBILENET,
        "model.safetensors",
        &empty.path().display().to_string(),
        "HF_HOME",
        "HF_HUB_OFFLINE",
    ] {
        assert!(message.contains(needle), "`{needle}` not in: {message}");
    }

    // The weights fallback names both files it wanted, and nothing appeared in the cache.
    let err = hub::resolve_weights_in(&cache, &WeightsSource::hub(MOBILENET, None))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.safetensors")
            && err.contains("pytorch_model.bin")
            && err.contains("--weights"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(empty.path()).unwrap().count(), 0);
}

#[test]
fn a_weights_file_overrides_the_hub() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("my.safetensors");
    let t = Tensor::arange(0f32, 6., &Device::Cpu)
        .unwrap()
        .reshape((2, 3))
        .unwrap();
    candle_core::safetensors::save(&HashMap::from([("w".to_string(), t)]), &file).unwrap();

    // The hub side would fail (empty offline cache); the file wins without consulting it.
    let cache = HubCache::new(dir.path().join("no-cache"), true);
    let src = WeightsSource::from_args(Some(&file), MOBILENET, None);
    assert_eq!(src, WeightsSource::File(file.clone()));
    assert_eq!(hub::resolve_weights_in(&cache, &src).unwrap(), file);
    let loaded = hub::load_tensors(&file, &Device::Cpu).unwrap();
    assert_eq!(
        loaded["w"].to_vec2::<f32>().unwrap(),
        vec![vec![0., 1., 2.], vec![3., 4., 5.]]
    );

    let err = hub::resolve_weights_in(
        &cache,
        &WeightsSource::File(dir.path().join("absent.safetensors")),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("absent.safetensors") && err.contains("--weights"),
        "{err}"
    );
}

#[test]
fn a_corrupt_pytorch_bin_is_the_fallback_and_a_clear_error() {
    // Found through the fallback (no model.safetensors in the snapshot), then refused by the reader.
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("models--org--only-bin/snapshots/abc");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(dir.path().join("models--org--only-bin/refs")).unwrap();
    std::fs::write(dir.path().join("models--org--only-bin/refs/main"), "abc").unwrap();
    std::fs::write(
        snapshot.join("pytorch_model.bin"),
        b"PK\x03\x04 not really a zip",
    )
    .unwrap();
    let cache = HubCache::new(dir.path(), true);
    let path = hub::resolve_weights_in(&cache, &WeightsSource::hub("org/only-bin", None)).unwrap();
    assert_eq!(path, snapshot.join("pytorch_model.bin"));
    assert_eq!(
        hub::sniff_format(&path).unwrap(),
        hub::WeightsFormat::PyTorchZip
    );
    let err = hub::load_tensors(&path, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("pytorch_model.bin") && err.contains("PyTorch"),
        "{err}"
    );
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn foreign_and_truncated_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.safetensors");
    write(&text, b"hello, these are not weights");
    let err = hub::load_tensors(&text, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("notes.safetensors") && err.contains("not a weights file"),
        "{err}"
    );

    let good = dir.path().join("good.safetensors");
    let t = Tensor::ones((16, 16), candle_core::DType::F32, &Device::Cpu).unwrap();
    candle_core::safetensors::save(&HashMap::from([("w".to_string(), t)]), &good).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let cut = dir.path().join("cut.safetensors");
    write(&cut, &bytes[..bytes.len() - 100]);
    let err = hub::load_tensors(&cut, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cut.safetensors") && err.contains("truncated"),
        "{err}"
    );

    let empty = dir.path().join("empty.bin");
    write(&empty, b"");
    assert!(hub::load_tensors(&empty, &Device::Cpu)
        .unwrap_err()
        .to_string()
        .contains("empty.bin"));
}

#[test]
fn name_report_lists_missing_unexpected_and_mismatched() {
    let dev = Device::Cpu;
    let loaded: HashMap<String, Tensor> = [
        ("conv.weight", vec![8, 3, 3, 3]),
        ("conv.bias", vec![8]),
        ("head.weight", vec![10, 8]),
        ("extra.running_mean", vec![8]),
    ]
    .into_iter()
    .map(|(n, s)| {
        (
            n.to_string(),
            Tensor::zeros(s, candle_core::DType::F32, &dev).unwrap(),
        )
    })
    .collect();
    let expected: Vec<(String, Vec<usize>)> = vec![
        ("conv.weight".into(), vec![8, 3, 3, 3]),
        ("conv.bias".into(), vec![8]),
        ("head.weight".into(), vec![20, 8]),
        ("head.bias".into(), vec![20]),
    ];
    let report = hub::check_names(&expected, &loaded);
    assert_eq!(report.missing, vec!["head.bias".to_string()]);
    assert_eq!(report.unexpected, vec!["extra.running_mean".to_string()]);
    assert_eq!(
        report.shape_mismatches,
        vec![("head.weight".to_string(), vec![20, 8], vec![10, 8])]
    );
    assert!(!report.is_clean() && !report.is_loadable());
    let text = report.to_string();
    for needle in [
        "head.bias",
        "extra.running_mean",
        "head.weight",
        "[20, 8]",
        "[10, 8]",
    ] {
        assert!(text.contains(needle), "`{needle}` not in {text}");
    }
    assert!(report
        .ensure_loadable(Path::new("w.safetensors"))
        .unwrap_err()
        .to_string()
        .contains("w.safetensors"));

    let clean = hub::check_names(&expected[..2], &loaded);
    assert!(clean.missing.is_empty() && clean.shape_mismatches.is_empty() && clean.is_loadable());
    assert!(!clean.is_clean());
}

#[test]
fn name_report_on_real_weights_with_a_wrong_expectation() {
    let Some(hub_dir) = shared_hub("name_report_on_real_weights_with_a_wrong_expectation") else {
        return;
    };
    let cache = HubCache::new(hub_dir, true);
    let path = hub::resolve_weights_in(&cache, &WeightsSource::hub(MOBILENET, None)).unwrap();
    let loaded = hub::load_tensors(&path, &Device::Cpu).unwrap();
    let mut expected: Vec<(String, Vec<usize>)> = loaded
        .iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect();
    assert!(hub::check_names(&expected, &loaded).is_clean());
    // A 20-class head instead of ImageNet's 1001, and a layer the file does not have.
    for (name, shape) in expected.iter_mut() {
        if name == "classifier.weight" {
            *shape = vec![20, 1280];
        }
    }
    expected.retain(|(n, _)| n != "classifier.bias");
    expected.push(("mobilenet_v2.layer.99.weight".into(), vec![1]));
    let report = hub::check_names(&expected, &loaded);
    assert_eq!(
        report.missing,
        vec!["mobilenet_v2.layer.99.weight".to_string()]
    );
    assert_eq!(report.unexpected, vec!["classifier.bias".to_string()]);
    assert_eq!(
        report.shape_mismatches,
        vec![("classifier.weight".into(), vec![20, 1280], vec![1001, 1280])]
    );
}

/// `tests/data/tiny_pytorch_model.bin` was written by `torch.save` (PyTorch 2.15, zip format) from
/// `{"linear.weight": arange(6).reshape(2, 3), "linear.bias": [0.5, -0.5], "bn.running_var": full(4, 2.0),
/// "bn.num_batches_tracked": tensor(3)}`.
#[test]
fn a_real_pytorch_bin_loads_from_a_cache_without_safetensors() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny_pytorch_model.bin");
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir
        .path()
        .join("models--org--torch-only/snapshots/0123abcd");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::copy(&fixture, snapshot.join("pytorch_model.bin")).unwrap();
    let cache = HubCache::new(dir.path(), true);
    // No refs/ at all: a commit-hash revision finds the snapshot directly.
    let src = WeightsSource::hub("org/torch-only", Some("0123abcd"));
    let path = hub::resolve_weights_in(&cache, &src).unwrap();
    assert_eq!(path, snapshot.join("pytorch_model.bin"));

    let tensors = hub::load_tensors(&path, &Device::Cpu).unwrap();
    let mut names: Vec<_> = tensors.keys().cloned().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "bn.num_batches_tracked",
            "bn.running_var",
            "linear.bias",
            "linear.weight"
        ]
    );
    assert_eq!(
        tensors["linear.weight"].to_vec2::<f32>().unwrap(),
        vec![vec![0., 1., 2.], vec![3., 4., 5.]]
    );
    assert_eq!(
        tensors["linear.bias"].to_vec1::<f32>().unwrap(),
        vec![0.5, -0.5]
    );
    assert_eq!(
        tensors["bn.running_var"].to_vec1::<f32>().unwrap(),
        vec![2.0; 4]
    );
    assert_eq!(
        tensors["bn.num_batches_tracked"]
            .to_dtype(candle_core::DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap(),
        3.0
    );
}

#[test]
fn hub_names_that_leave_the_cache_are_refused() {
    use voc_tensor::hub::{check_hub_names, HubCache};
    for ok in [
        (
            "google/deeplabv3_mobilenet_v2_1.0_513",
            "main",
            "model.safetensors",
        ),
        (
            "timm/tf_efficientnet_lite0.in1k",
            "refs/pr/1",
            "sub/dir/config.json",
        ),
        ("gpt2", "0123abc", "pytorch_model.bin"),
    ] {
        assert!(check_hub_names(ok.0, ok.1, ok.2).is_ok(), "{ok:?}");
    }
    for bad in [
        ("../etc", "main", "x"),
        ("a/b/c", "main", "x"),
        ("/abs", "main", "x"),
        ("ok/..", "main", "x"),
        ("ok/name", "../../..", "x"),
        ("ok/name", "main", "../../etc/passwd"),
        ("ok/name", "main", "/etc/passwd"),
        ("ok/name", "main", "a/./b"),
        ("ok/na me", "main", "x"),
    ] {
        let e = check_hub_names(bad.0, bad.1, bad.2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not valid"), "{bad:?}: {e}");
    }
    // Through the cache: an error before any path is touched, offline or not.
    let dir = tempfile::tempdir().unwrap();
    let cache = HubCache::new(dir.path(), true);
    assert!(cache.cached("ok/name", Some("main"), "../../x").is_none());
    let e = cache
        .resolve_file("ok/name", None, "../../x")
        .unwrap_err()
        .to_string();
    assert!(e.contains("file name '../../x' is not valid"), "{e}");
}
