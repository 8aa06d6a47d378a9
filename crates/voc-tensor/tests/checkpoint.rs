//! Checkpoints: exact round trip of trainable and state variables with metadata, atomic writes, and
//! clear errors on truncated or foreign files.
use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Init, VarBuilder, VarMap};
use voc_tensor::checkpoint::{self, CheckpointMeta, Normalization};
use voc_tensor::nn::BatchNorm2d;

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

/// A conv weight, a head and a batch norm whose running statistics have moved away from their init.
fn trained_varmap(dev: &Device) -> VarMap {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, dev);
    vb.get_with_hints(
        (4, 3, 3, 3),
        "stem.weight",
        Init::Randn {
            mean: 0.,
            stdev: 1.,
        },
    )
    .unwrap();
    vb.get_with_hints(
        (20, 4),
        "head.weight",
        Init::Randn {
            mean: 0.,
            stdev: 0.1,
        },
    )
    .unwrap();
    vb.get_with_hints(20, "head.bias", Init::Const(0.25))
        .unwrap();
    let bn = BatchNorm2d::new(vb.pp("bn"), 4, 1e-5, 0.1).unwrap();
    let x = Tensor::randn(0f32, 1., (2, 4, 5, 5), dev)
        .unwrap()
        .affine(3.0, 1.5)
        .unwrap();
    bn.forward_t(&x, true).unwrap();
    varmap
}

fn meta() -> CheckpointMeta {
    let mut meta = CheckpointMeta::new(
        "test_net",
        vec!["aeroplane".into(), "bicycle".into(), "bird".into()],
    );
    meta.input_size = Some((224, 320));
    meta.normalization = Normalization::IMAGENET;
    meta.thresholds = Some(vec![0.5, 0.25, 0.7]);
    meta.training = serde_json::json!({"optimizer": "adamw", "lr": 1e-3, "epochs": 12, "schedule": {"cosine": {"total": 100}}});
    meta.seed = Some(1234567890123);
    meta.extra = serde_json::json!({"output_stride": 16});
    meta
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn round_trip_is_bit_exact_and_includes_batchnorm_state() {
    let dev = Device::Cpu;
    let varmap = trained_varmap(&dev);
    let running_mean = varmap.data().lock().unwrap()["bn.running_mean"]
        .as_tensor()
        .clone();
    assert!(
        running_mean
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            > 0.01,
        "BN state did not move"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt.safetensors");
    checkpoint::save_checkpoint(&path, &varmap, &meta()).unwrap();
    assert_eq!(
        file_names(dir.path()),
        vec!["ckpt.safetensors"],
        "a temporary file was left behind"
    );

    let (tensors, loaded_meta) = checkpoint::load_checkpoint(&path, &dev).unwrap();
    assert_eq!(loaded_meta, meta());
    assert_eq!(loaded_meta.crate_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(checkpoint::read_checkpoint_meta(&path).unwrap(), meta());
    let vars = varmap.data().lock().unwrap().clone();
    let mut names: Vec<_> = tensors.keys().cloned().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "bn.bias",
            "bn.running_mean",
            "bn.running_var",
            "bn.weight",
            "head.bias",
            "head.weight",
            "stem.weight"
        ]
    );
    for (name, var) in &vars {
        assert_eq!(tensors[name].dims(), var.dims(), "{name}");
        assert_eq!(
            bits(&tensors[name]),
            bits(var.as_tensor()),
            "{name} differs after the round trip"
        );
    }

    // Restoring into a freshly initialised model of the same structure reproduces every value.
    let fresh = trained_varmap(&dev);
    let report = checkpoint::restore_varmap(&fresh, &tensors).unwrap();
    assert!(report.is_clean(), "{report}");
    for (name, var) in fresh.data().lock().unwrap().iter() {
        assert_eq!(
            bits(var.as_tensor()),
            bits(vars[name].as_tensor()),
            "{name} not restored"
        );
    }
}

#[test]
fn overwriting_is_atomic_and_failed_writes_leave_nothing() {
    let dev = Device::Cpu;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt.safetensors");
    checkpoint::save_checkpoint(&path, &trained_varmap(&dev), &meta()).unwrap();
    let mut second = meta();
    second.architecture = "second".into();
    checkpoint::save_checkpoint(&path, &trained_varmap(&dev), &second).unwrap();
    assert_eq!(file_names(dir.path()), vec!["ckpt.safetensors"]);
    assert_eq!(
        checkpoint::read_checkpoint_meta(&path)
            .unwrap()
            .architecture,
        "second"
    );

    // Into a missing folder: an error naming the path, and no stray file anywhere.
    let missing = dir.path().join("no/such/dir/ckpt.safetensors");
    let err = checkpoint::save_checkpoint(&missing, &trained_varmap(&dev), &meta())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no/such/dir"), "{err}");
    assert_eq!(file_names(dir.path()), vec!["ckpt.safetensors"]);

    let err = checkpoint::save_checkpoint(
        &dir.path().join("empty.safetensors"),
        &VarMap::new(),
        &meta(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("no tensors"), "{err}");
}

#[test]
fn truncated_files_are_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt.safetensors");
    checkpoint::save_checkpoint(&path, &trained_varmap(&Device::Cpu), &meta()).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    for keep in [bytes.len() - 1, bytes.len() / 2, 100, 4, 0] {
        let cut = dir.path().join(format!("cut{keep}.safetensors"));
        std::fs::write(&cut, &bytes[..keep]).unwrap();
        let err = checkpoint::load_checkpoint(&cut, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("cut{keep}.safetensors")), "{err}");
        assert!(
            err.contains("truncated") || err.contains("not a safetensors file"),
            "keep {keep}: {err}"
        );
    }
    let err = checkpoint::load_checkpoint(&dir.path().join("cut100.safetensors"), &Device::Cpu)
        .unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
}

