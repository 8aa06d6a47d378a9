//! Projected gradient descent (Madry et al.) under an L-inf or L2 budget; FGSM is its one-step case.
use candle_core::{DType, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{AttackError, Result};
use crate::objective::Loss;

/// The norm that bounds the perturbation, per image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Norm {
    /// Every pixel value moves by at most epsilon; steps follow the gradient's sign.
    Linf,
    /// The perturbation's Euclidean norm is at most epsilon; steps follow the gradient's direction.
    L2,
}

/// Whether the attack moves away from the objective's classes or towards them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    /// Climb the loss of the true labels.
    Untargeted,
    /// Descend the loss of the labels given as the target.
    Targeted,
}

/// How an attack runs. Epsilon and step size are in the units of the model input the closure takes,
/// e.g. 8/255 for pixels scaled to 0..1.
///
/// ```
/// use voc_attack::{AttackConfig, Goal, Norm};
/// let fgsm = AttackConfig::fgsm(2.0 / 255.0);
/// assert_eq!((fgsm.norm, fgsm.steps, fgsm.step_size), (Norm::Linf, 1, 2.0 / 255.0));
/// assert_eq!(fgsm.bounds, (0.0, 1.0)); // pixels in 0..1
/// let pgd = AttackConfig::pgd(Norm::L2, 0.5, 0.1, 10).targeted().with_random_start(7);
/// assert_eq!((pgd.goal, pgd.random_start, pgd.seed), (Goal::Targeted, true, 7));
/// let mut bad = AttackConfig::fgsm(-1.0);
/// assert!(bad.validate().unwrap_err().to_string().contains("epsilon"));
/// bad.epsilon = 0.1;
/// bad.bounds = (1.0, 0.0);
/// assert!(bad.validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct AttackConfig {
    /// The norm of the budget and of the steps.
    pub norm: Norm,
    /// Away from the objective's labels, or towards them.
    pub goal: Goal,
    /// Budget: the largest perturbation (per pixel value for L-inf, per image for L2).
    pub epsilon: f64,
    /// How far each step moves before the projection.
    pub step_size: f64,
    /// Gradient steps; FGSM is one step of size epsilon.
    pub steps: usize,
    /// Start from a uniformly random point of the budget ball instead of the clean input.
    pub random_start: bool,
    /// Seed of the random start.
    pub seed: u64,
    /// MI-FGSM (Dong et al. 2018): steps follow an accumulated gradient `g = decay g + grad /
    /// mean|grad|` (per image) instead of the current one; `None` is plain PGD / BIM.
    pub momentum: Option<f64>,
    /// The valid range of input values, enforced after every step.
    pub bounds: (f64, f64),
}

impl AttackConfig {
    /// FGSM (Goodfellow et al.): one L-inf step of size epsilon, pixels in 0..1.
    pub fn fgsm(epsilon: f64) -> Self {
        Self::pgd(Norm::Linf, epsilon, epsilon, 1)
    }

    /// PGD without random start, pixels in 0..1.
    pub fn pgd(norm: Norm, epsilon: f64, step_size: f64, steps: usize) -> Self {
        Self {
            norm,
            goal: Goal::Untargeted,
            epsilon,
            step_size,
            steps,
            random_start: false,
            seed: 0,
            momentum: None,
            bounds: (0.0, 1.0),
        }
    }

    /// The same attack as MI-FGSM with this momentum decay (1.0 in the paper).
    pub fn with_momentum(mut self, decay: f64) -> Self {
        self.momentum = Some(decay);
        self
    }

    /// The same attack towards the objective's labels.
    pub fn targeted(mut self) -> Self {
        self.goal = Goal::Targeted;
        self
    }

    /// The same attack from a random point of the budget ball drawn with `seed`.
    pub fn with_random_start(mut self, seed: u64) -> Self {
        self.random_start = true;
        self.seed = seed;
        self
    }

