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
