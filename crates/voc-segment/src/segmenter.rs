//! Segmenting photos of any size: the network, its preprocessing, and how an arbitrary image is fitted
//! to a network trained on 513x513 crops.
use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device, ModuleT, Tensor};
use voc_classify::preprocess::{image_input, rgb_to_tensor};
use voc_core::{Mask, Normalization, RgbImage};
use voc_tensor::hub::{HubCache, WeightsSource};
use voc_tensor::ops::resize_bilinear;

use crate::deeplabv3::DeepLabV3;
use crate::deeplabv3plus::DeepLabV3Plus;
use crate::error::{Result, SegmentError};
use crate::preset::SegmenterPreset;
use crate::refine::SlicParams;

/// How an image of any size is brought to the network and the logits back to the image.
///
/// Written and parsed as on command lines:
///
/// ```
/// use voc_segment::SizeStrategy;
/// assert_eq!(SizeStrategy::default(), SizeStrategy::Pad { min_size: 513 });
/// assert_eq!("pad:0".parse::<SizeStrategy>()?, SizeStrategy::Pad { min_size: 0 });
/// assert_eq!("resize".parse::<SizeStrategy>()?, SizeStrategy::Resize(513));
/// assert_eq!(SizeStrategy::Resize(321).to_string(), "resize:321");
/// assert!("crop:5".parse::<SizeStrategy>().is_err());
/// # Ok::<(), voc_segment::SegmentError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeStrategy {
    /// Resize the photo to `size x size` (bilinear, anti-aliased when shrinking), run the network and
    /// resize the logits to the photo's size. Changes the aspect ratio.
    Resize(usize),
    /// Pad the photo at the bottom and right with the mean grey (0 after normalisation) to the smallest
    /// `k * output_stride + 1` that is at least its size and at least `min_size`, run the network,
    /// upsample the logits to the padded size and crop the photo's part: what DeepLab's own evaluation
    /// does (with `min_size` 513). `min_size` 0 pads only to the stride grid.
    Pad {
        /// The smallest side the padded photo has (513 as DeepLab evaluates).
        min_size: usize,
    },
}

impl Default for SizeStrategy {
    fn default() -> Self {
        Self::Pad { min_size: 513 }
    }
}

impl fmt::Display for SizeStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Resize(size) => write!(f, "resize:{size}"),
            Self::Pad { min_size } => write!(f, "pad:{min_size}"),
        }
    }
}

impl FromStr for SizeStrategy {
    type Err = SegmentError;

    /// `resize[:SIZE]` (default 513) or `pad[:MIN_SIZE]` (default 513; `pad:0` pads only to the stride).
    /// Anything else, a size that is not a number, or `resize:0` is a bad-argument error.
    fn from_str(s: &str) -> Result<Self> {
        let (kind, value) = match s.split_once(':') {
            Some((k, v)) => (k, Some(v)),
            None => (s, None),
        };
        let size = |default: usize| -> Result<usize> {
            value.map_or(Ok(default), |v| {
                v.parse().map_err(|_| {
                    SegmentError::BadArgument(format!("size strategy '{s}': '{v}' is not a size"))
                })
            })
        };
        match kind {
            "resize" => match size(513)? {
                0 => Err(SegmentError::BadArgument(format!(
                    "size strategy '{s}': resize needs a size > 0"
                ))),
                n => Ok(Self::Resize(n)),
            },
            "pad" => Ok(Self::Pad {
                min_size: size(513)?,
            }),
            _ => Err(SegmentError::BadArgument(format!(
                "size strategy '{s}': expected resize[:SIZE] or pad[:MIN_SIZE]"
            ))),
        }
    }
}

/// One of the segmentation networks, as a [`Segmenter`] holds it; a [`ModuleT`] like each of them.
#[derive(Debug, Clone)]
pub enum SegmentationNet {
    /// DeepLabV3 (logits at the output stride).
    DeepLabV3(Box<DeepLabV3>),
    /// DeepLabV3+ (logits at the input size).
    DeepLabV3Plus(Box<DeepLabV3Plus>),
}

