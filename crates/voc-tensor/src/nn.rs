//! Layers whose candle version lacks something the models need.
use candle_core::{DType, Tensor, Var};
use candle_nn::{Init, VarBuilder};

use crate::error::{Result, VocError};

/// 2-D batch normalisation with PyTorch semantics, including the running-statistics update.
///
/// `weight` and `bias` are trainable; `running_mean` and `running_var` are state. All four come from the
/// `VarBuilder` under those names. With a `VarMap`-backed builder they are the map's own variables, so
/// checkpoints save the running stats and loading a checkpoint restores them; with a builder over a
/// weights file they are private copies. The running stats never receive a gradient (they are detached
/// wherever they are read), so an optimiser over the whole `VarMap` leaves them alone.
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    eps: f64,
    momentum: f64,
    channels: usize,
}

impl BatchNorm2d {
    /// Reads or creates `weight` (init 1), `bias` (0), `running_mean` (0) and `running_var` (1), each of
    /// `channels` values, under `vb`. PyTorch's defaults are `eps = 1e-5`, `momentum = 0.1`.
    pub fn new(vb: VarBuilder, channels: usize, eps: f64, momentum: f64) -> Result<Self> {
        if eps.is_nan() || eps <= 0.0 || !(0.0..=1.0).contains(&momentum) {
            return Err(VocError::BadArgument(format!(
                "BatchNorm2d at '{}': eps must be > 0 and momentum in [0, 1], got eps {eps}, momentum {momentum}",
                vb.prefix()
            )));
        }
        let weight = vb.get_with_hints(channels, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(channels, "bias", Init::Const(0.0))?;
        let running_mean =
            Var::from_tensor(&vb.get_with_hints(channels, "running_mean", Init::Const(0.0))?)?;
        let running_var =
            Var::from_tensor(&vb.get_with_hints(channels, "running_var", Init::Const(1.0))?)?;
        Ok(Self {
            weight,
            bias,
            running_mean,
            running_var,
            eps,
            momentum,
            channels,
        })
    }

    /// The scale `gamma`, shape `C`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The shift `beta`, shape `C`.
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    /// The running mean used in eval mode, shape `C` (never gets a gradient).
    pub fn running_mean(&self) -> &Var {
        &self.running_mean
    }

    /// The running (unbiased) variance used in eval mode, shape `C`.
    pub fn running_var(&self) -> &Var {
        &self.running_var
    }

    /// The `eps` added to the variance.
    pub fn eps(&self) -> f64 {
        self.eps
    }

    /// The running-stat update factor (PyTorch's `momentum`, e.g. 0.1).
    pub fn momentum(&self) -> f64 {
        self.momentum
    }

    /// Normalises an `N x C x H x W` tensor.
    ///
    /// `train`: uses the batch mean and biased variance (the gradient flows through them, as in PyTorch)
    /// and updates the running stats: `r = (1 - momentum)·r + momentum·batch`, with the unbiased variance
    /// for `running_var`. Otherwise normalises with the running stats and updates nothing.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4().map_err(|_| {
            VocError::BadArgument(format!(
                "BatchNorm2d: expected an N x C x H x W input, got {:?}",
                x.dims()
            ))
        })?;
        if c != self.channels {
            return Err(VocError::BadArgument(format!(
                "BatchNorm2d: input has {c} channels, this layer normalises {}",
                self.channels
            )));
        }
        let shape = (1, c, 1, 1);
        let (mean, var) = if train {
            let count = n * h * w;
            if count < 2 {
                return Err(VocError::BadArgument(format!(
                    "BatchNorm2d: training needs more than one value per channel, got input {:?}",
                    x.dims()
                )));
            }
            let mean = x.mean_keepdim((0, 2, 3))?;
            let centred = x.broadcast_sub(&mean)?;
            let var = centred.sqr()?.mean_keepdim((0, 2, 3))?;
            self.update_running_stats(&mean, &var, count)?;
            let inv_std = (var + self.eps)?.sqrt()?.recip()?;
            let scale = inv_std.broadcast_mul(&self.weight.reshape(shape)?)?;
            return Ok(centred
                .broadcast_mul(&scale)?
                .broadcast_add(&self.bias.reshape(shape)?)?);
        } else {
            (
                self.running_mean.as_tensor().detach(),
                self.running_var.as_tensor().detach(),
            )
        };
        let inv_std = (var.to_dtype(x.dtype())? + self.eps)?.sqrt()?.recip()?;
        let scale = (inv_std * self.weight.to_dtype(x.dtype())?)?;
        let shift = (self.bias.to_dtype(x.dtype())? - (mean.to_dtype(x.dtype())? * &scale)?)?;
        Ok(x.broadcast_mul(&scale.reshape(shape)?)?
            .broadcast_add(&shift.reshape(shape)?)?)
    }

    fn update_running_stats(
        &self,
        batch_mean: &Tensor,
        batch_var: &Tensor,
        count: usize,
    ) -> Result<()> {
        let m = self.momentum;
        let dtype = self.running_mean.dtype();
        let unbiased = (batch_var.detach().flatten_all()? * (count as f64 / (count - 1) as f64))?
            .to_dtype(dtype)?;
        let batch_mean = batch_mean.detach().flatten_all()?.to_dtype(dtype)?;
        let new_mean = ((self.running_mean.as_tensor() * (1.0 - m))? + (batch_mean * m)?)?;
        let new_var = ((self.running_var.as_tensor() * (1.0 - m))? + (unbiased * m)?)?;
        self.running_mean.set(&new_mean)?;
        self.running_var.set(&new_var)?;
        Ok(())
    }

    /// This batch norm in eval mode as a per-channel affine map, `bn(x) = x·scale + shift` with
    /// `scale = weight / sqrt(running_var + eps)` and `shift = bias - running_mean·scale`: two f64
    /// tensors of `C` values, detached (the running statistics as they are now; no gradient reaches
    /// `weight` or `bias` through them). [`BatchNorm2d::fold_into`] is built on it.
    pub fn scale_shift(&self) -> Result<(Tensor, Tensor)> {
        let scale = ((self.running_var.as_tensor().to_dtype(DType::F64)? + self.eps)?
            .sqrt()?
            .recip()?
            * self.weight.to_dtype(DType::F64)?)?;
        let shift = (self.bias.to_dtype(DType::F64)?
            - (self.running_mean.as_tensor().to_dtype(DType::F64)? * &scale)?)?;
        Ok((scale.detach(), shift.detach()))
    }

    /// Folds this (eval-mode) batch norm into the conv before it: returns `(weight', bias')` with
    /// `conv(x, weight') + bias' == bn(conv(x, weight) + bias)`. `conv_weight` is `C_out x .. x ..`.
    pub fn fold_into(
        &self,
        conv_weight: &Tensor,
        conv_bias: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        let c_out = conv_weight.dims().first().copied().unwrap_or(0);
        if c_out != self.channels {
            return Err(VocError::BadArgument(format!(
                "BatchNorm2d::fold_into: conv weight {:?} has {c_out} output channels, the batch norm has {}",
                conv_weight.dims(),
                self.channels
            )));
        }
        let dtype = conv_weight.dtype();
        let (scale, shift) = self.scale_shift()?;
        let mut bshape = vec![1usize; conv_weight.rank()];
        bshape[0] = c_out;
        let weight = conv_weight
            .to_dtype(DType::F64)?
            .broadcast_mul(&scale.reshape(bshape)?)?
            .to_dtype(dtype)?;
        let bias = match conv_bias {
            Some(b) => ((b.to_dtype(DType::F64)?.flatten_all()? * scale)? + shift)?,
            None => shift,
        }
        .to_dtype(dtype)?;
        Ok((weight.detach(), bias.detach()))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;
    use candle_nn::VarMap;

    use super::*;
    use crate::ops::{conv2d, Padding};
    use crate::testing::max_abs_diff;

    fn ramp(shape: (usize, usize, usize, usize), scale: f32) -> Tensor {
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        let data: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * scale)
            .collect();
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn training_updates_running_stats_like_pytorch() {
        let varmap = VarMap::new();
        let bn = BatchNorm2d::new(
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
            3,
            1e-5,
            0.1,
        )
        .unwrap();
        let x = ramp((2, 3, 4, 5), 0.5);
        let y = bn.forward_t(&x, true).unwrap();

        // Batch statistics by hand: 40 values per channel.
        let per_channel = x
            .transpose(0, 1)
            .unwrap()
            .flatten_from(1)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (ch, values) in per_channel.iter().enumerate() {
            let n = values.len() as f64;
            let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
            let ss = values
                .iter()
                .map(|&v| (v as f64 - mean).powi(2))
                .sum::<f64>();
            let rm = bn.running_mean().as_tensor().to_vec1::<f32>().unwrap()[ch] as f64;
            let rv = bn.running_var().as_tensor().to_vec1::<f32>().unwrap()[ch] as f64;
            assert!(
                (rm - 0.1 * mean).abs() < 1e-5,
                "running mean {rm} vs {}",
                0.1 * mean
            );
            assert!(
                (rv - (0.9 + 0.1 * ss / (n - 1.0))).abs() < 1e-5,
                "running var {rv}"
            );
            // The output of training mode is normalised with the biased variance.
            let out = y
                .transpose(0, 1)
                .unwrap()
                .flatten_from(1)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let out_mean = out[ch].iter().sum::<f32>() / n as f32;
            let out_var = out[ch].iter().map(|v| v * v).sum::<f32>() / n as f32;
            assert!(
                out_mean.abs() < 1e-5 && (out_var - (ss / n / (ss / n + 1e-5)) as f32).abs() < 1e-4
            );
        }
        // The running stats are the VarMap's variables (so checkpoints see the update) ...
        let stored = varmap.data().lock().unwrap()["running_mean"]
            .as_tensor()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(
            stored,
            bn.running_mean().as_tensor().to_vec1::<f32>().unwrap()
        );
        // ... and eval mode uses them and changes nothing.
        let before = bn.running_var().as_tensor().to_vec1::<f32>().unwrap();
        let eval = bn.forward_t(&x, false).unwrap();
        assert_eq!(
            before,
            bn.running_var().as_tensor().to_vec1::<f32>().unwrap()
        );
        let rm = bn.running_mean().as_tensor().reshape((1, 3, 1, 1)).unwrap();
        let rs = (bn.running_var().as_tensor() + 1e-5)
            .unwrap()
            .sqrt()
            .unwrap()
            .reshape((1, 3, 1, 1))
            .unwrap();
        let want = x.broadcast_sub(&rm).unwrap().broadcast_div(&rs).unwrap();
        assert!(max_abs_diff(&eval, &want).unwrap() < 1e-5);
    }

    #[test]
    fn running_stats_get_no_gradient_in_eval() {
        let varmap = VarMap::new();
        let bn = BatchNorm2d::new(
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
            2,
            1e-3,
            0.1,
        )
        .unwrap();
        let x = ramp((1, 2, 3, 3), 0.1);
        let grads = bn
            .forward_t(&x, false)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(grads.get(bn.running_mean().as_tensor()).is_none());
        assert!(grads.get(bn.running_var().as_tensor()).is_none());
        assert!(grads.get(bn.weight()).is_some());
    }

    #[test]
    fn folding_into_the_conv_matches_conv_then_bn() {
        let varmap = VarMap::new();
        let bn = BatchNorm2d::new(
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
            4,
            1e-3,
            0.1,
        )
        .unwrap();
        {
            let data = varmap.data().lock().unwrap();
            data["weight"]
                .set(&Tensor::new(&[1.5f32, -0.5, 2.0, 0.25], &Device::Cpu).unwrap())
                .unwrap();
            data["bias"]
                .set(&Tensor::new(&[0.1f32, 0.2, -0.3, 0.0], &Device::Cpu).unwrap())
                .unwrap();
            data["running_mean"]
                .set(&Tensor::new(&[0.5f32, -1.0, 0.0, 2.0], &Device::Cpu).unwrap())
                .unwrap();
            data["running_var"]
                .set(&Tensor::new(&[0.5f32, 2.0, 1.0, 4.0], &Device::Cpu).unwrap())
                .unwrap();
        }
        let x = ramp((1, 3, 6, 5), 0.2);
        let w = ramp((4, 3, 3, 3), 0.05);
        let b = Tensor::new(&[0.3f32, 0.0, -0.2, 0.1], &Device::Cpu).unwrap();
        let reference = bn
            .forward_t(
                &conv2d(&x, &w, Some(&b), 1, Padding::same(1), 1, 1).unwrap(),
                false,
            )
            .unwrap();
        let (fw, fb) = bn.fold_into(&w, Some(&b)).unwrap();
        let folded = conv2d(&x, &fw, Some(&fb), 1, Padding::same(1), 1, 1).unwrap();
        assert!(max_abs_diff(&reference, &folded).unwrap() < 1e-5);
        assert!(bn.fold_into(&ramp((3, 3, 1, 1), 1.0), None).is_err());
        // The same map as a per-channel scale and shift (f64, constants).
        let (scale, shift) = bn.scale_shift().unwrap();
        assert_eq!((scale.dtype(), shift.dims()), (DType::F64, &[4usize][..]));
        let y = ramp((2, 4, 3, 5), 0.3);
        let affine = y
            .broadcast_mul(
                &scale
                    .to_dtype(DType::F32)
                    .unwrap()
                    .reshape((1, 4, 1, 1))
                    .unwrap(),
            )
            .unwrap()
            .broadcast_add(
                &shift
                    .to_dtype(DType::F32)
                    .unwrap()
                    .reshape((1, 4, 1, 1))
                    .unwrap(),
            )
            .unwrap();
        let eval = bn.forward_t(&y, false).unwrap();
        assert!(max_abs_diff(&eval, &affine).unwrap() < 1e-5);
    }
}