    /// Checks every field; the attack functions call it first. An epsilon or step size that is negative
    /// or not finite, or bounds that are not finite with low < high, is [`AttackError::BadConfig`]
    /// naming the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, value: f64, expected| AttackError::BadConfig {
            field,
            value: value.to_string(),
            expected,
        };
        if !(self.epsilon.is_finite() && self.epsilon >= 0.0) {
            return Err(bad("epsilon", self.epsilon, "a finite number >= 0"));
        }
        if !(self.step_size.is_finite() && self.step_size >= 0.0) {
            return Err(bad("step_size", self.step_size, "a finite number >= 0"));
        }
        if let Some(decay) = self.momentum {
            if !(decay.is_finite() && decay >= 0.0) {
                return Err(bad("momentum", decay, "a finite number >= 0"));
            }
        }
        let (lo, hi) = self.bounds;
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return Err(AttackError::BadConfig {
                field: "bounds",
                value: format!("({lo}, {hi})"),
                expected: "finite (low, high) with low < high",
            });
        }
        Ok(())
    }
}

/// An attack's result.
#[derive(Debug, Clone)]
pub struct AttackOutcome {
    /// The adversarial inputs, same shape, device and dtype as the clean ones.
    pub adversarial: Tensor,
    /// The objective at the start of each step and, last, at the adversarial input (`steps + 1` values).
    pub losses: Vec<f32>,
    /// Largest absolute change of any value, per image.
    pub linf: Vec<f32>,
    /// Euclidean norm of the change, per image.
    pub l2: Vec<f32>,
}

/// Gradient of `loss(model(x))` with respect to `x`, and the loss. A failing model is
/// [`AttackError::Model`]; a loss that is not a scalar, or that does not depend on `x`, is
/// [`AttackError::BadInput`].
///
/// ```
/// use candle_core::{Device, Tensor};
/// use voc_attack::{input_gradient, Objective};
/// // Logits x W; the cross-entropy of class 1 has gradient (p_1 - 1)(w_1 - w_0) = -1/2 [1, -1] at x = 0.
/// let w = Tensor::new(&[[1f32, 0.0], [0.0, 1.0]], &Device::Cpu)?;
/// let model = |x: &Tensor| x.matmul(&w);
/// let x = Tensor::zeros((1, 2), candle_core::DType::F32, &Device::Cpu)?;
/// let (grad, loss) = input_gradient(&model, &Objective::CrossEntropy { classes: vec![1] }, &x)?;
/// assert_eq!(grad.to_vec2::<f32>()?, [[0.5, -0.5]]);
/// assert!((loss - 2f32.ln()).abs() < 1e-6);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn input_gradient<M, E>(model: &M, loss: &impl Loss, x: &Tensor) -> Result<(Tensor, f32)>
where
    M: Fn(&Tensor) -> std::result::Result<Tensor, E>,
    E: std::error::Error + Send + Sync + 'static,
{
    let var = Var::from_tensor(&x.detach())?;
    let (value, scalar) = model_loss(model, loss, var.as_tensor())?;
    let grads = value.backward()?;
    let grad = grads.get(var.as_tensor()).cloned().ok_or_else(|| {
        AttackError::BadInput(
            "the loss does not depend on the model's input (no gradient reaches it)".into(),
        )
    })?;
    Ok((grad, scalar))
}

/// `loss(model(x))` as a tensor and as a number, failing unless it is a scalar.
fn model_loss<M, E>(model: &M, loss: &impl Loss, x: &Tensor) -> Result<(Tensor, f32)>
where
    M: Fn(&Tensor) -> std::result::Result<Tensor, E>,
    E: std::error::Error + Send + Sync + 'static,
{
    let logits = model(x).map_err(|e| AttackError::Model(Box::new(e)))?;
    let value = loss.loss(&logits)?;
    if value.elem_count() != 1 {
        return Err(AttackError::BadInput(format!(
            "the loss must be a scalar, got shape {:?}",
            value.dims()
        )));
    }
    let scalar = value
        .flatten_all()?
        .to_dtype(DType::F32)?
        .to_vec1::<f32>()?[0];
    Ok((value, scalar))
}