impl SegmentationNet {
    /// Raw logits: DeepLabV3's at the output stride, DeepLabV3+'s at the input size.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Self::DeepLabV3(m) => m.forward_t(x, train),
            Self::DeepLabV3Plus(m) => m.forward_t(x, train),
        }
    }

    /// [`Self::forward_t`] with the backbone's and the head's training modes apart (see
    /// [`DeepLabV3Plus::forward_modes`]).
    pub fn forward_modes(
        &self,
        x: &Tensor,
        backbone_train: bool,
        head_train: bool,
    ) -> Result<Tensor> {
        match self {
            Self::DeepLabV3(m) => m.forward_modes(x, backbone_train, head_train),
            Self::DeepLabV3Plus(m) => m.forward_modes(x, backbone_train, head_train),
        }
    }

    /// Logits at `out_h x out_w`, upsampled the way each network was trained (DeepLabV3:
    /// `align_corners=True` from the output stride; DeepLabV3+: its own `align_corners=False` resize to the
    /// input, then to `out_h x out_w` if that differs).
    pub fn logits_at(&self, x: &Tensor, out_h: usize, out_w: usize, train: bool) -> Result<Tensor> {
        match self {
            Self::DeepLabV3(m) => m.logits_at(x, out_h, out_w, train),
            Self::DeepLabV3Plus(m) => {
                let logits = m.forward_t(x, train)?;
                let (_, _, h, w) = logits.dims4()?;
                if (h, w) == (out_h, out_w) {
                    Ok(logits)
                } else {
                    Ok(resize_bilinear(&logits, out_h, out_w, false)?)
                }
            }
        }
    }

    /// The current output stride.
    pub fn output_stride(&self) -> usize {
        match self {
            Self::DeepLabV3(m) => m.output_stride(),
            Self::DeepLabV3Plus(m) => m.output_stride(),
        }
    }

    /// Switches the output stride (16 or 8) without touching the weights; a value other than 8, 16 or
    /// 32 is a bad-argument error.
    pub fn set_output_stride(&mut self, output_stride: usize) -> Result<()> {
        match self {
            Self::DeepLabV3(m) => m.set_output_stride(output_stride),
            Self::DeepLabV3Plus(m) => m.set_output_stride(output_stride),
        }
    }

    /// Classes of the logits (21 for VOC).
    pub fn num_classes(&self) -> usize {
        match self {
            Self::DeepLabV3(m) => m.config().num_classes,
            Self::DeepLabV3Plus(m) => m.config().num_classes,
        }
    }
}

impl ModuleT for SegmentationNet {
    /// [`SegmentationNet::forward_t`]: the raw logits.
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        Ok(SegmentationNet::forward_t(self, xs, train)?)
    }
}

/// A network with its preprocessing: photos in, logits or class masks at the photo's size out.
///
/// ```
/// use candle_core::{DType, Device};
/// use voc_segment::{DeepLabV3, Mask, RgbImage, SegmentationNet, Segmenter, SizeStrategy};
///
/// // A fresh network stands in for a pretrained one (`load_segmenter`, `Segmenter::from_preset`).
/// let vb = candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu);
/// let net = SegmentationNet::DeepLabV3(Box::new(DeepLabV3::new(vb, Default::default())?));
/// let strategy = SizeStrategy::Pad { min_size: 0 };
/// let mut segmenter = Segmenter::new(net, voc_core::Normalization::MINUS_ONE_TO_ONE, strategy);
/// segmenter.flip_tta = true;
/// let photo = RgbImage::new(37, 51, vec![90; 37 * 51 * 3])?;
/// let logits = segmenter.logits(&photo, &Device::Cpu)?;
/// assert_eq!(logits.dims(), [1, 21, 37, 51]); // at the photo's size, whatever the network's grid
/// let mask: Mask = segmenter.mask(&photo, &Device::Cpu)?;
/// assert_eq!((mask.height(), mask.width()), (37, 51));
/// assert!(mask.labels().is_empty()); // all background: the zero network has no preference
/// let overlay = mask.overlay(&photo, 0.6)?; // mask.colorize() paints the mask alone
/// assert_eq!(overlay, photo);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Segmenter {
    /// The network.
    pub net: SegmentationNet,
    /// How pixels become network inputs.
    pub normalization: Normalization,
    /// How a photo of any size is fitted to the network.
    pub strategy: SizeStrategy,
    /// Also run the left-right mirrored photo and average the two logits.
    pub flip_tta: bool,
    /// Run the photo at each of these scales (1.0: as is) and average the logits at the photo's size;
    /// `[1.0]` is plain inference.
    pub scales: Vec<f64>,
    /// Snap the arg-max mask to superpixels of the photo ([`crate::refine`]).
    pub refine: Option<SlicParams>,
}

