//! The convolution + batch norm + activation unit every network here is made of.
//!
//! Weights come from a [`VarBuilder`], so the same constructor reads pretrained tensors
//! (`VarBuilder::from_tensors`, or [`crate::weights`]) or creates trainable variables (`VarBuilder::from_varmap`).
use std::sync::{Arc, Mutex};

use candle_core::{Module, Tensor};
use candle_nn::{Init, VarBuilder};
use voc_tensor::fused::{self, Act, ConvKind};
use voc_tensor::nhwc::PointwiseConv;
use voc_tensor::nn::BatchNorm2d;
use voc_tensor::ops::{self, Padding};

use crate::error::Result;

/// Non-linearity after the (optional) batch norm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// None: the values pass unchanged.
    Identity,
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, 0), 6)`, the MobileNet activation.
    Relu6,
}

impl Activation {
    /// Applies the activation to `x`.
    pub fn forward(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Identity => x.clone(),
            Self::Relu => x.relu()?,
            Self::Relu6 => ops::relu6(x)?,
        })
    }

    /// The same activation as the fused kernels name it.
    pub(crate) fn fused(self) -> Act {
        match self {
            Self::Identity => Act::Identity,
            Self::Relu => Act::Relu,
            Self::Relu6 => Act::Relu6,
        }
    }
}

/// How a convolution pads its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvPadding {
    /// TensorFlow "SAME": output size `ceil(in / stride)`, the odd pixel of padding at the bottom/right.
    TfSame,
    /// The same number of zeros on every side (PyTorch's `padding=`).
    Symmetric(usize),
}

/// Batch-norm settings of one layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NormSpec {
    /// Added to the variance before the square root (1e-3 in the TensorFlow ports, 1e-5 in PyTorch).
    pub eps: f64,
    /// PyTorch convention: `running = (1 - momentum) * running + momentum * batch`.
    pub momentum: f64,
}

/// Shape and behaviour of one [`ConvNormAct`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConvSpec {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Side of the square kernel.
    pub kernel: usize,
    /// Step of the kernel, both directions.
    pub stride: usize,
    /// Spacing of the kernel taps (1 = a dense kernel), both directions.
    pub dilation: usize,
    /// 1 for a dense convolution, `in_channels` for a depthwise one.
    pub groups: usize,
    /// Whether the convolution has a bias (`{conv}.bias`).
    pub bias: bool,
    /// How the input is padded.
    pub padding: ConvPadding,
    /// The batch norm after the convolution, if any.
    pub norm: Option<NormSpec>,
    /// The non-linearity last of all.
    pub activation: Activation,
}

impl ConvSpec {
    /// A bias-free `kernel`x`kernel` convolution followed by batch norm and `activation`.
    pub fn conv_bn(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        norm: NormSpec,
        activation: Activation,
    ) -> Self {
        Self {
            in_channels,
            out_channels,
            kernel,
            stride: 1,
            dilation: 1,
            groups: 1,
            bias: false,
            padding: ConvPadding::TfSame,
            norm: Some(norm),
            activation,
        }
    }

    /// The same spec with stride `stride`.
    pub fn stride(mut self, stride: usize) -> Self {
        self.stride = stride;
        self
    }

    /// The same spec with dilation `dilation`.
    pub fn dilation(mut self, dilation: usize) -> Self {
        self.dilation = dilation;
        self
    }

    /// The same spec as a depthwise convolution (one group per input channel).
    pub fn depthwise(mut self) -> Self {
        self.groups = self.in_channels;
        self
    }

    /// The same spec with `padding`.
    pub fn padding(mut self, padding: ConvPadding) -> Self {
        self.padding = padding;
        self
    }

    /// The zeros around an input of `height x width`: TF "SAME" depends on the input's size (the odd
    /// pixel goes bottom/right).
    pub fn padding_on(&self, height: usize, width: usize) -> Padding {
        match self.padding {
            ConvPadding::TfSame => {
                ops::tf_same_padding(height, width, self.kernel, self.stride, self.dilation)
            }
            ConvPadding::Symmetric(p) => Padding::same(p),
        }
    }
}

/// Convolution, then batch norm, then an activation.
///
/// In eval mode, when the weights are constants (a loaded pretrained model, not variables an optimiser
/// may change), the batch norm is folded into the convolution once and the shift and activation run as
/// one pass. When only the convolution's weights are variables and the batch norm is constant
/// (fine-tuning with batch norm frozen), its per-channel scale and shift are computed once and each
/// call scales the kernel by them (a cheap, differentiable product), then runs the same conv + shift +
/// activation. A forward in training mode (which moves the running statistics) drops both cached copies.
/// In training mode batch norm and activation run as one fused op.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use voc_classify::layers::{Activation, ConvNormAct, ConvSpec, NormSpec};
/// let norm = NormSpec { eps: 1e-3, momentum: 0.1 };
/// let spec = ConvSpec::conv_bn(3, 8, 3, norm, Activation::Relu6).stride(2);
/// let vb = candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu);
/// let layer = ConvNormAct::transformers(vb.pp("conv"), spec)?; // conv.convolution.weight, ...
/// let x = Tensor::ones((1, 3, 9, 9), DType::F32, &Device::Cpu)?;
/// // TF "SAME" padding: ceil(9 / 2) = 5.
/// assert_eq!(layer.forward_t(&x, false)?.dims(), [1, 8, 5, 5]);
/// # Ok::<(), voc_classify::ClassifyError>(())
/// ```
#[derive(Debug, Clone)]
pub struct ConvNormAct {
    weight: Tensor,
    bias: Option<Tensor>,
    norm: Option<BatchNorm2d>,
    spec: ConvSpec,
    /// `(weight, bias)` with the eval-mode batch norm folded in; shared by clones, as the weights are.
    folded: Arc<Mutex<Option<(Tensor, Tensor)>>>,
    /// The constant eval-mode batch norm as `(scale, shift)`, scale shaped `C_out x 1 x 1 x 1` to
    /// multiply a variable kernel, both in its dtype; shared by clones.
    bn_scale_shift: Arc<Mutex<Option<(Tensor, Tensor)>>>,
}

