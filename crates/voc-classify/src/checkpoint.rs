//! A trained multi-label classifier read back from a voc checkpoint (`voc_tensor::checkpoint`): the
//! network, its class names, input size, normalisation and per-class decision thresholds, all from the
//! one file.
//!
//! The checkpoint's `architecture` names the backbone: `mobilenet_v2_classifier` or
//! `efficientnet_lite0_classifier` ([`checkpoint_architecture`] gives the name to write). Its tensors
//! carry the same names as the pretrained models (`mobilenet_v2.*` / timm's), with a `classifier.*` of
//! one row per class.
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use voc_tensor::checkpoint::{self, CheckpointMeta};

use crate::classifier::ClassifierArch;
use crate::error::{ClassifyError, Result};
use crate::head::HeadKind;
use crate::metrics::Thresholds;
use crate::models::{ClassifierNet, ModelChoice};
use voc_core::{Normalization, RgbImage};

use crate::classifier::{ClassifierConfig, ImageClassifier};
use crate::scratch::{ScratchCnn, ScratchCnnConfig};
use crate::weights::FromWeights;

/// Suffix of the `architecture` of a classifier checkpoint: `{backbone}_classifier`.
pub const CLASSIFIER_SUFFIX: &str = "_classifier";

/// Threshold used when a checkpoint records none.
pub const DEFAULT_THRESHOLD: f32 = 0.5;

/// The `architecture` string a checkpoint of a classifier on `arch` carries.
pub fn checkpoint_architecture(arch: &ClassifierArch) -> String {
    format!("{}{CLASSIFIER_SUFFIX}", arch.name())
}

