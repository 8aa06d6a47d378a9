//! Fine-tuning with batch norm frozen: eval-mode forwards where the convolution weights are variables
//! and the batch norms constants. `ConvNormAct` then scales the kernel by the batch norm's cached
//! per-channel scale and runs conv + shift + activation fused; the values and the gradients (to the
//! kernel, its bias and the input) must equal the plain composition conv -> (y - mean) / sqrt(var + eps)
//! · gamma + beta -> activation (+ residual), and a whole MobileNetV2 classifier with some layers
//! variable must give the logits of the same network all constant (folded) and all variable (composed).
use std::collections::HashMap;

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{VarBuilder, VarMap};
use voc_classify::layers::{Activation, ConvNormAct, ConvPadding, ConvSpec, NormSpec};
use voc_classify::{ClassifierArch, ClassifierConfig, ImageClassifier, MobileNetV2Config};
use voc_tensor::ops::{self, Padding};
use voc_tensor::testing::rel_err;

const TOL: f32 = 1e-5;

/// A var-builder backend handing out `variables` as themselves (trainable) and `constants` as plain
/// tensors: a network whose weights are part variables, part constants.
struct Mixed {
    constants: HashMap<String, Tensor>,
    variables: HashMap<String, Var>,
}

impl SimpleBackend for Mixed {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        _: DType,
        _: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = match (self.variables.get(name), self.constants.get(name)) {
            (Some(v), _) => v.as_tensor().clone(),
            (None, Some(c)) => c.clone(),
            (None, None) => candle_core::bail!("{name}: not in the test's tensors"),
        };
        if t.shape() != &shape {
            candle_core::bail!("{name}: {:?}, asked for {shape:?}", t.dims());
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("{name}: asked for without a shape")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.constants.contains_key(name) || self.variables.contains_key(name)
    }
}

/// Deterministic values in `[lo, hi)` of `shape`; `seed` makes different tensors differ.
fn values(shape: &[usize], lo: f32, hi: f32, seed: usize) -> Tensor {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|i| {
            let u = ((i * 7919 + seed * 104_729 + 13) % 1009) as f32 / 1009.0;
            lo + (hi - lo) * u
        })
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

/// Non-trivial batch-norm tensors of `channels` values named `{prefix}weight` etc.
fn batch_norm_tensors(prefix: &str, channels: usize, seed: usize) -> Vec<(String, Tensor)> {
    [
        ("weight", 0.5, 1.5),
        ("bias", -0.3, 0.3),
        ("running_mean", -0.4, 0.4),
        ("running_var", 0.3, 2.0),
    ]
    .into_iter()
    .enumerate()
    .map(|(k, (name, lo, hi))| {
        (
            format!("{prefix}{name}"),
            values(&[channels], lo, hi, seed * 4 + k),
        )
    })
    .collect()
}

/// One layer under test: its spec, the input size and whether a residual is added.
struct Case {
    name: &'static str,
    spec: ConvSpec,
    input: (usize, usize, usize, usize),
    residual: bool,
}

fn cases() -> Vec<Case> {
    let norm = NormSpec {
        eps: 1e-3,
        momentum: 0.1,
    };
    let mut with_bias = ConvSpec::conv_bn(6, 10, 3, norm, Activation::Relu);
    with_bias.bias = true;
    with_bias.padding = ConvPadding::Symmetric(1);
    vec![
        Case {
            name: "pointwise relu6",
            spec: ConvSpec::conv_bn(8, 12, 1, norm, Activation::Relu6),
            input: (2, 8, 7, 6),
            residual: false,
        },
        Case {
            name: "pointwise projection + residual",
            spec: ConvSpec::conv_bn(12, 8, 1, norm, Activation::Identity),
            input: (2, 12, 7, 6),
            residual: true,
        },
        Case {
            name: "depthwise 3x3 stride 1",
            spec: ConvSpec::conv_bn(8, 8, 3, norm, Activation::Relu6).depthwise(),
            input: (2, 8, 9, 7),
            residual: false,
        },
        Case {
            name: "depthwise 3x3 stride 2 TF-SAME",
            spec: ConvSpec::conv_bn(8, 8, 3, norm, Activation::Relu6)
                .depthwise()
                .stride(2),
            input: (2, 8, 11, 8),
            residual: false,
        },
        Case {
            name: "depthwise 3x3 + residual",
            spec: ConvSpec::conv_bn(8, 8, 3, norm, Activation::Identity).depthwise(),
            input: (2, 8, 6, 9),
            residual: true,
        },
        Case {
            name: "3x3 stride 2 TF-SAME",
            spec: ConvSpec::conv_bn(3, 8, 3, norm, Activation::Relu6).stride(2),
            input: (2, 3, 11, 9),
            residual: false,
        },
        Case {
            name: "3x3 with a conv bias, symmetric padding",
            spec: with_bias,
            input: (2, 6, 8, 7),
            residual: false,
        },
    ]
}