impl ConvNormAct {
    /// `conv_vb` holds `weight` (and `bias`), `norm_vb` the batch norm's `weight`, `bias`, `running_mean`
    /// and `running_var` (the transformers layout nests them as `convolution.*`/`normalization.*`, timm
    /// puts them side by side as `conv_pw.*`/`bn1.*`). A var builder without a tensor of the spec's shape
    /// is a candle error.
    pub fn new(conv_vb: VarBuilder, norm_vb: VarBuilder, spec: ConvSpec) -> Result<Self> {
        let fan_in = spec.in_channels / spec.groups * spec.kernel * spec.kernel;
        let init = Init::Randn {
            mean: 0.0,
            stdev: (2.0 / fan_in as f64).sqrt(),
        };
        let weight = conv_vb.get_with_hints(
            (
                spec.out_channels,
                spec.in_channels / spec.groups,
                spec.kernel,
                spec.kernel,
            ),
            "weight",
            init,
        )?;
        let bias = if spec.bias {
            Some(conv_vb.get_with_hints(spec.out_channels, "bias", Init::Const(0.0))?)
        } else {
            None
        };
        let norm = match spec.norm {
            Some(n) => Some(BatchNorm2d::new(
                norm_vb,
                spec.out_channels,
                n.eps,
                n.momentum,
            )?),
            None => None,
        };
        Ok(Self {
            weight,
            bias,
            norm,
            spec,
            folded: Arc::new(Mutex::new(None)),
            bn_scale_shift: Arc::new(Mutex::new(None)),
        })
    }

    /// The transformers layout: `{prefix}.convolution.*` and `{prefix}.normalization.*`.
    pub fn transformers(vb: VarBuilder, spec: ConvSpec) -> Result<Self> {
        Self::new(vb.pp("convolution"), vb.pp("normalization"), spec)
    }

    /// The layer's shape and behaviour (with the current geometry).
    pub fn spec(&self) -> &ConvSpec {
        &self.spec
    }

    /// The convolution kernel, `out x in / groups x k x k`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Changes where the kernel is applied (not its weights): used to switch the output stride of a
    /// built network, where a stride-2 layer becomes stride 1 and later layers dilate.
    pub fn set_geometry(&mut self, stride: usize, dilation: usize, padding: ConvPadding) {
        self.spec.stride = stride;
        self.spec.dilation = dilation;
        self.spec.padding = padding;
    }