/// Dropout whose masks come from a seeded generator, so a training run with a seed repeats exactly
/// (candle's `ops::dropout` draws from an unseeded generator). Clones share the generator.
///
/// ```
/// use voc_tensor::nn::Dropout;
/// use voc_tensor::{Device, Tensor};
/// # fn main() -> voc_tensor::Result<()> {
/// let x = Tensor::ones((4, 100), voc_tensor::DType::F32, &Device::Cpu)?;
/// let (a, b) = (Dropout::new(0.5), Dropout::new(0.5));
/// a.seed(7);
/// b.seed(7);
/// let ya = a.forward_t(&x, true)?;
/// assert_eq!(ya.to_vec2::<f32>()?, b.forward_t(&x, true)?.to_vec2::<f32>()?); // same seed, same mask
/// // Kept values are scaled by 1 / (1 - p); about half are kept.
/// let kept = ya.flatten_all()?.to_vec1::<f32>()?.iter().filter(|&&v| v == 2.0).count();
/// assert!((150..250).contains(&kept));
/// assert_eq!(a.forward_t(&x, false)?.to_vec2::<f32>()?, x.to_vec2::<f32>()?); // eval: identity
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Dropout {
    p: f32,
    rng: std::sync::Arc<std::sync::Mutex<Option<rand_chacha::ChaCha8Rng>>>,
}