/// `(output, d/d weight, d/d bias, d/d x)` of `sum(y · mix)`.
type Result4 = (Tensor, Tensor, Option<Tensor>, Tensor);

fn grads_of(
    y: &Tensor,
    mix: &Tensor,
    weight: &Var,
    bias: Option<&Var>,
    x: &Var,
) -> anyhow::Result<Result4> {
    let grads = (y * mix)?.sum_all()?.backward()?;
    let get = |t: &Tensor| grads.get(t).cloned();
    Ok((
        y.clone(),
        get(weight.as_tensor()).expect("a kernel gradient"),
        bias.map(|b| get(b.as_tensor()).expect("a bias gradient")),
        get(x.as_tensor()).expect("an input gradient"),
    ))
}

/// The plain composition the fused path must reproduce, in the same f32.
#[allow(clippy::too_many_arguments)]
fn composed(
    spec: &ConvSpec,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    bn: &HashMap<String, Tensor>,
    residual: Option<&Tensor>,
) -> anyhow::Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let padding = match spec.padding {
        ConvPadding::TfSame => ops::tf_same_padding(h, w, spec.kernel, spec.stride, spec.dilation),
        ConvPadding::Symmetric(p) => Padding::same(p),
    };
    let y = ops::conv2d(
        x,
        weight,
        bias,
        spec.stride,
        padding,
        spec.dilation,
        spec.groups,
    )?;
    let c = spec.out_channels;
    let per_channel = |name: &str| bn[&format!("bn.{name}")].reshape((1, c, 1, 1));
    let eps = spec.norm.unwrap().eps;
    let y = y
        .broadcast_sub(&per_channel("running_mean")?)?
        .broadcast_div(&(per_channel("running_var")? + eps)?.sqrt()?)?
        .broadcast_mul(&per_channel("weight")?)?
        .broadcast_add(&per_channel("bias")?)?;
    let y = spec.activation.forward(&y)?;
    Ok(match residual {
        Some(r) => (y + r)?,
        None => y,
    })
}

/// The layer of `case` with a variable kernel (and bias) and constant batch-norm tensors `bn`, whose
/// running statistics may be given as variables (to watch them move in training).
fn layer(
    case: &Case,
    weight: &Var,
    bias: Option<&Var>,
    bn: &HashMap<String, Tensor>,
    bn_stats: Option<(&Var, &Var)>,
) -> anyhow::Result<ConvNormAct> {
    let mut variables = HashMap::from([("conv.weight".to_string(), weight.clone())]);
    if let Some(b) = bias {
        variables.insert("conv.bias".into(), b.clone());
    }
    if let Some((mean, var)) = bn_stats {
        variables.insert("bn.running_mean".into(), mean.clone());
        variables.insert("bn.running_var".into(), var.clone());
    }
    let vb = VarBuilder::from_backend(
        Box::new(Mixed {
            constants: bn.clone(),
            variables,
        }),
        DType::F32,
        Device::Cpu,
    );
    Ok(ConvNormAct::new(vb.pp("conv"), vb.pp("bn"), case.spec)?)
}

struct Inputs {
    x: Var,
    weight: Var,
    bias: Option<Var>,
    residual: Option<Tensor>,
    mix: Tensor,
    bn: HashMap<String, Tensor>,
}

fn inputs(case: &Case, seed: usize) -> anyhow::Result<Inputs> {
    let s = &case.spec;
    let (n, c, h, w) = case.input;
    let (oh, ow) = match s.padding {
        ConvPadding::TfSame => (h.div_ceil(s.stride), w.div_ceil(s.stride)),
        ConvPadding::Symmetric(p) => (
            (h + 2 * p - s.kernel) / s.stride + 1,
            (w + 2 * p - s.kernel) / s.stride + 1,
        ),
    };
    let out = [n, s.out_channels, oh, ow];
    let fan_in = s.in_channels / s.groups * s.kernel * s.kernel;
    let bound = (3.0 / fan_in as f32).sqrt();
    Ok(Inputs {
        x: Var::from_tensor(&values(&[n, c, h, w], -2.0, 2.0, seed))?,
        weight: Var::from_tensor(&values(
            &[s.out_channels, s.in_channels / s.groups, s.kernel, s.kernel],
            -bound,
            bound,
            seed + 1,
        ))?,
        bias: match s.bias {
            true => Some(Var::from_tensor(&values(
                &[s.out_channels],
                -0.5,
                0.5,
                seed + 2,
            ))?),
            false => None,
        },
        residual: case.residual.then(|| values(&out, -1.0, 1.0, seed + 3)),
        mix: values(&out, -1.0, 1.0, seed + 4),
        bn: batch_norm_tensors("bn.", s.out_channels, seed + 5)
            .into_iter()
            .collect(),
    })
}