    /// The layer on an `N x C x H x W` batch. `train`: batch norm uses (and updates its running averages
    /// from) the batch statistics.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_residual_t(x, None, train)
    }

    /// `forward_t(x) + residual`. In training, a pointwise or depthwise convolution with batch norm
    /// runs as one fused op including the residual add (fewer graph nodes, so fewer gradient passes).
    pub fn forward_residual_t(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        self.forward_with(x, residual, self.spec.activation, train)
    }

    /// `act(conv_bn(x) + residual)`: the residual added *before* the spec's activation, as a ResNet
    /// block ends. In eval mode on constant weights the shift, the residual and the activation are one
    /// pass in place after the convolution.
    pub fn forward_residual_then_act_t(
        &self,
        x: &Tensor,
        residual: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let s = &self.spec;
        if !train {
            let padding = self.padding(x)?;
            let weights = match (&self.norm, &self.bias) {
                (Some(bn), _) => self.eval_weights(bn)?.map(|(w, shift)| (w, Some(shift))),
                (None, None) => Some((self.weight.clone(), None)),
                (None, Some(_)) => None,
            };
            if let Some((weight, shift)) = weights {
                return Ok(fused::conv2d_bias_residual_act(
                    x,
                    &weight,
                    shift.as_ref(),
                    residual,
                    s.stride,
                    padding,
                    s.dilation,
                    s.groups,
                    s.activation.fused(),
                )?);
            }
        }
        let y = self.forward_with(x, Some(residual), Activation::Identity, train)?;
        s.activation.forward(&y)
    }

    /// The padding of the convolution on `x`: TF "SAME" is recomputed per call (it depends on the
    /// input size: the odd pixel goes bottom/right).
    fn padding(&self, x: &Tensor) -> Result<Padding> {
        let (_, _, h, w) = x.dims4()?;
        Ok(self.spec.padding_on(h, w))
    }

    /// The layer with `activation` in place of the spec's, then `+ residual`.
    fn forward_with(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        activation: Activation,
        train: bool,
    ) -> Result<Tensor> {
        let s = &self.spec;
        let padding = self.padding(x)?;
        let conv = |weight: &Tensor, bias: Option<&Tensor>| {
            ops::conv2d(x, weight, bias, s.stride, padding, s.dilation, s.groups)
        };
        let add_residual = |y: Tensor| -> Result<Tensor> {
            Ok(match residual {
                Some(r) => (y + r)?,
                None => y,
            })
        };
        if let Some(bn) = &self.norm {
            if train {
                self.drop_folded();
                let pointwise = s.kernel == 1
                    && s.stride == 1
                    && s.groups == 1
                    && padding == Padding::default();
                let depthwise =
                    s.groups > 1 && s.groups == s.in_channels && s.out_channels == s.in_channels;
                let kind = if pointwise {
                    Some(ConvKind::Pointwise)
                } else if depthwise {
                    Some(ConvKind::Depthwise {
                        stride: s.stride,
                        padding,
                        dilation: s.dilation,
                    })
                } else {
                    None
                };
                if let (None, Some(kind)) = (&self.bias, kind) {
                    let act = activation.fused();
                    return Ok(fused::conv_bn_act_train(
                        x,
                        &self.weight,
                        kind,
                        bn,
                        act,
                        residual,
                    )?);
                }
                let y = conv(&self.weight, self.bias.as_ref())?;
                return add_residual(fused::batch_norm_act_train(bn, &y, activation.fused())?);
            }
            if let Some((weight, shift)) = self.eval_weights(bn)? {
                let y = fused::conv2d_bias_act(
                    x,
                    &weight,
                    &shift,
                    s.stride,
                    padding,
                    s.dilation,
                    s.groups,
                    activation.fused(),
                )?;
                return add_residual(y);
            }
        }
        if let (None, Some(bias)) = (&self.norm, &self.bias) {
            if !bias.track_op() {
                // A plain conv with a constant bias (VGG): bias and activation in place after the conv.
                let y = fused::conv2d_bias_act(
                    x,
                    &self.weight,
                    bias,
                    s.stride,
                    padding,
                    s.dilation,
                    s.groups,
                    activation.fused(),
                )?;
                return add_residual(y);
            }
        }
        let y = conv(&self.weight, self.bias.as_ref())?;
        let y = match &self.norm {
            Some(bn) => bn.forward_t(&y, train)?,
            None => y,
        };
        add_residual(activation.forward(&y)?)
    }

    /// The conv weights and per-channel shift with the eval-mode batch norm folded in, or `None` when
    /// the batch norm's weight or bias is a variable (it then runs as its own ops, so they get their
    /// gradients).
    ///
    /// Constant conv weights are folded once and cached. Variable ones (frozen batch norm,
    /// fine-tuned convolution) cannot be: a fold would go stale after an optimiser step. They are
    /// scaled per call by the batch norm's cached `scale` instead, `weight · scale` (and
    /// `shift + bias · scale`), so the gradient reaches them through that product.
    fn eval_weights(&self, bn: &BatchNorm2d) -> Result<Option<(Tensor, Tensor)>> {
        if bn.weight().track_op() || bn.bias().track_op() {
            return Ok(None);
        }
        let conv_variable =
            self.weight.track_op() || self.bias.as_ref().is_some_and(|b| b.track_op());
        if !conv_variable {
            let mut cache = lock(&self.folded);
            if cache.is_none() {
                *cache = Some(bn.fold_into(&self.weight, self.bias.as_ref())?);
            }
            return Ok(cache.clone());
        }
        let (scale, shift) = {
            let mut cache = lock(&self.bn_scale_shift);
            match &*cache {
                Some(cached) => cached.clone(),
                None => {
                    let dtype = self.weight.dtype();
                    let (scale, shift) = bn.scale_shift()?;
                    let mut shape = vec![1usize; self.weight.rank()];
                    shape[0] = scale.elem_count();
                    let cached = (
                        scale.reshape(shape)?.to_dtype(dtype)?,
                        shift.to_dtype(dtype)?,
                    );
                    *cache = Some(cached.clone());
                    cached
                }
            }
        };
        let weight = self.weight.broadcast_mul(&scale)?;
        let shift = match &self.bias {
            Some(b) => (shift + (b * scale.flatten_all()?)?)?,
            None => shift,
        };
        Ok(Some((weight, shift)))
    }

    /// The kernel and per-channel shift with the eval-mode batch norm folded in, when the layer is
    /// all constants (no variable weight, a batch norm whose parameters are constants): what an
    /// inference engine outside candle's graph (voc-tensor's NHWC layers) needs. `None` otherwise.
    pub fn constant_folded(&self) -> Result<Option<(Tensor, Tensor)>> {
        let variable = self.weight.track_op() || self.bias.as_ref().is_some_and(|b| b.track_op());
        match &self.norm {
            Some(bn) if !variable => self.eval_weights(bn),
            _ => Ok(None),
        }
    }

    /// This layer as voc-tensor's NHWC 1x1 convolution, when it is an unpadded 1x1 convolution of
    /// stride 1 whose weights and batch norm are all constants; `None` otherwise.
    pub(crate) fn nhwc_pointwise(&self) -> Result<Option<PointwiseConv>> {
        let spec = &self.spec;
        // TF "SAME" pads a 1x1 kernel of stride 1 by nothing.
        let unpadded = matches!(
            spec.padding,
            ConvPadding::TfSame | ConvPadding::Symmetric(0)
        );
        if spec.kernel != 1 || spec.stride != 1 || spec.groups != 1 || !unpadded {
            return Ok(None);
        }
        Ok(match self.constant_folded()? {
            Some((w, shift)) => Some(PointwiseConv::new(&w, &shift, spec.activation.fused())?),
            None => None,
        })
    }

    /// Forgets what eval mode cached from the running statistics (a training forward moves them).
    fn drop_folded(&self) {
        *lock(&self.folded) = None;
        *lock(&self.bn_scale_shift) = None;
    }
}

