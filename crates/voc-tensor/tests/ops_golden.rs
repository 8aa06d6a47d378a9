//! Every op case of `tests/data/ops.safetensors` (PyTorch, float64, stored f32; a copy of
//! `shared/reference/ops.safetensors`, see tests/data/SOURCES.md): forward and every stored input gradient
//! `dxI = d sum(y * g) / d xI` must match to a relative error of 1e-4.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use voc_tensor::nn::BatchNorm2d;
use voc_tensor::ops::{self, Padding};
use voc_tensor::testing::{load_golden, rel_err};

const TOL: f32 = 1e-4;

/// The cases this file checks, with the PyTorch call each one reproduces.
const CASES: &[&str] = &[
    "avgpool_k3s2p1",
    "batchnorm_train",
    "bce_logits",
    "bce_logits_pos_weight",
    "bilinear_down_ac0",
    "bilinear_up_ac0",
    "bilinear_up_ac1",
    "bilinear_x4_ac1",
    "ce_ignore255",
    "ce_ignore255_weighted",
    "conv_s2_odd",
    "conv_s2_tfsame",
    "depthwise_s1_d1",
    "depthwise_s1_d2",
    "depthwise_s2_d1",
    "depthwise_s2_d2",
    "maxpool_k3s2p0",
    "maxpool_k3s2p1",
    "nearest_mask_resize",
    "relu6",
];

/// Computes case `name` from its inputs on `device`; float inputs are `Var`s so gradients can be taken.
fn run_case(name: &str, x: &[Tensor]) -> voc_tensor::Result<Tensor> {
    match name {
        "avgpool_k3s2p1" => ops::avg_pool2d(&x[0], 3, 2, 1),
        "maxpool_k3s2p0" => ops::max_pool2d(&x[0], 3, 2, 0),
        "maxpool_k3s2p1" => ops::max_pool2d(&x[0], 3, 2, 1),
        "bce_logits" => ops::bce_with_logits(&x[0], &x[1], None),
        "bce_logits_pos_weight" => ops::bce_with_logits(&x[0], &x[1], Some(&x[2])),
        "bilinear_down_ac0" => ops::resize_bilinear(&x[0], 4, 5, false),
        "bilinear_up_ac0" => ops::resize_bilinear(&x[0], 13, 20, false),
        "bilinear_up_ac1" => ops::resize_bilinear(&x[0], 13, 20, true),
        "bilinear_x4_ac1" => ops::resize_bilinear(&x[0], 25, 33, true),
        "ce_ignore255" => ops::cross_entropy_2d(&x[0], &x[1], None, Some(255)),
        "ce_ignore255_weighted" => ops::cross_entropy_2d(&x[0], &x[1], Some(&x[2]), Some(255)),
        "conv_s2_odd" => ops::conv2d(&x[0], &x[1], None, 2, Padding::same(1), 1, 1),
        "conv_s2_tfsame" => {
            let pad = ops::tf_same_padding(x[0].dim(2)?, x[0].dim(3)?, 3, 2, 1);
            assert_eq!(
                pad,
                Padding {
                    top: 1,
                    bottom: 1,
                    left: 0,
                    right: 1
                },
                "TF SAME on 9x10"
            );
            ops::conv2d(&x[0], &x[1], None, 2, pad, 1, 1)
        }
        "depthwise_s1_d1" => ops::conv2d(&x[0], &x[1], Some(&x[2]), 1, Padding::same(1), 1, 6),
        "depthwise_s1_d2" => ops::conv2d(&x[0], &x[1], Some(&x[2]), 1, Padding::same(2), 2, 6),
        "depthwise_s2_d1" => ops::conv2d(&x[0], &x[1], Some(&x[2]), 2, Padding::same(1), 1, 6),
        "depthwise_s2_d2" => ops::conv2d(&x[0], &x[1], Some(&x[2]), 2, Padding::same(2), 2, 6),
        "nearest_mask_resize" => ops::resize_nearest(&x[0], 11, 4),
        "relu6" => ops::relu6(&x[0]),
        other => panic!("no implementation for case {other}"),
    }
}

fn inputs_of(golden: &HashMap<String, Tensor>, name: &str, device: &Device) -> Vec<Tensor> {
    (0..)
        .map_while(|i| golden.get(&format!("{name}.x{i}")))
        .map(|t| t.to_device(device).unwrap())
        .collect()
}

