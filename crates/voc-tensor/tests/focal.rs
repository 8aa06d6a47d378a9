//! `ops::sigmoid_focal_loss` against PyTorch (`tests/data/focal.json`: torchvision's formula written out
//! in torch, float64, with an optional BCEWithLogits `pos_weight`; the generator script is in
//! `tests/data/SOURCES.md`): the mean loss and `d loss / d logits` to a relative error of 1e-5. Also:
//! `gamma = 0` without `alpha` is exactly `bce_with_logits`, and logits of ±100 and beyond give finite
//! values and gradients.
use std::path::Path;

use candle_core::{Device, Tensor, Var};
use serde_json::Value;
use voc_tensor::ops::{bce_with_logits, sigmoid_focal_loss};
use voc_tensor::testing::rel_err;

const TOL: f32 = 1e-5;

fn matrix(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("an array of rows")
        .iter()
        .flat_map(|row| row.as_array().expect("a row").iter())
        .map(|x| x.as_f64().expect("a number") as f32)
        .collect()
}

fn golden() -> anyhow::Result<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/focal.json");
    Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
}

#[test]
fn focal_loss_matches_pytorch_value_and_gradient() -> anyhow::Result<()> {
    let g = golden()?;
    let shape: Vec<usize> = g["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    let dev = Device::Cpu;
    let logits = Var::from_tensor(&Tensor::from_vec(
        matrix(&g["logits"]),
        shape.as_slice(),
        &dev,
    )?)?;
    let targets = Tensor::from_vec(matrix(&g["targets"]), shape.as_slice(), &dev)?;
    let cases = g["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 4);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let gamma = case["gamma"].as_f64().unwrap();
        let alpha = case["alpha"].as_f64();
        let pos_weight = match case["pos_weight"].as_array() {
            Some(w) => Some(Tensor::from_vec(
                w.iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect::<Vec<_>>(),
                w.len(),
                &dev,
            )?),
            None => None,
        };
        let loss = sigmoid_focal_loss(
            logits.as_tensor(),
            &targets,
            gamma,
            alpha,
            pos_weight.as_ref(),
        )?;
        let want = case["loss"].as_f64().unwrap();
        let value = loss.to_scalar::<f32>()? as f64;
        let err = ((value - want) / want).abs();
        assert!(
            err < TOL as f64,
            "{name}: loss {value} vs PyTorch {want} ({err:.2e})"
        );
        let grad = loss
            .backward()?
            .get(logits.as_tensor())
            .expect("a gradient for the logits")
            .clone();
        let want_grad = Tensor::from_vec(matrix(&case["grad"]), shape.as_slice(), &dev)?;
        let err = rel_err(&grad, &want_grad)?;
        assert!(err < TOL, "{name}: gradient differs by {err:.2e}");
    }
    Ok(())
}

#[test]
fn gamma_zero_without_alpha_is_bce() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let logits = Var::new(
        &[[3.0f32, -1.5, 0.0, 40.0], [-100.0, 0.25, 7.0, -2.0]],
        &dev,
    )?;
    let targets = Tensor::new(&[[1f32, 0., 1., 0.], [1., 1., 0., 0.]], &dev)?;
    let pw = Tensor::new(&[0.5f32, 2.0, 3.0, 1.0], &dev)?;
    for pos_weight in [None, Some(&pw)] {
        let focal = sigmoid_focal_loss(logits.as_tensor(), &targets, 0.0, None, pos_weight)?;
        let bce = bce_with_logits(logits.as_tensor(), &targets, pos_weight)?;
        assert_eq!(focal.to_scalar::<f32>()?, bce.to_scalar::<f32>()?);
        let gf = focal.backward()?.get(logits.as_tensor()).unwrap().clone();
        let gb = bce.backward()?.get(logits.as_tensor()).unwrap().clone();
        assert_eq!(
            gf.flatten_all()?.to_vec1::<f32>()?,
            gb.flatten_all()?.to_vec1::<f32>()?
        );
    }
    Ok(())
}

#[test]
fn focal_loss_is_finite_at_extreme_logits() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    // ±100 (1 - p_t is e^-100, an f32 denormal) and ±200 (it underflows to 0), right and wrong.
    let logits = Var::new(
        &[[100f32, -100., 100., -100., 200., -200., 200., -200., 0.]],
        &dev,
    )?;
    let targets = Tensor::new(&[[1f32, 0., 0., 1., 1., 0., 0., 1., 1.]], &dev)?;
    let pw = Tensor::new(&[2f32], &dev)?;
    for gamma in [0.0, 0.5, 1.0, 2.0, 3.5] {
        for alpha in [None, Some(0.25)] {
            for pos_weight in [None, Some(&pw)] {
                let loss =
                    sigmoid_focal_loss(logits.as_tensor(), &targets, gamma, alpha, pos_weight)?;
                let value = loss.to_scalar::<f32>()?;
                let grad = loss.backward()?.get(logits.as_tensor()).unwrap().clone();
                let grad = grad.flatten_all()?.to_vec1::<f32>()?;
                let what = format!("gamma {gamma}, alpha {alpha:?}, pos_weight {pos_weight:?}");
                assert!(value.is_finite(), "{what}: loss {value}");
                assert!(grad.iter().all(|g| g.is_finite()), "{what}: {grad:?}");
                // The confidently wrong logits dominate: (1 - p_t) = 1 there, loss = |x| · weights.
                let pw = if pos_weight.is_some() { 2.0 } else { 1.0 };
                let (a_pos, a_neg) = alpha.map_or((1.0, 1.0), |a| (a, 1.0 - a));
                let wrong = a_neg * (100.0 + 200.0) + a_pos * pw * (100.0 + 200.0);
                let middle = a_pos * pw * std::f64::consts::LN_2 * 0.5f64.powf(gamma);
                let want = ((wrong + middle) / 9.0) as f32;
                assert!(
                    (value - want).abs() < 1e-4 * want,
                    "{what}: {value} vs {want}"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn focal_loss_rejects_bad_arguments() {
    let dev = Device::Cpu;
    let x = Tensor::zeros((2, 3), candle_core::DType::F32, &dev).unwrap();
    assert!(sigmoid_focal_loss(&x, &x, -1.0, None, None).is_err());
    assert!(sigmoid_focal_loss(&x, &x, f64::NAN, None, None).is_err());
    assert!(sigmoid_focal_loss(&x, &x, 2.0, Some(f64::INFINITY), None).is_err());
    let t = Tensor::zeros((3, 2), candle_core::DType::F32, &dev).unwrap();
    assert!(sigmoid_focal_loss(&x, &t, 2.0, None, None).is_err());
    let pw = Tensor::ones(2, candle_core::DType::F32, &dev).unwrap();
    assert!(sigmoid_focal_loss(&x, &x, 2.0, Some(0.25), Some(&pw)).is_err());
}