impl Segmenter {
    /// `net` with its input normalisation and size strategy, without flip averaging.
    pub fn new(net: SegmentationNet, normalization: Normalization, strategy: SizeStrategy) -> Self {
        Self {
            net,
            normalization,
            strategy,
            flip_tta: false,
            scales: vec![1.0],
            refine: None,
        }
    }

    /// The pretrained preset from `cache` (or a local weights file as `source`) at `output_stride`. A
    /// source that cannot be found (not cached while offline) or does not fit is an error naming it.
    pub fn from_preset(
        preset: &SegmenterPreset,
        cache: &HubCache,
        source: &WeightsSource,
        output_stride: usize,
        strategy: SizeStrategy,
        device: &Device,
    ) -> Result<Self> {
        let net = preset.load_in(cache, source, output_stride, device)?;
        Ok(Self::new(
            SegmentationNet::DeepLabV3(Box::new(net)),
            preset.normalization,
            strategy,
        ))
    }

    /// Logits `1 x classes x H x W` for a photo of `H x W` pixels, fitted to the network by
    /// [`Self::strategy`] and, with [`Self::flip_tta`], averaged with the mirrored photo's; with
    /// several [`Self::scales`], averaged over the photo resized by each (bilinear, anti-aliased when
    /// shrinking) and the logits resized back.
    pub fn logits(&self, image: &RgbImage, device: &Device) -> Result<Tensor> {
        if self.scales.is_empty() || self.scales == [1.0] {
            return self.logits_at_scale_one(image, device);
        }
        let (h, w) = (image.height(), image.width());
        let mut sum: Option<Tensor> = None;
        for &scale in &self.scales {
            if !(scale > 0.0 && scale.is_finite()) {
                return Err(SegmentError::BadArgument(format!(
                    "test-time scale {scale}: expected a positive number"
                )));
            }
            let logits = if scale == 1.0 {
                self.logits_at_scale_one(image, device)?
            } else {
                let side = |v: usize| ((v as f64 * scale).round() as usize).max(1);
                let (sh, sw) = (side(h), side(w));
                let x = image_input(image, (sh, sw), &self.normalization, device)?;
                let logits = self.logits_of_input(&x)?;
                resize_bilinear(&logits, h, w, false)?
            };
            sum = Some(match sum {
                Some(s) => (s + logits)?,
                None => logits,
            });
        }
        let sum = sum.expect("at least one scale");
        Ok((sum / self.scales.len() as f64)?)
    }

    /// Logits `1 x classes x h x w` of an already normalised `1 x 3 x h x w` input, fitted to the
    /// network by [`Self::strategy`] (and mirrored with [`Self::flip_tta`]) as [`Self::logits`] fits a
    /// photo: the entry point for callers that build the input themselves (an attack differentiates
    /// through it).
    pub fn logits_of_input(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        match self.strategy {
            SizeStrategy::Resize(size) => {
                let resized = resize_bilinear(x, size, size, false)?;
                self.run(&resized, h, w)
            }
            SizeStrategy::Pad { min_size } => {
                let os = self.net.output_stride();
                let grid = |side: usize| (side.max(min_size).max(1) - 1).div_ceil(os) * os + 1;
                let (ph, pw) = (grid(h), grid(w));
                let x = x
                    .pad_with_zeros(2, 0, ph - h)?
                    .pad_with_zeros(3, 0, pw - w)?;
                let logits = self.run(&x, ph, pw)?;
                Ok(logits.narrow(2, 0, h)?.narrow(3, 0, w)?.contiguous()?)
            }
        }
    }

