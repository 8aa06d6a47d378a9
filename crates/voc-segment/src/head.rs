//! Pieces both DeepLab heads are built from: the image-pooling branch, the 1x1 classifier, channel
//! dropout, and loading through the classifier crate's name-checked weight loaders.
use std::collections::HashMap;

use candle_core::{Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use voc_classify::layers::{
    global_avg_pool, Activation, ConvNormAct, ConvPadding, ConvSpec, NormSpec,
};
use voc_classify::weights::{self, Unexpected};

use crate::error::{Result, SegmentError};

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

/// Builds a network from named tensors as constants; a tensor set that is not exactly the
/// architecture's fails with the loader's name report.
pub(crate) fn load_frozen<T>(
    tensors: HashMap<String, Tensor>,
    source: &str,
    architecture: &str,
    device: &Device,
    build: impl Fn(VarBuilder) -> Result<T>,
) -> Result<T> {
    Ok(weights::load_frozen(
        tensors,
        source,
        architecture,
        Unexpected::Error,
        device,
        |vb| build(vb).map_err(into_classify),
    )?)
}

/// Builds a network on trainable variables in `varmap`, every one initialised from `tensors`.
pub(crate) fn load_trainable<T>(
    varmap: &VarMap,
    tensors: HashMap<String, Tensor>,
    source: &str,
    architecture: &str,
    device: &Device,
    build: impl Fn(VarBuilder) -> Result<T>,
) -> Result<T> {
    Ok(weights::load_trainable(
        varmap,
        tensors,
        source,
        architecture,
        Unexpected::Error,
        device,
        |vb| build(vb).map_err(into_classify),
    )?)
}

/// Carries a segmentation error through the classifier crate's loader (which owns the name check).
pub(crate) fn into_classify(e: SegmentError) -> voc_classify::ClassifyError {
    match e {
        SegmentError::Classify(e) => e,
        SegmentError::Tensor(e) => voc_classify::ClassifyError::Tensor(e),
        SegmentError::Candle(e) => voc_classify::ClassifyError::Candle(e),
        other => voc_classify::ClassifyError::BadArgument(other.to_string()),
    }
}