/// The model a checkpoint's `architecture` string names (a pretrained backbone's `{name}_classifier`, or
/// the scratch CNN's `scratch_classifier`); any other string is a [`ClassifyError::BadConfig`] on `path`
/// listing the known ones.
pub fn model_from_checkpoint(path: &Path, architecture: &str) -> Result<ModelChoice> {
    let models: Vec<ModelChoice> = crate::models::model_names()
        .into_iter()
        .filter_map(|n| ModelChoice::by_name(n).ok())
        .collect();
    models
        .iter()
        .find(|c| c.architecture() == architecture)
        .copied()
        .ok_or_else(|| ClassifyError::BadConfig {
            path: path.to_path_buf(),
            message: format!(
                "a checkpoint of architecture '{architecture}', not a classifier: expected one of {}",
                models
                    .iter()
                    .map(|c| c.architecture())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
}

/// How a checkpoint's images are fitted to its input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputResize {
    /// voc-data's evaluation warp in the recorded geometry (`extra.geometry`), as voc's trainer fed
    /// the images.
    Geometry(crate::train::Geometry),
    /// [`crate::resize_rgb`] (PIL-style anti-aliased bilinear): checkpoints that record no geometry.
    Pil,
}

/// A multi-label classifier with everything needed to use it.
///
/// ```
/// use candle_core::{DType, Device};
/// use candle_nn::{VarBuilder, VarMap};
/// use voc_classify::checkpoint::checkpoint_architecture;
/// use voc_classify::{CheckpointClassifier, ClassifierConfig, ImageClassifier, ModelPreset, RgbImage};
/// use voc_tensor::checkpoint::{save_checkpoint, CheckpointMeta};
///
/// // A fresh 2-label head on MobileNetV2, saved as a trainer would save it.
/// let device = Device::Cpu;
/// let varmap = VarMap::new();
/// let config = ClassifierConfig { num_classes: 2, ..ModelPreset::MOBILENET_V2.classifier_config() };
/// ImageClassifier::new(VarBuilder::from_varmap(&varmap, DType::F32, &device), config)?;
/// let names = vec!["cat".to_string(), "dog".to_string()];
/// let mut meta = CheckpointMeta::new(checkpoint_architecture(&config.arch), names);
/// meta.input_size = Some((64, 64));
/// meta.thresholds = Some(vec![0.4, 0.6]);
/// let dir = std::env::temp_dir().join(format!("voc-classify-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let path = dir.join("classifier.safetensors");
/// save_checkpoint(&path, &varmap, &meta)?;
///
/// let classifier = CheckpointClassifier::load(&path, &device)?;
/// assert_eq!((classifier.input_size, classifier.thresholds_from_checkpoint), ((64, 64), true));
/// let photo = RgbImage::new(48, 80, vec![128; 48 * 80 * 3])?;
/// let probabilities = classifier.probabilities(&photo, &device)?; // one sigmoid per class
/// let labels = classifier.labels(&photo, &device)?; // 0/1: probability >= the class's threshold
/// assert_eq!((probabilities.len(), labels.len()), (2, 2));
/// std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct CheckpointClassifier {
    /// The network, for inference.
    pub model: ClassifierNet,
    /// The checkpoint's metadata as written (training configuration, seed, extras).
    pub meta: CheckpointMeta,
    /// The file it was read from.
    pub path: PathBuf,
    /// Output `i` is `class_names[i]`.
    pub class_names: Vec<String>,
    /// Per-class probability thresholds (the checkpoint's, else [`DEFAULT_THRESHOLD`] for every class).
    pub thresholds: Vec<f32>,
    /// Whether `thresholds` came from the checkpoint.
    pub thresholds_from_checkpoint: bool,
    /// How pixels become network inputs (the checkpoint's).
    pub normalization: Normalization,
    /// `(height, width)` images are resized to (the checkpoint's, else the preset's square size).
    pub input_size: (usize, usize),
    /// How images are fitted to `input_size`.
    pub resize: InputResize,
    /// With no class at or above its threshold, label the most probable class (every VOC image shows
    /// at least one object); checkpoints of voc's trainer record it.
    pub argmax_fallback: bool,
}

impl CheckpointClassifier {
    /// Reads the checkpoint at `path`. A checkpoint of another model, thresholds that do not match the
    /// classes, or tensors that do not fit the architecture are errors naming the file.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let (tensors, meta) = checkpoint::load_checkpoint(path, device)?;
        let bad = |message: String| ClassifyError::BadConfig {
            path: path.to_path_buf(),
            message,
        };
        let choice = model_from_checkpoint(path, &meta.architecture)?;
        let num_classes = meta.class_names.len();
        if num_classes == 0 {
            return Err(bad("the checkpoint metadata lists no class names".into()));
        }
        let (thresholds, thresholds_from_checkpoint) = match &meta.thresholds {
            Some(t) if t.len() != num_classes => {
                return Err(bad(format!(
                    "{} thresholds for {num_classes} classes in the checkpoint metadata",
                    t.len()
                )))
            }
            Some(t) => (t.clone(), true),
            None => (vec![DEFAULT_THRESHOLD; num_classes], false),
        };
        if let Some(t) = thresholds.iter().find(|t| !(0.0..=1.0).contains(*t)) {
            return Err(bad(format!("threshold {t} is not a probability in [0, 1]")));
        }
        let input_size = meta
            .input_size
            .unwrap_or((choice.input_size(), choice.input_size()));
        if input_size.0 == 0 || input_size.1 == 0 {
            return Err(bad(format!("input size {input_size:?} is empty")));
        }
        let extra = |key: &str| meta.extra.get(key).and_then(|v| v.as_str());
        let head = match extra("head") {
            Some(h) => h.parse::<HeadKind>().map_err(|e| bad(e.to_string()))?,
            None => HeadKind::Linear,
        };
        let resize = match meta.extra.get("geometry") {
            Some(g) => InputResize::Geometry(
                serde_json::from_value(g.clone())
                    .map_err(|e| bad(format!("geometry {g} in the metadata: {e}")))?,
            ),
            None => InputResize::Pil,
        };
        let argmax_fallback = meta
            .extra
            .get("argmax_fallback")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let source = path.display().to_string();
        let model = match choice {
            ModelChoice::Pretrained(preset) => {
                ClassifierNet::Transfer(ImageClassifier::from_tensors(
                    tensors,
                    &source,
                    ClassifierConfig {
                        arch: preset.arch,
                        num_classes,
                        dropout: 0.0,
                        head,
                    },
                    device,
                )?)
            }
            ModelChoice::Scratch => {
                if input_size.0 != input_size.1 {
                    return Err(bad(format!(
                        "the scratch CNN takes square inputs, not {input_size:?}"
                    )));
                }
                let config = ScratchCnnConfig {
                    input_size: input_size.0,
                    num_classes,
                    dropout: 0.0,
                    ..ScratchCnnConfig::default()
                };
                ClassifierNet::Scratch(crate::weights::load_frozen(
                    tensors,
                    &source,
                    crate::models::SCRATCH_ARCHITECTURE,
                    crate::weights::Unexpected::Error,
                    device,
                    |vb| ScratchCnn::new(vb, config),
                )?)
            }
        };
        Ok(Self {
            model,
            normalization: meta.normalization,
            class_names: meta.class_names.clone(),
            path: path.to_path_buf(),
            thresholds,
            thresholds_from_checkpoint,
            input_size,
            resize,
            argmax_fallback,
            meta,
        })
    }

    /// The thresholds and fallback rule that turn probabilities into labels.
    pub fn decision(&self) -> Thresholds {
        Thresholds {
            per_class: self.thresholds.clone(),
            argmax_fallback: self.argmax_fallback,
        }
    }

    /// The photo as the network sees it: fitted to `input_size` as the checkpoint was trained, still
    /// 8-bit pixels (what an attack perturbs and a gallery shows).
    pub fn fitted(&self, image: &RgbImage) -> Result<RgbImage> {
        match self.resize {
            InputResize::Pil => {
                crate::preprocess::resize_rgb(image, self.input_size.0, self.input_size.1)
            }
            InputResize::Geometry(geometry) => {
                let (h, w) = self.input_size;
                let view = voc_data::image_io::rgb_view(image);
                let mode = match geometry.resize_mode(h) {
                    voc_data::ResizeMode::Stretch { .. } => voc_data::ResizeMode::Stretch {
                        height: h,
                        width: w,
                    },
                    square => square,
                };
                let eval = voc_data::AugmentConfig::eval(mode);
                let (out, _) = eval.augment(view, None, 0);
                let (oh, ow) = (out.shape()[0], out.shape()[1]);
                Ok(RgbImage::new(oh, ow, out.iter().copied().collect())?)
            }
        }
    }

    /// The network input `1 x 3 x H x W` for one photo, prepared as the checkpoint was trained.
    pub fn input(&self, image: &RgbImage, device: &Device) -> Result<candle_core::Tensor> {
        match self.resize {
            InputResize::Pil => {
                crate::preprocess::image_input(image, self.input_size, &self.normalization, device)
            }
            InputResize::Geometry(_) => {
                let fitted = self.fitted(image)?;
                let (h, w) = (fitted.height(), fitted.width());
                let chw = voc_data::augment::to_chw(
                    &self.normalization,
                    voc_data::image_io::rgb_view(&fitted),
                );
                Ok(candle_core::Tensor::from_vec(chw, (1, 3, h, w), device)?)
            }
        }
    }

    /// Sigmoid probability of every class for one photo of any size (resized to `input_size`, then
    /// normalised), in `class_names` order.
    pub fn probabilities(&self, image: &RgbImage, device: &Device) -> Result<Vec<f32>> {
        let x = self.input(image, device)?;
        let logits = self.model.logits(&x, false, false)?;
        Ok(candle_nn::ops::sigmoid(&logits.to_dtype(DType::F32)?)?
            .flatten_all()?
            .to_vec1()?)
    }

    /// 0/1 per class: probability at or above the class's threshold (and, with the argmax fallback,
    /// the most probable class when none is).
    pub fn labels(&self, image: &RgbImage, device: &Device) -> Result<Vec<u8>> {
        Ok(self.decision().decide(&self.probabilities(image, device)?))
    }
}