    fn logits_at_scale_one(&self, image: &RgbImage, device: &Device) -> Result<Tensor> {
        let (h, w) = (image.height(), image.width());
        match self.strategy {
            SizeStrategy::Resize(size) => {
                let x = image_input(image, (size, size), &self.normalization, device)?;
                self.run(&x, h, w)
            }
            SizeStrategy::Pad { min_size } => {
                let os = self.net.output_stride();
                let grid = |side: usize| (side.max(min_size).max(1) - 1).div_ceil(os) * os + 1;
                let (ph, pw) = (grid(h), grid(w));
                let x = voc_tensor::preprocess::normalize(
                    &rgb_to_tensor(image, device)?,
                    &self.normalization,
                )?;
                let x = x
                    .pad_with_zeros(2, 0, ph - h)?
                    .pad_with_zeros(3, 0, pw - w)?;
                let logits = self.run(&x, ph, pw)?;
                Ok(logits.narrow(2, 0, h)?.narrow(3, 0, w)?.contiguous()?)
            }
        }
    }

    fn run(&self, x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
        let logits = self.net.logits_at(x, out_h, out_w, false)?;
        if !self.flip_tta {
            return Ok(logits);
        }
        let mirrored = self.net.logits_at(&flip_width(x)?, out_h, out_w, false)?;
        Ok(((logits + flip_width(&mirrored)?)? * 0.5)?)
    }

    /// The class of every pixel, at the photo's size: the arg-max of [`Self::logits`]. The `Mask`
    /// (voc-core's) gives the classes present (`labels`), the VOC-palette picture (`colorize`, then
    /// `write_png`) and a blend over the photo (`overlay`).
    /// With [`Self::refine`], the mask is then snapped to the photo's superpixels.
    pub fn mask(&self, image: &RgbImage, device: &Device) -> Result<Mask> {
        let mask = argmax_mask(&self.logits(image, device)?)?;
        match &self.refine {
            Some(params) => crate::refine::refine_with_superpixels(image, &mask, params),
            None => Ok(mask),
        }
    }
}

/// Mirrors an NCHW tensor left-right.
pub fn flip_width(x: &Tensor) -> Result<Tensor> {
    let w = x.dim(3)?;
    let idx: Vec<u32> = (0..w as u32).rev().collect();
    Ok(x.index_select(&Tensor::from_vec(idx, w, x.device())?, 3)?)
}

/// The arg-max class of `1 x C x H x W` logits as an `H x W` mask; a batch of more than one, or more
/// than 256 classes, is a bad-argument error.
///
/// ```
/// use candle_core::{Device, Tensor};
/// // 3 classes on a 1 x 2 image: background left, class 2 (bicycle, the 2nd VOC class) right.
/// let logits = Tensor::new(&[[[[5f32, 0.0]], [[0.0, 1.0]], [[0.0, 3.0]]]], &Device::Cpu)?;
/// let mask = voc_segment::argmax_mask(&logits)?;
/// assert_eq!(mask.as_slice(), [0, 2]);
/// assert_eq!(mask.labels().names().collect::<Vec<_>>(), ["bicycle"]);
/// # Ok::<(), voc_segment::SegmentError>(())
/// ```
pub fn argmax_mask(logits: &Tensor) -> Result<Mask> {
    let (n, c, h, w) = logits.dims4()?;
    if n != 1 || c > 256 {
        return Err(SegmentError::BadArgument(format!(
            "argmax_mask wants 1 x C x H x W logits with C <= 256, got {:?}",
            logits.dims()
        )));
    }
    let classes = logits
        .argmax(1)?
        .flatten_all()?
        .to_dtype(DType::U32)?
        .to_vec1::<u32>()?;
    Ok(Mask::new(
        h,
        w,
        classes.into_iter().map(|c| c as u8).collect(),
    )?)
}