fn assert_close(what: &str, a: &Tensor, b: &Tensor) -> anyhow::Result<()> {
    assert_eq!(a.dims(), b.dims(), "{what}");
    let err = rel_err(a, b)?;
    assert!(err < TOL, "{what}: relative error {err:.2e}");
    Ok(())
}

fn compare(what: &str, fused: &Result4, plain: &Result4) -> anyhow::Result<()> {
    assert_close(&format!("{what}: output"), &fused.0, &plain.0)?;
    assert_close(&format!("{what}: d/d weight"), &fused.1, &plain.1)?;
    if let (Some(a), Some(b)) = (&fused.2, &plain.2) {
        assert_close(&format!("{what}: d/d bias"), a, b)?;
    }
    assert_close(&format!("{what}: d/d x"), &fused.3, &plain.3)
}

#[test]
fn variable_kernel_with_constant_batch_norm_matches_the_composition() -> anyhow::Result<()> {
    for (seed, case) in cases().iter().enumerate() {
        let inp = inputs(case, seed * 10)?;
        let net = layer(case, &inp.weight, inp.bias.as_ref(), &inp.bn, None)?;
        // Twice: the first call computes the batch norm's scale and shift, the second reads them back.
        for call in 0..2 {
            let y = net.forward_residual_t(inp.x.as_tensor(), inp.residual.as_ref(), false)?;
            let fused = grads_of(&y, &inp.mix, &inp.weight, inp.bias.as_ref(), &inp.x)?;
            let y = composed(
                &case.spec,
                inp.x.as_tensor(),
                inp.weight.as_tensor(),
                inp.bias.as_ref().map(|b| b.as_tensor()),
                &inp.bn,
                inp.residual.as_ref(),
            )?;
            let plain = grads_of(&y, &inp.mix, &inp.weight, inp.bias.as_ref(), &inp.x)?;
            compare(&format!("{} (call {call})", case.name), &fused, &plain)?;
        }
        // An optimiser step on the kernel shows at the next call (the kernel is not cached).
        inp.weight.set(
            &(inp.weight.as_tensor() * 0.5)?.broadcast_add(&Tensor::new(0.01f32, &Device::Cpu)?)?,
        )?;
        let y = net.forward_residual_t(inp.x.as_tensor(), inp.residual.as_ref(), false)?;
        let want = composed(
            &case.spec,
            inp.x.as_tensor(),
            inp.weight.as_tensor(),
            inp.bias.as_ref().map(|b| b.as_tensor()),
            &inp.bn,
            inp.residual.as_ref(),
        )?;
        assert_close(&format!("{}: after a kernel update", case.name), &y, &want)?;
    }
    Ok(())
}

/// A training-mode forward moves the running statistics: the next eval-mode forward must use the new
/// ones, not the scale and shift cached before.
#[test]
fn a_training_forward_drops_the_cached_scale_and_shift() -> anyhow::Result<()> {
    for (seed, case) in cases().iter().enumerate() {
        let inp = inputs(case, 100 + seed * 10)?;
        let mean = Var::from_tensor(&inp.bn["bn.running_mean"])?;
        let var = Var::from_tensor(&inp.bn["bn.running_var"])?;
        let net = layer(
            case,
            &inp.weight,
            inp.bias.as_ref(),
            &inp.bn,
            Some((&mean, &var)),
        )?;
        let clone = net.clone();
        net.forward_residual_t(inp.x.as_tensor(), inp.residual.as_ref(), false)?;
        let before = mean.as_tensor().to_vec1::<f32>()?;
        // Through a clone: clones share the weights, the running statistics and the cache.
        clone.forward_residual_t(inp.x.as_tensor(), inp.residual.as_ref(), true)?;
        assert_ne!(
            before,
            mean.as_tensor().to_vec1::<f32>()?,
            "{}: running mean unchanged",
            case.name
        );
        let y = net.forward_residual_t(inp.x.as_tensor(), inp.residual.as_ref(), false)?;
        let mut bn = inp.bn.clone();
        bn.insert("bn.running_mean".into(), mean.as_tensor().copy()?);
        bn.insert("bn.running_var".into(), var.as_tensor().copy()?);
        let want = composed(
            &case.spec,
            inp.x.as_tensor(),
            inp.weight.as_tensor(),
            inp.bias.as_ref().map(|b| b.as_tensor()),
            &bn,
            inp.residual.as_ref(),
        )?;
        assert_close(&format!("{}: after training", case.name), &y, &want)?;
    }
    Ok(())
}