/// Runs the attack described by `config` on the batch `clean` (`N x ...`, values within
/// `config.bounds`) against `model` (input batch -> logits) and `loss`.
///
/// Each step moves every image by `step_size` along the sign of its input gradient (L-inf) or along
/// the gradient divided by its per-image L2 norm (L2), upwards for an untargeted attack and downwards for
/// a targeted one, then projects the perturbation onto the epsilon ball and the values into
/// `config.bounds`. Images never interact: a batch attacks as its images would one by one (with models
/// that treat images independently, as in eval mode).
///
/// Errors: a bad config ([`AttackConfig::validate`]), an empty batch or logits the loss cannot take
/// ([`AttackError::BadInput`]), and a failing model ([`AttackError::Model`], with its error as source).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use voc_attack::{attack, AttackConfig, Norm, Objective};
/// // A linear classifier of 4 values into 2 classes; two inputs, both of class 1.
/// let w = Tensor::new(&[[1f32, -2.0], [0.5, 0.25], [-1.5, 1.0], [0.0, 3.0]], &Device::Cpu)?;
/// let model = |x: &Tensor| x.matmul(&w);
/// let x = Tensor::new(&[[0.2f32, 0.5, 0.9, 0.4], [0.6, 0.1, 0.3, 0.8]], &Device::Cpu)?;
/// let objective = Objective::CrossEntropy { classes: vec![1, 1] };
///
/// // FGSM: every value moves by epsilon along the gradient's sign, here w_0 - w_1 = [3, 0.25, -2.5, -3].
/// let fgsm = attack(&model, &objective, &x, &AttackConfig::fgsm(0.05))?;
/// let moved = (&fgsm.adversarial - &x)?.to_vec2::<f32>()?;
/// for row in &moved {
///     for (d, sign) in row.iter().zip([1.0, 1.0, -1.0, -1.0]) {
///         assert!((d - 0.05 * sign).abs() < 1e-6);
///     }
/// }
/// assert!(fgsm.losses[1] > fgsm.losses[0]); // the loss before the step, and after
///
/// // PGD in an L2 ball of 0.3, 10 steps of 0.1: the perturbation ends on the ball.
/// let pgd = attack(&model, &objective, &x, &AttackConfig::pgd(Norm::L2, 0.3, 0.1, 10))?;
/// assert!(pgd.l2.iter().all(|&n| (n - 0.3).abs() < 1e-4), "{:?}", pgd.l2);
/// assert_eq!(pgd.losses.len(), 11);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn attack<M, E>(
    model: &M,
    loss: &impl Loss,
    clean: &Tensor,
    config: &AttackConfig,
) -> Result<AttackOutcome>
where
    M: Fn(&Tensor) -> std::result::Result<Tensor, E>,
    E: std::error::Error + Send + Sync + 'static,
{
    config.validate()?;
    if clean.rank() < 2 || clean.dim(0)? == 0 || clean.elem_count() == 0 {
        return Err(AttackError::BadInput(format!(
            "expected a non-empty batch N x ..., got shape {:?}",
            clean.dims()
        )));
    }
    let clean = clean.detach();
    let (lo, hi) = config.bounds;
    let mut adv = if config.random_start {
        let start = (&clean + random_ball(&clean, config)?)?;
        start.clamp(lo, hi)?
    } else {
        clean.clone()
    };
    let sign = match config.goal {
        Goal::Untargeted => 1.0,
        Goal::Targeted => -1.0,
    };
    let mut losses = Vec::with_capacity(config.steps + 1);
    let mut accumulated: Option<Tensor> = None;
    for _ in 0..config.steps {
        let (grad, value) = input_gradient(model, loss, &adv)?;
        losses.push(value);
        let grad = match config.momentum {
            Some(decay) => {
                let n = grad.dim(0)?;
                let mut shape = vec![1usize; grad.rank()];
                shape[0] = n;
                let mean_abs = grad
                    .reshape((n, ()))?
                    .abs()?
                    .mean_keepdim(1)?
                    .reshape(shape)?;
                let normalised = grad.broadcast_div(&(mean_abs + 1e-12)?)?;
                let g = match accumulated.take() {
                    Some(previous) => ((previous * decay)? + normalised)?,
                    None => normalised,
                };
                accumulated = Some(g.clone());
                g
            }
            None => grad,
        };
        let direction = match config.norm {
            Norm::Linf => grad.sign()?,
            Norm::L2 => {
                let norms = per_image_l2(&grad)?;
                // A zero gradient gives a zero step, not a NaN.
                grad.broadcast_div(&(norms + 1e-12)?)?
            }
        };
        let stepped = (&adv + (direction * (sign * config.step_size))?)?;
        adv = project(&clean, &stepped, config)?;
    }
    losses.push(model_loss(model, loss, &adv)?.1);
    let delta = (&adv - &clean)?.to_dtype(DType::F32)?;
    let n = delta.dim(0)?;
    let linf = delta.reshape((n, ()))?.abs()?.max(1)?.to_vec1::<f32>()?;
    let l2 = per_image_l2(&delta)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(AttackOutcome {
        adversarial: adv,
        losses,
        linf,
        l2,
    })
}