impl Dropout {
    /// Dropout with probability `p` of zeroing each value (unseeded until [`Dropout::seed`]).
    pub fn new(p: f32) -> Self {
        Self {
            p,
            rng: Default::default(),
        }
    }

    /// Seeds the mask generator (shared with clones).
    pub fn seed(&self, seed: u64) {
        use rand::SeedableRng;
        if let Ok(mut rng) = self.rng.lock() {
            *rng = Some(rand_chacha::ChaCha8Rng::seed_from_u64(seed));
        }
    }

    /// The probability of zeroing a value.
    pub fn p(&self) -> f32 {
        self.p
    }

    /// `x` with each value zeroed with probability `p` and the others scaled by `1 / (1 - p)` when
    /// `train`; `x` itself otherwise.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if !train || self.p <= 0.0 {
            return Ok(x.clone());
        }
        let mut guard = self
            .rng
            .lock()
            .map_err(|_| VocError::Msg("the dropout generator's lock is poisoned".into()))?;
        let Some(rng) = guard.as_mut() else {
            return Ok(candle_nn::ops::dropout(x, self.p)?);
        };
        use rand::Rng;
        let scale = 1.0 / (1.0 - self.p);
        let mask: Vec<f32> = (0..x.elem_count())
            .map(|_| {
                if rng.gen::<f32>() < self.p {
                    0.0
                } else {
                    scale
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        Ok((x * mask)?)
    }
}