/// A MobileNetV2 classifier whose first blocks are constant and whose last blocks, head and classifier
/// are variables (batch norms constant) gives the logits of the same network all constant (batch norm
/// folded once) and all variable (batch norm weights too, so it runs as separate ops), and the kernel
/// gradients of the latter.
#[test]
fn mobilenet_v2_with_frozen_batch_norm_matches_folded_and_composed() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let config = ClassifierConfig {
        arch: ClassifierArch::MobileNetV2(MobileNetV2Config {
            depth_multiplier: 0.35,
            ..Default::default()
        }),
        num_classes: 7,
        dropout: 0.0,
        head: voc_classify::HeadKind::Linear,
    };
    let fresh = VarMap::new();
    ImageClassifier::new(VarBuilder::from_varmap(&fresh, DType::F32, &dev), config)?;
    let mut names: Vec<String> = fresh.data().lock().unwrap().keys().cloned().collect();
    names.sort();
    let mut tensors = HashMap::new();
    for (seed, name) in names.iter().enumerate() {
        let t = fresh.data().lock().unwrap()[name].as_tensor().detach();
        let t = match name.rsplit_once("normalization.") {
            Some((prefix, field)) => batch_norm_tensors("", t.elem_count(), seed)
                .into_iter()
                .find(|(n, _)| n == field)
                .map(|(_, v)| v)
                .unwrap_or_else(|| panic!("{prefix}normalization.{field}")),
            None => t,
        };
        tensors.insert(name.clone(), t);
    }
    // Variables: the kernels of blocks 10.. and of the head, and the classifier.
    let late = |name: &str| {
        let block = name
            .strip_prefix("mobilenet_v2.layer.")
            .and_then(|rest| rest.split('.').next())
            .and_then(|i| i.parse::<usize>().ok());
        block.is_some_and(|i| i >= 10)
            || name.starts_with("mobilenet_v2.conv_1x1.")
            || name.starts_with("classifier.")
    };
    let build = |is_variable: &dyn Fn(&str) -> bool| -> anyhow::Result<(ImageClassifier, Vec<(String, Var)>)> {
        let mut constants = HashMap::new();
        let mut variables = HashMap::new();
        for (name, t) in &tensors {
            if is_variable(name) {
                variables.insert(name.clone(), Var::from_tensor(&t.copy()?)?);
            } else {
                constants.insert(name.clone(), t.clone());
            }
        }
        let mut vars: Vec<(String, Var)> =
            variables.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let vb = VarBuilder::from_backend(Box::new(Mixed { constants, variables }), DType::F32, dev.clone());
        Ok((ImageClassifier::new(vb, config)?, vars))
    };
    let x = values(&[2, 3, 64, 48], -2.0, 2.0, 7);
    let mix = values(&[2, 7], -1.0, 1.0, 8);

    let (folded, none) = build(&|_| false)?;
    assert!(none.is_empty());
    let (frozen, frozen_vars) = build(&|n| late(n) && !n.contains("normalization."))?;
    let (composed, composed_vars) =
        build(&|n| late(n) && !n.ends_with("running_mean") && !n.ends_with("running_var"))?;
    assert!(frozen_vars.len() > 20, "{} variables", frozen_vars.len());

    let want = folded.forward_t(&x, false)?;
    let frozen_logits = frozen.forward_t(&x, false)?;
    let composed_logits = composed.forward_t(&x, false)?;
    assert!(
        want.abs()?.max_all()?.to_scalar::<f32>()? > 1e-2,
        "logits all ~0"
    );
    assert_close("frozen vs folded logits", &frozen_logits, &want)?;
    assert_close(
        "frozen vs composed logits",
        &frozen_logits,
        &composed_logits,
    )?;

    let frozen_grads = (&frozen_logits * &mix)?.sum_all()?.backward()?;
    let composed_grads = (&composed_logits * &mix)?.sum_all()?.backward()?;
    let by_name: HashMap<&str, &Var> = composed_vars.iter().map(|(n, v)| (n.as_str(), v)).collect();
    for (name, var) in &frozen_vars {
        let a = frozen_grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient"));
        let b = composed_grads
            .get(by_name[name.as_str()].as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient (composed)"));
        // Gradients through several layers: a little more f32 rounding than one layer's.
        let err = rel_err(a, b)?;
        assert!(err < 1e-4, "{name}: gradient differs by {err:.2e}");
    }
    Ok(())
}