/// The perturbation `stepped - clean` brought back into the epsilon ball, then the values into bounds.
fn project(clean: &Tensor, stepped: &Tensor, config: &AttackConfig) -> Result<Tensor> {
    let delta = (stepped - clean)?;
    let eps = config.epsilon;
    let delta = match config.norm {
        Norm::Linf => delta.clamp(-eps, eps)?,
        Norm::L2 => {
            let norms = per_image_l2(&delta)?;
            // min(1, eps / |delta|) = eps / max(|delta|, eps), finite at |delta| = 0.
            let scale = (norms.maximum(eps.max(1e-12))?.recip()? * eps)?;
            delta.broadcast_mul(&scale)?
        }
    };
    let (lo, hi) = config.bounds;
    Ok((clean + delta)?.clamp(lo, hi)?)
}

/// Per-image Euclidean norms of an `N x ...` tensor, shaped `N x 1 x ... x 1` to broadcast back.
fn per_image_l2(x: &Tensor) -> Result<Tensor> {
    let n = x.dim(0)?;
    let norms = x.reshape((n, ()))?.sqr()?.sum_keepdim(1)?.sqrt()?;
    let mut shape = vec![1usize; x.rank()];
    shape[0] = n;
    Ok(norms.reshape(shape)?)
}

/// A random point of the epsilon ball for every image: uniform per value for L-inf; for L2 a uniformly
/// random direction at a radius drawn uniformly in 0..epsilon. Drawn on the host with the config's seed,
/// so a seed gives the same start on every device.
fn random_ball(like: &Tensor, config: &AttackConfig) -> Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let eps = config.epsilon as f32;
    let n = like.dim(0)?;
    let per_image = like.elem_count() / n;
    let mut values = Vec::with_capacity(like.elem_count());
    match config.norm {
        Norm::Linf => {
            values.extend((0..like.elem_count()).map(|_| rng.gen_range(-1.0f32..=1.0) * eps));
        }
        Norm::L2 => {
            for _ in 0..n {
                let start = values.len();
                // Box-Muller normals give an isotropic direction.
                while values.len() < start + per_image {
                    let (u1, u2): (f32, f32) = (rng.gen_range(f32::EPSILON..1.0), rng.gen());
                    let r = (-2.0 * u1.ln()).sqrt();
                    let t = std::f32::consts::TAU * u2;
                    values.push(r * t.cos());
                    if values.len() < start + per_image {
                        values.push(r * t.sin());
                    }
                }
                let image = &mut values[start..];
                let norm = image.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                let radius = rng.gen_range(0.0f32..=1.0) * eps;
                image.iter_mut().for_each(|v| *v *= radius / norm);
            }
        }
    }
    Ok(Tensor::from_vec(values, like.dims(), like.device())?.to_dtype(like.dtype())?)
}