/// Batch norm then an activation, on its own (not after a convolution): the pre-activation of
/// ResNetV2's blocks and its final norm.
///
/// In eval mode with a constant batch norm, its affine map is computed once and applied with the
/// activation in one pass; otherwise (training, or a trained batch norm) it is the fused training
/// op or the composed eval ops.
#[derive(Debug, Clone)]
pub struct NormAct {
    norm: BatchNorm2d,
    activation: Activation,
    /// `(scale, shift)` of the constant eval-mode batch norm, C values each; shared by clones.
    affine: Arc<Mutex<Option<(Tensor, Tensor)>>>,
}

impl NormAct {
    /// Reads the batch norm's `weight`, `bias`, `running_mean` and `running_var` under `vb`.
    pub fn new(
        vb: VarBuilder,
        channels: usize,
        norm: NormSpec,
        activation: Activation,
    ) -> Result<Self> {
        Ok(Self {
            norm: BatchNorm2d::new(vb, channels, norm.eps, norm.momentum)?,
            activation,
            affine: Arc::new(Mutex::new(None)),
        })
    }

    /// `act(bn(x))`; `train`: batch statistics, running averages updated.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let bn = &self.norm;
        if train {
            *lock(&self.affine) = None;
            return Ok(fused::batch_norm_act_train(bn, x, self.activation.fused())?);
        }
        if bn.weight().track_op() || bn.bias().track_op() {
            return self.activation.forward(&bn.forward_t(x, false)?);
        }
        let (scale, shift) = {
            let mut cache = lock(&self.affine);
            match &*cache {
                Some(cached) => cached.clone(),
                None => {
                    let (scale, shift) = bn.scale_shift()?;
                    let cached = (scale.to_dtype(x.dtype())?, shift.to_dtype(x.dtype())?);
                    *cache = Some(cached.clone());
                    cached
                }
            }
        };
        Ok(fused::scale_shift_act(
            x,
            &scale,
            &shift,
            self.activation.fused(),
        )?)
    }
}