/// Runs one case: forward against `NAME.y`, then every `NAME.dxI` present against the gradient.
fn check_case(golden: &HashMap<String, Tensor>, name: &str, device: &Device) {
    let raw = inputs_of(golden, name, device);
    assert!(!raw.is_empty(), "{name}: no inputs in the golden file");
    let vars: Vec<Option<Var>> = raw
        .iter()
        .map(|t| (t.dtype() == DType::F32).then(|| Var::from_tensor(t).unwrap()))
        .collect();
    let inputs: Vec<Tensor> = raw
        .iter()
        .zip(&vars)
        .map(|(t, v)| {
            v.as_ref()
                .map(|v| v.as_tensor().clone())
                .unwrap_or(t.clone())
        })
        .collect();

    let (y, grad_sources): (Tensor, Vec<Option<Tensor>>) = if name == "batchnorm_train" {
        // F.batch_norm(x0, None, None, weight=x1, bias=x2, training=True, eps=1e-3)
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        let bn = BatchNorm2d::new(vb, raw[1].elem_count(), 1e-3, 0.1).unwrap();
        let all = varmap.data().lock().unwrap().clone();
        all["weight"].set(&raw[1]).unwrap();
        all["bias"].set(&raw[2]).unwrap();
        let y = bn.forward_t(&inputs[0], true).unwrap();
        (
            y,
            vec![
                Some(inputs[0].clone()),
                Some(bn.weight().clone()),
                Some(bn.bias().clone()),
            ],
        )
    } else {
        let y = run_case(name, &inputs).unwrap_or_else(|e| panic!("{name}: forward failed: {e}"));
        (y, inputs.iter().map(|t| Some(t.clone())).collect())
    };

    let want_y = &golden[&format!("{name}.y")];
    let got_y = y
        .to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    assert_eq!(got_y.dims(), want_y.dims(), "{name}: output shape");
    let e = rel_err(&got_y, want_y).unwrap();
    assert!(e <= TOL, "{name}: forward relative error {e:e} > {TOL:e}");

    let g = golden[&format!("{name}.g")].to_device(device).unwrap();
    let loss = (y * g).unwrap().sum_all().unwrap();
    let grads = loss
        .backward()
        .unwrap_or_else(|err| panic!("{name}: backward failed: {err}"));
    let mut checked = 0;
    for (i, src) in grad_sources.iter().enumerate() {
        let Some(want) = golden.get(&format!("{name}.dx{i}")) else {
            continue;
        };
        let src = src.as_ref().unwrap();
        let got = grads
            .get(src)
            .unwrap_or_else(|| panic!("{name}: no gradient for x{i}"));
        let got = got.to_device(&Device::Cpu).unwrap();
        assert_eq!(got.dims(), want.dims(), "{name}: dx{i} shape");
        let e = rel_err(&got, want).unwrap();
        assert!(e <= TOL, "{name}: dx{i} relative error {e:e} > {TOL:e}");
        checked += 1;
    }
    assert!(
        checked > 0 || name.starts_with("nearest"),
        "{name}: no gradient compared"
    );
}

/// `tests/data/NAME`, vendored with the crate so these tests run on every checkout.
fn data_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn golden() -> HashMap<String, Tensor> {
    load_golden(&data_file("ops.safetensors")).unwrap()
}

#[test]
fn every_reference_case_is_covered() {
    let text = std::fs::read_to_string(data_file("ops.json")).unwrap();
    let calls: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).unwrap();
    for name in calls.keys() {
        assert!(
            CASES.contains(&name.as_str()),
            "reference case {name} ({}) has no test",
            calls[name]
        );
    }
}

macro_rules! golden_cases {
    ($($test:ident => $case:literal),* $(,)?) => {$(
        #[test]
        fn $test() {
            check_case(&golden(), $case, &Device::Cpu);
        }
    )*};
}

golden_cases! {
    avgpool_k3s2p1 => "avgpool_k3s2p1",
    batchnorm_train => "batchnorm_train",
    bce_logits => "bce_logits",
    bce_logits_pos_weight => "bce_logits_pos_weight",
    bilinear_down_ac0 => "bilinear_down_ac0",
    bilinear_up_ac0 => "bilinear_up_ac0",
    bilinear_up_ac1 => "bilinear_up_ac1",
    bilinear_x4_ac1 => "bilinear_x4_ac1",
    ce_ignore255 => "ce_ignore255",
    ce_ignore255_weighted => "ce_ignore255_weighted",
    conv_s2_odd => "conv_s2_odd",
    conv_s2_tfsame => "conv_s2_tfsame",
    depthwise_s1_d1 => "depthwise_s1_d1",
    depthwise_s1_d2 => "depthwise_s1_d2",
    depthwise_s2_d1 => "depthwise_s2_d1",
    depthwise_s2_d2 => "depthwise_s2_d2",
    maxpool_k3s2p0 => "maxpool_k3s2p0",
    maxpool_k3s2p1 => "maxpool_k3s2p1",
    nearest_mask_resize => "nearest_mask_resize",
    relu6 => "relu6",
}

/// The same cases on CUDA when this build and machine have one (the CPU-kernel-free code paths).
#[test]
fn every_case_on_cuda_when_available() {
    if !voc_tensor::device::cuda_available() {
        eprintln!("SKIPPED every_case_on_cuda_when_available: no CUDA device in this build");
        return;
    }
    let golden = golden();
    let device = Device::new_cuda(0).unwrap();
    for name in CASES {
        check_case(&golden, name, &device);
    }
}
