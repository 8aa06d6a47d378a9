//! Segmenting photos of any size: the network, its preprocessing, and how an arbitrary image is fitted
//! to a network trained on 513x513 crops.
use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device, Tensor};
use voc_classify::{Normalization, Rgb8Image};
use voc_tensor::hub::{HubCache, WeightsSource};
use voc_tensor::ops::resize_bilinear;

use crate::deeplabv3::DeepLabV3;
use crate::deeplabv3plus::DeepLabV3Plus;
use crate::error::{Result, SegmentError};
use crate::preset::SegmenterPreset;

/// How an image of any size is brought to the network and the logits back to the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeStrategy {
    /// Resize the photo to `size x size` (bilinear, anti-aliased when shrinking), run the network and
    /// resize the logits to the photo's size. Changes the aspect ratio.
    Resize(usize),
    /// Pad the photo at the bottom and right with the mean grey (0 after normalisation) to the smallest
    /// `k * output_stride + 1` that is at least its size and at least `min_size`, run the network,
    /// upsample the logits to the padded size and crop the photo's part: what DeepLab's own evaluation
    /// does (with `min_size` 513). `min_size` 0 pads only to the stride grid.
    Pad { min_size: usize },
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

/// One of the segmentation networks.
#[derive(Debug, Clone)]
pub enum SegmentationNet {
    DeepLabV3(Box<DeepLabV3>),
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

    pub fn output_stride(&self) -> usize {
        match self {
            Self::DeepLabV3(m) => m.output_stride(),
            Self::DeepLabV3Plus(m) => m.output_stride(),
        }
    }

    pub fn set_output_stride(&mut self, output_stride: usize) -> Result<()> {
        match self {
            Self::DeepLabV3(m) => m.set_output_stride(output_stride),
            Self::DeepLabV3Plus(m) => m.set_output_stride(output_stride),
        }
    }

    pub fn num_classes(&self) -> usize {
        match self {
            Self::DeepLabV3(m) => m.config().num_classes,
            Self::DeepLabV3Plus(m) => m.config().num_classes,
        }
    }
}

/// A network with its preprocessing: photos in, logits or class masks at the photo's size out.
#[derive(Debug, Clone)]
pub struct Segmenter {
    pub net: SegmentationNet,
    pub normalization: Normalization,
    pub strategy: SizeStrategy,
    /// Also run the left-right mirrored photo and average the two logits.
    pub flip_tta: bool,
}

impl Segmenter {
    pub fn new(net: SegmentationNet, normalization: Normalization, strategy: SizeStrategy) -> Self {
        Self {
            net,
            normalization,
            strategy,
            flip_tta: false,
        }
    }

    /// The pretrained preset from `cache` (or a local weights file as `source`) at `output_stride`.
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

    /// Logits `1 x classes x H x W` for a photo of `H x W` pixels.
    pub fn logits(&self, image: &Rgb8Image, device: &Device) -> Result<Tensor> {
        let (h, w) = (image.height, image.width);
        match self.strategy {
            SizeStrategy::Resize(size) => {
                let x = self
                    .normalization
                    .apply(&image.resize(size, size)?.to_tensor(device)?)?;
                self.run(&x, h, w)
            }
            SizeStrategy::Pad { min_size } => {
                let os = self.net.output_stride();
                let grid = |side: usize| (side.max(min_size).max(1) - 1).div_ceil(os) * os + 1;
                let (ph, pw) = (grid(h), grid(w));
                let x = self.normalization.apply(&image.to_tensor(device)?)?;
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

    /// The class of every pixel, `H x W` row-major.
    pub fn mask(&self, image: &Rgb8Image, device: &Device) -> Result<Vec<u8>> {
        argmax_mask(&self.logits(image, device)?)
    }
}

/// Mirrors an NCHW tensor left-right.
pub fn flip_width(x: &Tensor) -> Result<Tensor> {
    let w = x.dim(3)?;
    let idx: Vec<u32> = (0..w as u32).rev().collect();
    Ok(x.index_select(&Tensor::from_vec(idx, w, x.device())?, 3)?)
}

/// The arg-max class of `1 x C x H x W` logits as an `H x W` row-major mask (C <= 256).
pub fn argmax_mask(logits: &Tensor) -> Result<Vec<u8>> {
    let (n, c, _, _) = logits.dims4()?;
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
    Ok(classes.into_iter().map(|c| c as u8).collect())
}
