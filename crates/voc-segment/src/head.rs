//! Pieces both DeepLab heads are built from: the image-pooling branch, the 1x1 classifier and channel
//! dropout.
use candle_core::Tensor;
use candle_nn::VarBuilder;
use voc_classify::layers::{
    global_avg_pool, Activation, ConvNormAct, ConvPadding, ConvSpec, NormSpec,
};

use crate::error::Result;

/// The final 1x1 conv with bias and no norm or activation, `channels -> num_classes` logits.
pub(crate) fn classifier(
    vb: VarBuilder,
    channels: usize,
    num_classes: usize,
    norm: NormSpec,
) -> voc_classify::Result<ConvNormAct> {
    ConvNormAct::transformers(
        vb,
        ConvSpec {
            bias: true,
            norm: None,
            padding: ConvPadding::Symmetric(0),
            ..ConvSpec::conv_bn(channels, num_classes, 1, norm, Activation::Identity)
        },
    )
}

/// The image-pooling branch: global average of `features`, `conv`, and the result spread back over
/// the `features` grid (`N x channels x h x w`, contiguous for the concatenation that follows).
pub(crate) fn image_pool(
    conv: &ConvNormAct,
    features: &Tensor,
    channels: usize,
    train: bool,
) -> Result<Tensor> {
    let (n, _, h, w) = features.dims4()?;
    let pooled = conv.forward_t(&global_avg_pool(features)?, train)?;
    // Bilinear upsampling of a 1x1 map (with either align_corners) is a broadcast.
    Ok(pooled.broadcast_as((n, channels, h, w))?.contiguous()?)
}

/// Channel-wise dropout (`Dropout2d`): whole feature maps are zeroed, the rest scaled by `1/(1-p)`.
pub(crate) fn dropout2d(x: &Tensor, p: f32) -> Result<Tensor> {
    let (n, c, _, _) = x.dims4()?;
    let keep = Tensor::rand(0f32, 1f32, (n, c, 1, 1), x.device())?
        .ge(p as f64)?
        .to_dtype(x.dtype())?;
    Ok(x.broadcast_mul(&(keep / (1.0 - p as f64))?)?)
}
