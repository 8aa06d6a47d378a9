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
        if !(eps > 0.0) || !(0.0..=1.0).contains(&momentum) {
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

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    pub fn running_mean(&self) -> &Var {
        &self.running_mean
    }

    pub fn running_var(&self) -> &Var {
        &self.running_var
    }

    pub fn eps(&self) -> f64 {
        self.eps
    }

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
        let scale = ((self.running_var.as_tensor().to_dtype(DType::F64)? + self.eps)?
            .sqrt()?
            .recip()?
            * self.weight.to_dtype(DType::F64)?)?;
        let mut bshape = vec![1usize; conv_weight.rank()];
        bshape[0] = c_out;
        let weight = conv_weight
            .to_dtype(DType::F64)?
            .broadcast_mul(&scale.reshape(bshape)?)?
            .to_dtype(dtype)?;
        let conv_bias = match conv_bias {
            Some(b) => b.to_dtype(DType::F64)?.flatten_all()?,
            None => Tensor::zeros(c_out, DType::F64, conv_weight.device())?,
        };
        let bias = (((conv_bias - self.running_mean.as_tensor().to_dtype(DType::F64)?)? * scale)?
            + self.bias.to_dtype(DType::F64)?)?
        .to_dtype(dtype)?;
        Ok((weight.detach(), bias.detach()))
    }
}
