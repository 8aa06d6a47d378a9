//! The MobileNetV2 classifier in training mode against the PyTorch twin's first SGD step
//! (`shared/reference/train_mobilenet_v2*.safetensors`: a new 20-label head, BN with batch statistics,
//! BCE-with-logits).
//!
//! That reference is degenerate: its init file carries the hub file's folded batch norms (weight 1, bias
//! b), and `conv_1x1`'s biases are all <= -3.69. In training mode batch norm first standardises each
//! channel over the batch (16 values here: 4 images x 2x2), so every value stays below 0 and ReLU6 zeroes
//! the whole 1280-d feature: the reference logits and all four gradients are exactly 0 and the loss is
//! ln 2 at every step. The test still fails if batch norm used the running statistics in training mode
//! (the logits would not be 0) or if a head or loss were wrong, but it cannot check the gradients' values.
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use voc_classify::{
    ClassifierArch, ClassifierConfig, FromWeights, ImageClassifier, MobileNetV2Config,
};
use voc_tensor::hub::load_tensors;
use voc_tensor::ops::bce_with_logits;
use voc_tensor::testing::{load_golden, rel_err};

#[test]
fn mobilenet_v2_matches_training_step0() -> anyhow::Result<()> {
    let Some([golden_path, init_path]) = voc_core::testing::shared_files(
        "mobilenet_v2_matches_training_step0",
        [
            "reference/train_mobilenet_v2.safetensors",
            "reference/train_mobilenet_v2.init.safetensors",
        ],
    ) else {
        return Ok(());
    };
    let golden = load_golden(&golden_path)?;
    let varmap = VarMap::new();
    let config = ClassifierConfig {
        arch: ClassifierArch::MobileNetV2(MobileNetV2Config::default()),
        num_classes: 20,
        dropout: 0.0,
        head: voc_classify::HeadKind::Linear,
    };
    let model = ImageClassifier::trainable_from_tensors(
        &varmap,
        load_tensors(&init_path, &Device::Cpu)?,
        &init_path.display().to_string(),
        config,
        &Device::Cpu,
    )?;
    let x = golden["x"].get(0)?;
    let y = golden["y"].get(0)?;
    let logits = model.forward_t(&x, true)?;
    let err = rel_err(&logits, &golden["step0.logits"])?;
    eprintln!("step0 logits: max |diff| / max |logit| = {err:.2e}");
    assert!(err <= 1e-3, "step0 logits relative error {err:.2e}");

    let loss = bce_with_logits(&logits, &y, None)?;
    let (ours, theirs) = (
        loss.to_scalar::<f32>()?,
        golden["losses"].get(0)?.to_scalar::<f32>()?,
    );
    eprintln!("step0 loss {ours} (reference {theirs})");
    assert!((ours - theirs).abs() <= 1e-4 * theirs.abs().max(1.0));

    let grads = loss.backward()?;
    let vars = varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    let mut checked = 0;
    for name in golden.keys().filter_map(|k| k.strip_prefix("step0.grad.")) {
        let var = vars
            .get(name)
            .ok_or_else(|| anyhow::anyhow!("no variable {name}"))?;
        let grad: &Tensor = grads
            .get(var.as_tensor())
            .ok_or_else(|| anyhow::anyhow!("no gradient for {name}"))?;
        let err = rel_err(grad, &golden[&format!("step0.grad.{name}")])?;
        eprintln!("grad {name}: max |diff| / max |grad| = {err:.2e}");
        assert!(err <= 1e-3, "gradient of {name}: relative error {err:.2e}");
        checked += 1;
    }
    assert!(checked >= 2);
    Ok(())
}

