//! The networks as candle modules.
//!
//! The networks ([`crate::MobileNetV2`], [`crate::EfficientNetLite`], [`crate::ImageClassifier`], and
//! voc-segment's `DeepLabV3`, `DeepLabV3Plus`, `SegmentationNet`) implement [`ModuleT`]:
//! `forward_t(x, train)`, where `train` makes batch norms use the batch statistics (and update their
//! running averages) and turns dropout on. The trait method is the network's own `forward_t` (for a
//! backbone: the last map of `features_t`) with candle's error type (a [`crate::ClassifyError`] is
//! carried with its message, a candle error as itself), so the networks compose with candle code:
//! generic `fn f<M: ModuleT>`, `Box<dyn ModuleT>`.
//!
//! A type cannot implement both traits (candle implements [`ModuleT`] for every [`Module`], ignoring
//! the flag), so a network is a [`Module`] through [`Eval`], which runs it in inference mode:
//!
//! ```
//! use candle_core::{DType, Device, Module, Tensor};
//! use voc_classify::{Eval, MobileNetV2, MobileNetV2Config};
//! let vb = candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu);
//! let net = MobileNetV2::new(vb, MobileNetV2Config::default())?;
//! let seq = candle_nn::seq().add(Eval(net)).add(|x: &Tensor| x.mean_keepdim(3)?.mean_keepdim(2));
//! let x = Tensor::zeros((1, 3, 32, 32), DType::F32, &Device::Cpu)?;
//! assert_eq!(seq.forward(&x)?.dims(), &[1, 320, 1, 1]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
use candle_core::{Module, ModuleT, Tensor};

/// A network in inference mode as a [`Module`]: `forward(x)` is `forward_t(x, false)`. It dereferences
/// to the network.
///
/// ```
/// use candle_core::{DType, Device, Module, Tensor};
/// use voc_classify::{Eval, ImageClassifier, ModelPreset};
/// let vb = candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu);
/// let config = ModelPreset::EFFICIENTNET_LITE0.classifier_config();
/// let net = Eval(ImageClassifier::new(vb, config)?);
/// assert_eq!(net.num_features(), 1280); // the network's own methods, through `Deref`
/// let module: Box<dyn Module> = Box::new(net);
/// let x = Tensor::zeros((1, 3, 32, 32), DType::F32, &Device::Cpu)?;
/// assert_eq!(module.forward(&x)?.dims(), [1, 1000]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Eval<M>(pub M);

impl<M> Eval<M> {
    /// The network.
    pub fn into_inner(self) -> M {
        self.0
    }
}

impl<M> std::ops::Deref for Eval<M> {
    type Target = M;

    fn deref(&self) -> &M {
        &self.0
    }
}

impl<M: ModuleT> Module for Eval<M> {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.0.forward_t(xs, false)
    }
}