/// A universal perturbation (Moosavi-Dezfooli et al. 2017, found here by projected sign steps on the
/// summed loss, as in Shafahi et al. 2020): one `1 x ...` delta for every image of `batches`, each
/// batch with its own loss. `passes` times over the batches, the delta moves by `config.step_size`
/// along the sign (L-inf) or direction (L2) of the gradient of its batch's loss at `clamp(x + delta)`,
/// up for an untargeted config and down for a targeted one, then is projected onto the budget ball.
/// Returns the delta; apply it as `(x + delta).clamp(bounds)`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use voc_attack::{universal_perturbation, AttackConfig, Objective};
/// let w = Tensor::new(&[[1f32, -2.0], [0.5, 0.25], [-1.5, 1.0], [0.0, 3.0]], &Device::Cpu)?;
/// let model = |x: &Tensor| x.matmul(&w);
/// let x = Tensor::new(&[[0.2f32, 0.5, 0.9, 0.4], [0.6, 0.1, 0.3, 0.8]], &Device::Cpu)?;
/// let objective = Objective::CrossEntropy { classes: vec![1, 1] };
/// let delta = universal_perturbation(&model, &[(x.clone(), objective)], &AttackConfig::fgsm(0.05), 1)?;
/// // Both images share the gradient's sign [+, +, -, -]: one FGSM step of the summed loss.
/// assert_eq!(delta.dims(), [1, 4]);
/// let d = delta.flatten_all()?.to_vec1::<f32>()?;
/// assert!((d[0] - 0.05).abs() < 1e-6 && (d[3] + 0.05).abs() < 1e-6);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn universal_perturbation<M, E, L>(
    model: &M,
    batches: &[(Tensor, L)],
    config: &AttackConfig,
    passes: usize,
) -> Result<Tensor>
where
    M: Fn(&Tensor) -> std::result::Result<Tensor, E>,
    E: std::error::Error + Send + Sync + 'static,
    L: Loss,
{
    config.validate()?;
    let Some((first, _)) = batches.first() else {
        return Err(AttackError::BadInput(
            "a universal perturbation needs at least one batch".into(),
        ));
    };
    let mut shape = first.dims().to_vec();
    if shape.len() < 2 {
        return Err(AttackError::BadInput(format!(
            "expected N x ... batches, got shape {:?}",
            first.dims()
        )));
    }
    shape[0] = 1;
    if let Some((x, _)) = batches.iter().find(|(x, _)| x.dims()[1..] != shape[1..]) {
        return Err(AttackError::BadInput(format!(
            "a universal perturbation needs images of one size: {:?} and {:?}",
            &shape[1..],
            &x.dims()[1..]
        )));
    }
    let sign = match config.goal {
        Goal::Untargeted => 1.0,
        Goal::Targeted => -1.0,
    };
    let (lo, hi) = config.bounds;
    let mut delta = Tensor::zeros(shape, first.dtype(), first.device())?;
    for _ in 0..passes.max(1) {
        for (x, loss) in batches {
            let var = Var::from_tensor(&delta)?;
            let u = x.detach().broadcast_add(var.as_tensor())?.clamp(lo, hi)?;
            let (value, _) = model_loss(model, loss, &u)?;
            let grads = value.backward()?;
            let Some(grad) = grads.get(var.as_tensor()).cloned() else {
                return Err(AttackError::BadInput(
                    "the loss does not depend on the model's input (no gradient reaches it)".into(),
                ));
            };
            let direction = match config.norm {
                Norm::Linf => grad.sign()?,
                Norm::L2 => grad.broadcast_div(&(per_image_l2(&grad)? + 1e-12)?)?,
            };
            let stepped = (&delta + (direction * (sign * config.step_size))?)?;
            let eps = config.epsilon;
            delta = match config.norm {
                Norm::Linf => stepped.clamp(-eps, eps)?,
                Norm::L2 => {
                    let norms = per_image_l2(&stepped)?;
                    let scale = (norms.maximum(eps.max(1e-12))?.recip()? * eps)?;
                    stepped.broadcast_mul(&scale)?
                }
            };
        }
    }
    Ok(delta)
}