/// The fine-tuning path of `voc train classify` (`Learner` in phase `Finetune`: `--unfreeze all
/// --bn frozen --optimizer sgd --lr 0.01`) against PyTorch's three SGD steps with every batch norm in
/// eval mode and every convolution and the new head trained
/// (`shared/reference/train_mobilenet_v2_frozen_bn.safetensors`).
#[test]
fn trainer_matches_frozen_bn_fine_tuning() -> anyhow::Result<()> {
    use voc_classify::train::{
        BnMode, ClassWeights, Learner, Loss, OptimizerKind, Phase, TrainConfig, TrainMode, Unfreeze,
    };
    use voc_classify::ModelChoice;
    let repo = "google/mobilenet_v2_1.0_224";
    let Some(shared) = voc_core::testing::shared_with(
        "trainer_matches_frozen_bn_fine_tuning",
        &[
            "reference/train_mobilenet_v2_frozen_bn.safetensors".to_string(),
            voc_core::testing::hub_model(repo),
        ],
    ) else {
        return Ok(());
    };
    let device = Device::Cpu;
    let golden = load_golden(&shared.join("reference/train_mobilenet_v2_frozen_bn.safetensors"))?;
    let weights = voc_tensor::testing::shared_hub_file(&shared, repo, "model.safetensors")?;
    let mut values = load_tensors(&weights, &device)?;
    for name in ["classifier.weight", "classifier.bias"] {
        values.insert(name.to_string(), golden[&format!("init.{name}")].clone());
    }
    let config = TrainConfig {
        unfreeze: Unfreeze::All,
        bn: BnMode::Frozen,
        optimizer: OptimizerKind::Sgd,
        lr: 0.01,
        backbone_lr: 0.01,
        weight_decay: 0.0,
        dropout: 0.0,
        class_weights: ClassWeights::None,
        image_size: 96,
        ..TrainConfig::defaults("mobilenet_v2", TrainMode::Finetune, 96)
    };
    let choice = ModelChoice::by_name("mobilenet_v2")?;
    let loss = Loss {
        pos_weight: None,
        focal_gamma: None,
    };
    let mut learner = Learner::new(choice, &config, Phase::Finetune, values, loss, &device)?;
    // Batch norms are frozen: none of their parameters or statistics is a variable.
    let vars = learner.params.varmap.all_vars().len();
    assert_eq!(
        vars,
        51 + 1 + 2,
        "51 backbone convolutions, conv_1x1 and the head's weight and bias"
    );
    let expected_losses = golden["losses"].to_vec1::<f32>()?;
    for (step, &expected) in expected_losses.iter().enumerate() {
        let x = golden["x"].get(step)?;
        let y = golden["y"].get(step)?;
        if step == 0 {
            let logits = learner.eval_logits(&x)?;
            let err = rel_err(&logits, &golden["step0.logits"])?;
            eprintln!("step0 logits: relative error {err:.2e}");
            assert!(err <= 1e-3, "step0 logits: relative error {err:.2e}");
        }
        let (loss, grads) = learner.loss_and_grads(&x, &y)?;
        eprintln!("step {step}: loss {loss} (PyTorch {expected})");
        assert!(
            (loss - expected).abs() <= 1e-4 * expected.abs(),
            "step {step}: loss {loss}, PyTorch {expected}"
        );
        if step == 0 {
            for name in golden.keys().filter_map(|k| k.strip_prefix("step0.grad.")) {
                let var = learner
                    .var(name)
                    .ok_or_else(|| anyhow::anyhow!("{name} is not trained"))?;
                let grad = grads
                    .get(var.as_tensor())
                    .ok_or_else(|| anyhow::anyhow!("no gradient for {name}"))?;
                let err = rel_err(grad, &golden[&format!("step0.grad.{name}")])?;
                eprintln!("step0 grad {name}: relative error {err:.2e}");
                assert!(err <= 1e-3, "gradient of {name}: relative error {err:.2e}");
            }
        }
        learner.apply(&grads)?;
    }
    for name in golden.keys().filter_map(|k| k.strip_prefix("final.")) {
        let var = learner
            .var(name)
            .ok_or_else(|| anyhow::anyhow!("{name} is not trained"))?;
        let err = rel_err(var.as_tensor(), &golden[&format!("final.{name}")])?;
        eprintln!("final {name}: relative error {err:.2e}");
        assert!(err <= 1e-3, "final {name}: relative error {err:.2e}");
    }
    Ok(())
}