/// An eval-mode form of constant layers (a network's NHWC layers), built on the first call that can
/// use it and kept until a training forward moves the batch-norm statistics it was folded from;
/// shared by clones, as the weights are.
#[derive(Debug)]
pub(crate) struct BuiltOnce<T>(Arc<Mutex<BuildState<T>>>);

/// Whether a [`BuiltOnce`] was built, found impossible (a layer has variable weights), or not tried
/// yet.
#[derive(Debug)]
pub(crate) enum BuildState<T> {
    Unbuilt,
    Unavailable,
    Ready(Arc<T>),
}

impl<T> Clone for BuiltOnce<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> Default for BuiltOnce<T> {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(BuildState::Unbuilt)))
    }
}

impl<T> BuiltOnce<T> {
    /// The built form, from `build` on the first call; `None` from `build` marks it unavailable (not
    /// tried again), an error leaves it to be tried on the next call.
    pub(crate) fn get_or_build(
        &self,
        build: impl FnOnce() -> Result<Option<T>>,
    ) -> Result<Option<Arc<T>>> {
        let mut state = lock(&self.0);
        if let BuildState::Unbuilt = *state {
            *state = match build()? {
                Some(built) => BuildState::Ready(Arc::new(built)),
                None => BuildState::Unavailable,
            };
        }
        Ok(match &*state {
            BuildState::Ready(built) => Some(built.clone()),
            _ => None,
        })
    }

    /// Forgets the built form (a training forward moved what it was folded from).
    pub(crate) fn reset(&self) {
        *lock(&self.0) = BuildState::Unbuilt;
    }

    /// The state, for tests.
    #[cfg(test)]
    pub(crate) fn state(&self) -> std::sync::MutexGuard<'_, BuildState<T>> {
        lock(&self.0)
    }
}

/// Locks an eval-mode cache; a poisoned lock still holds a whole value (it is only ever replaced).
pub(crate) fn lock<T>(cache: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    cache
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Global average pooling over H and W, keeping them as 1x1: `N x C x H x W -> N x C x 1 x 1`.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    Ok(x.mean_keepdim(3)?.mean_keepdim(2)?)
}

/// A fully connected layer `weight` (`out x in`) and `bias` created through the var builder.
pub fn linear(
    vb: VarBuilder,
    in_features: usize,
    out_features: usize,
) -> Result<candle_nn::Linear> {
    let bound = 1.0 / (in_features as f64).sqrt();
    let weight = vb.get_with_hints(
        (out_features, in_features),
        "weight",
        Init::Uniform {
            lo: -bound,
            up: bound,
        },
    )?;
    let bias = vb.get_with_hints(
        out_features,
        "bias",
        Init::Uniform {
            lo: -bound,
            up: bound,
        },
    )?;
    Ok(candle_nn::Linear::new(weight, Some(bias)))
}

/// Applies a linear layer to `N x C` features.
pub fn linear_forward(layer: &candle_nn::Linear, x: &Tensor) -> Result<Tensor> {
    Ok(layer.forward(x)?)
}