#[test]
fn foreign_files_are_a_clear_error() {
    let dev = Device::Cpu;
    let dir = tempfile::tempdir().unwrap();

    // Plain weights: valid safetensors without voc metadata.
    let plain = dir.path().join("weights.safetensors");
    let t = Tensor::ones((3, 3), DType::F32, &dev).unwrap();
    candle_core::safetensors::save(&HashMap::from([("w".to_string(), t)]), &plain).unwrap();
    let err = checkpoint::load_checkpoint(&plain, &dev)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("weights.safetensors") && err.contains("without voc checkpoint metadata"),
        "{err}"
    );

    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "these are some notes, definitely not a checkpoint").unwrap();
    let err = checkpoint::load_checkpoint(&text, &dev)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("notes.txt") && err.contains("not a safetensors file"),
        "{err}"
    );

    let err = checkpoint::load_checkpoint(&dir.path().join("absent.safetensors"), &dev)
        .unwrap_err()
        .to_string();
    assert!(err.contains("absent.safetensors"), "{err}");
}

#[test]
fn restore_refuses_a_checkpoint_of_another_shape_and_changes_nothing() {
    let dev = Device::Cpu;
    let varmap = trained_varmap(&dev);
    let before: HashMap<String, Vec<u32>> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), bits(v.as_tensor())))
        .collect();
    let mut tensors: HashMap<String, Tensor> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), (v.as_tensor() + 1.0).unwrap()))
        .collect();
    tensors.insert(
        "head.weight".into(),
        Tensor::zeros((21, 4), DType::F32, &dev).unwrap(),
    );
    tensors.remove("bn.running_var");
    let err = checkpoint::restore_varmap(&varmap, &tensors)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("head.weight") && err.contains("bn.running_var"),
        "{err}"
    );
    for (name, var) in varmap.data().lock().unwrap().iter() {
        assert_eq!(
            bits(var.as_tensor()),
            before[name],
            "{name} changed by a refused restore"
        );
    }
}
