//! The attack steps on small models whose gradients are known in closed form, the budgets and bounds,
//! seeds, batches and bad input.
use candle_core::{DType, Device, Tensor};
use voc_attack::{attack, AttackConfig, AttackError, Norm, Objective};

/// A linear classifier `x (N x 4) -> x W (N x 2)`; with two classes the input gradient of the
/// cross-entropy of class y is `(p_y - 1) (w_y - w_other)`: always along `w_other - w_y`.
fn linear() -> (Tensor, impl Fn(&Tensor) -> candle_core::Result<Tensor>) {
    let w = Tensor::new(
        &[[1.0f32, -2.0], [0.5, 0.25], [-1.5, 1.0], [0.0, 3.0]],
        &Device::Cpu,
    )
    .unwrap();
    let model = {
        let w = w.clone();
        move |x: &Tensor| x.matmul(&w)
    };
    (w, model)
}

/// Never lower from one step to the next, and higher at the end: once the budget is spent the loss
/// stays where it is.
fn climbs(losses: &[f32]) -> bool {
    losses.windows(2).all(|w| w[1] >= w[0] - 1e-6) && losses[losses.len() - 1] > losses[0]
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn input() -> Tensor {
    Tensor::new(
        &[[0.2f32, 0.5, 0.9, 0.4], [0.6, 0.1, 0.3, 0.8]],
        &Device::Cpu,
    )
    .unwrap()
}

#[test]
fn fgsm_steps_by_epsilon_along_the_sign_of_the_closed_form_gradient() {
    let (_, model) = linear();
    let x = input();
    // Class 1 for both rows: direction w_0 - w_1 = [3, 0.25, -2.5, -3].
    let objective = Objective::CrossEntropy {
        classes: vec![1, 1],
    };
    let eps = 0.05;
    let out = attack(&model, &objective, &x, &AttackConfig::fgsm(eps)).unwrap();
    let sign = [1.0f32, 1.0, -1.0, -1.0];
    let expected: Vec<f32> = values(&x)
        .iter()
        .enumerate()
        .map(|(i, v)| (v + eps as f32 * sign[i % 4]).clamp(0.0, 1.0))
        .collect();
    let got = values(&out.adversarial);
    for (g, e) in got.iter().zip(&expected) {
        assert!((g - e).abs() < 1e-6, "{got:?} vs {expected:?}");
    }
    assert!(out.losses[1] > out.losses[0]);
    assert_eq!(out.losses.len(), 2);
    for l in &out.linf {
        assert!((l - eps as f32).abs() < 1e-6);
    }
}

#[test]
fn l2_pgd_ends_on_the_budget_sphere_along_the_gradient_direction() {
    let (_, model) = linear();
    let x = input();
    let objective = Objective::CrossEntropy {
        classes: vec![1, 1],
    };
    let eps = 0.3;
    let mut config = AttackConfig::pgd(Norm::L2, eps, 0.1, 10);
    config.bounds = (-10.0, 10.0);
    let out = attack(&model, &objective, &x, &config).unwrap();
    let d = [3.0f32, 0.25, -2.5, -3.0];
    let norm = d.iter().map(|v| v * v).sum::<f32>().sqrt();
    let got = values(&(&out.adversarial - &x).unwrap());
    for (i, g) in got.iter().enumerate() {
        let e = eps as f32 * d[i % 4] / norm;
        assert!((g - e).abs() < 1e-5, "{got:?}");
    }
    for (l2, linf) in out.l2.iter().zip(&out.linf) {
        assert!((l2 - eps as f32).abs() < 1e-5, "{l2}");
        assert!(*linf <= eps as f32);
    }
    // Each step climbs the loss until the perturbation reaches the sphere (after 3 steps of 0.1).
    assert!(
        out.losses[..4].windows(2).all(|w| w[1] > w[0]),
        "{:?}",
        out.losses
    );
    assert!(
        out.losses[3..]
            .windows(2)
            .all(|w| (w[1] - w[0]).abs() < 1e-5),
        "{:?}",
        out.losses
    );
}

#[test]
fn targeted_attack_descends_towards_the_target_class() {
    let (_, model) = linear();
    let x = input();
    let objective = Objective::CrossEntropy {
        classes: vec![0, 0],
    };
    let config = AttackConfig::pgd(Norm::Linf, 0.2, 0.05, 6).targeted();
    let out = attack(&model, &objective, &x, &config).unwrap();
    assert!(
        out.losses.windows(2).all(|w| w[1] <= w[0]),
        "{:?}",
        out.losses
    );
    assert!(out.losses.last().unwrap() < &out.losses[0]);
}

#[test]
fn budgets_and_bounds_hold_from_random_starts_and_seeds_reproduce() {
    let (_, model) = linear();
    let x = input();
    let objective = Objective::CrossEntropy {
        classes: vec![0, 1],
    };
    for norm in [Norm::Linf, Norm::L2] {
        for seed in 0..5 {
            let config = AttackConfig::pgd(norm, 0.15, 0.07, 4).with_random_start(seed);
            let out = attack(&model, &objective, &x, &config).unwrap();
            let again = attack(&model, &objective, &x, &config).unwrap();
            assert_eq!(values(&out.adversarial), values(&again.adversarial));
            for v in values(&out.adversarial) {
                assert!((0.0..=1.0).contains(&v), "{v} out of bounds");
            }
            let budget = match norm {
                Norm::Linf => &out.linf,
                Norm::L2 => &out.l2,
            };
            assert!(
                budget.iter().all(|b| *b <= 0.15 + 1e-6),
                "{norm:?}: {budget:?}"
            );
            // Without steps, a random start is a point of the ball that is not the centre.
            let start = AttackConfig::pgd(norm, 0.15, 0.07, 0).with_random_start(seed);
            let start = attack(&model, &objective, &x, &start).unwrap();
            assert!(start.l2.iter().all(|&d| d > 0.0));
            let other = AttackConfig::pgd(norm, 0.15, 0.07, 0).with_random_start(seed + 100);
            let other = attack(&model, &objective, &x, &other).unwrap();
            assert_ne!(values(&start.adversarial), values(&other.adversarial));
        }
    }
}

#[test]
fn a_batch_attacks_as_its_images_do_alone() {
    let (_, model) = linear();
    let x = input();
    for norm in [Norm::Linf, Norm::L2] {
        let config = AttackConfig::pgd(norm, 0.2, 0.05, 5);
        let both = attack(
            &model,
            &Objective::CrossEntropy {
                classes: vec![0, 1],
            },
            &x,
            &config,
        )
        .unwrap();
        for (row, class) in [(0usize, 0u32), (1, 1)] {
            let alone = attack(
                &model,
                &Objective::CrossEntropy {
                    classes: vec![class],
                },
                &x.narrow(0, row, 1).unwrap(),
                &config,
            )
            .unwrap();
            let a = values(&both.adversarial.narrow(0, row, 1).unwrap());
            let b = values(&alone.adversarial);
            for (p, q) in a.iter().zip(&b) {
                assert!((p - q).abs() < 1e-6, "{norm:?} row {row}: {a:?} vs {b:?}");
            }
        }
    }
}

#[test]
fn multi_label_and_segmentation_objectives_climb_their_losses() {
    // Multi-label: 4 features -> 2 labels, both present.
    let (_, model) = linear();
    let x = input();
    let targets = Tensor::ones((2, 2), DType::F32, &Device::Cpu).unwrap();
    let out = attack(
        &model,
        &Objective::MultiLabel { targets },
        &x,
        &AttackConfig::pgd(Norm::Linf, 0.1, 0.05, 3),
    )
    .unwrap();
    assert!(climbs(&out.losses), "{:?}", out.losses);

    // Segmentation: a 1x1 conv as a per-pixel linear map 3 -> 2 classes at half resolution, upsampled.
    let w = Tensor::new(&[[1.0f32, -1.0, 0.5], [-0.5, 1.0, 1.0]], &Device::Cpu)
        .unwrap()
        .reshape((2, 3, 1, 1))
        .unwrap();
    let seg = move |x: &Tensor| -> candle_core::Result<Tensor> {
        x.conv2d(&w, 0, 1, 1, 1)?.avg_pool2d(2)
    };
    let image = Tensor::rand(0f32, 1.0, (1, 3, 8, 8), &Device::Cpu).unwrap();
    let mut mask = vec![1u8; 64];
    mask[..8].fill(255); // ignored row
    let mask = Tensor::from_vec(mask, (1, 8, 8), &Device::Cpu).unwrap();
    let out = attack(
        &seg,
        &Objective::segmentation(mask),
        &image,
        &AttackConfig::pgd(Norm::Linf, 0.1, 0.03, 3),
    )
    .unwrap();
    assert!(climbs(&out.losses), "{:?}", out.losses);
}

#[test]
fn bad_configs_and_inputs_are_clear_errors() {
    let (_, model) = linear();
    let x = input();
    let objective = Objective::CrossEntropy {
        classes: vec![0, 1],
    };
    let mut bad = AttackConfig::fgsm(-0.1);
    let err = attack(&model, &objective, &x, &bad).unwrap_err();
    assert!(
        matches!(
            err,
            AttackError::BadConfig {
                field: "epsilon",
                ..
            }
        ),
        "{err}"
    );
    bad = AttackConfig::fgsm(0.1);
    bad.step_size = f64::NAN;
    let err = attack(&model, &objective, &x, &bad).unwrap_err();
    assert!(err.to_string().contains("step_size"), "{err}");
    bad = AttackConfig::fgsm(0.1);
    bad.bounds = (1.0, 0.0);
    let err = attack(&model, &objective, &x, &bad).unwrap_err();
    assert!(err.to_string().contains("bounds"), "{err}");

    let config = AttackConfig::fgsm(0.1);
    let err = attack(
        &model,
        &Objective::CrossEntropy {
            classes: vec![0, 7],
        },
        &x,
        &config,
    )
    .unwrap_err();
    assert!(err.to_string().contains("class 7 is not in 0..2"), "{err}");
    let err = attack(
        &model,
        &Objective::CrossEntropy { classes: vec![0] },
        &x,
        &config,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("1 classes for a batch of 2"),
        "{err}"
    );
    let targets = Tensor::ones((2, 3), DType::F32, &Device::Cpu).unwrap();
    let err = attack(&model, &Objective::MultiLabel { targets }, &x, &config).unwrap_err();
    assert!(err.to_string().contains("do not match logits"), "{err}");
    let mask = Tensor::zeros((2, 4), DType::U8, &Device::Cpu).unwrap();
    let err = attack(&model, &Objective::segmentation(mask), &x, &config).unwrap_err();
    assert!(err.to_string().contains("N x C x H x W"), "{err}");

    // A model whose output ignores its input.
    let constant = |x: &Tensor| Tensor::zeros((x.dim(0)?, 2), DType::F32, &Device::Cpu);
    let err = attack(&constant, &objective, &x, &config).unwrap_err();
    assert!(
        err.to_string()
            .contains("does not depend on the model's input"),
        "{err}"
    );
    // A model that fails keeps its own message.
    let failing = |x: &Tensor| x.reshape((3, 3));
    let err = attack(&failing, &objective, &x, &config).unwrap_err();
    assert!(matches!(err, AttackError::Model(_)), "{err}");
    let empty = Tensor::zeros((0, 4), DType::F32, &Device::Cpu).unwrap();
    let err = attack(&model, &objective, &empty, &config).unwrap_err();
    assert!(err.to_string().contains("non-empty batch"), "{err}");
}

/// MI-FGSM follows the accumulated, L1-normalised gradient. Loss `-5 (x0 - 0.57)² + x1` from x = (0.5,
/// 0.5), steps of 0.1: the first gradient is (0.7, 1); after the step x0 = 0.6 is past the peak and its
/// gradient turns to -0.3. Plain PGD steps x0 back to 0.5; with momentum 1 the accumulated value
/// 0.7/0.85 - 0.3/0.65 stays positive and x0 goes on to 0.7. x1 climbs either way.
#[test]
fn momentum_keeps_the_direction_of_earlier_steps() {
    let x = Tensor::new(&[[0.5f32, 0.5]], &Device::Cpu).unwrap();
    let identity = |x: &Tensor| -> candle_core::Result<Tensor> { Ok(x.clone()) };
    let loss = |logits: &Tensor| -> voc_attack::Result<Tensor> {
        let x0 = logits.narrow(1, 0, 1)?;
        let x1 = logits.narrow(1, 1, 1)?;
        let peak = ((x0 - 0.57)?.sqr()? * -5.0)?;
        Ok((peak + x1)?.sum_all()?)
    };
    let pgd = AttackConfig::pgd(Norm::Linf, 0.3, 0.1, 2);
    let plain = values(&attack(&identity, &loss, &x, &pgd).unwrap().adversarial);
    let mi = values(
        &attack(&identity, &loss, &x, &pgd.clone().with_momentum(1.0))
            .unwrap()
            .adversarial,
    );
    assert!(
        (plain[0] - 0.5).abs() < 1e-6 && (plain[1] - 0.7).abs() < 1e-6,
        "{plain:?}"
    );
    assert!(
        (mi[0] - 0.7).abs() < 1e-6 && (mi[1] - 0.7).abs() < 1e-6,
        "{mi:?}"
    );
    // Decay 0 is plain PGD (the normalisation does not change a sign).
    let zero = values(
        &attack(&identity, &loss, &x, &pgd.with_momentum(0.0))
            .unwrap()
            .adversarial,
    );
    assert_eq!(zero, plain);
    assert!(AttackConfig::fgsm(0.1)
        .with_momentum(-1.0)
        .validate()
        .is_err());
}

/// The universal perturbation: one delta inside the budget that raises the loss of every batch, and
/// batches of different image sizes refused.
#[test]
fn universal_perturbation_is_one_delta_within_the_budget_for_every_batch() {
    let (_, model) = linear();
    let x = input();
    let objective = Objective::CrossEntropy {
        classes: vec![1, 1],
    };
    // Two batches of one image each, both of class 1.
    let batches: Vec<(Tensor, Objective)> = (0..2)
        .map(|i| {
            (
                x.narrow(0, i, 1).unwrap(),
                Objective::CrossEntropy { classes: vec![1] },
            )
        })
        .collect();
    let config = AttackConfig::pgd(Norm::L2, 0.2, 0.05, 1);
    let delta = voc_attack::universal_perturbation(&model, &batches, &config, 5).unwrap();
    assert_eq!(delta.dims(), [1, 4]);
    let norm: f32 = values(&delta).iter().map(|v| v * v).sum::<f32>().sqrt();
    assert!(norm <= 0.2 + 1e-5 && norm > 0.15, "L2 norm {norm}");
    use voc_attack::Loss;
    for (x, objective) in &batches {
        let before = objective
            .loss(&model(x).unwrap())
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let moved = x.broadcast_add(&delta).unwrap().clamp(0.0, 1.0).unwrap();
        let after = objective
            .loss(&model(&moved).unwrap())
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(after > before, "{before} -> {after}");
    }
    let odd = vec![
        (x.clone(), objective.clone()),
        (
            Tensor::zeros((1, 3), DType::F32, &Device::Cpu).unwrap(),
            objective,
        ),
    ];
    let err = voc_attack::universal_perturbation(&model, &odd, &config, 1).unwrap_err();
    assert!(err.to_string().contains("one size"), "{err}");
}
