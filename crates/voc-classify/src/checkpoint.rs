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

use crate::classifier::{ClassifierArch, ClassifierConfig, ImageClassifier};
use crate::error::{ClassifyError, Result};
use voc_core::{Normalization, RgbImage};

use crate::preset::ModelPreset;
use crate::weights::FromWeights;

/// Suffix of the `architecture` of a classifier checkpoint: `{backbone}_classifier`.
pub const CLASSIFIER_SUFFIX: &str = "_classifier";

/// Threshold used when a checkpoint records none.
pub const DEFAULT_THRESHOLD: f32 = 0.5;

/// The `architecture` string a checkpoint of a classifier on `arch` carries.
pub fn checkpoint_architecture(arch: &ClassifierArch) -> String {
    format!("{}{CLASSIFIER_SUFFIX}", arch.name())
}

/// The classifier architecture a checkpoint's `architecture` string names (the pretrained presets'
/// backbones); any other string is a [`ClassifyError::BadConfig`] on `path` listing the known ones.
pub fn arch_from_checkpoint(path: &Path, architecture: &str) -> Result<ClassifierArch> {
    let known: Vec<String> = ModelPreset::ALL
        .iter()
        .map(|p| checkpoint_architecture(&p.arch))
        .collect();
    ModelPreset::ALL
        .iter()
        .find(|p| checkpoint_architecture(&p.arch) == architecture)
        .map(|p| p.arch)
        .ok_or_else(|| ClassifyError::BadConfig {
            path: path.to_path_buf(),
            message: format!(
                "a checkpoint of architecture '{architecture}', not a classifier: expected one of {}",
                known.join(", ")
            ),
        })
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
    pub model: ImageClassifier,
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
        let arch = arch_from_checkpoint(path, &meta.architecture)?;
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
        let preset_size = ModelPreset::ALL
            .iter()
            .find(|p| p.arch == arch)
            .map_or(224, |p| p.input_size);
        let input_size = meta.input_size.unwrap_or((preset_size, preset_size));
        if input_size.0 == 0 || input_size.1 == 0 {
            return Err(bad(format!("input size {input_size:?} is empty")));
        }
        let config = ClassifierConfig {
            arch,
            num_classes,
            dropout: 0.0,
            head: crate::HeadKind::Linear,
        };
        let model =
            ImageClassifier::from_tensors(tensors, &path.display().to_string(), config, device)?;
        Ok(Self {
            model,
            normalization: meta.normalization,
            class_names: meta.class_names.clone(),
            path: path.to_path_buf(),
            thresholds,
            thresholds_from_checkpoint,
            input_size,
            meta,
        })
    }

    /// Sigmoid probability of every class for one photo of any size (resized to `input_size`, then
    /// normalised), in `class_names` order.
    pub fn probabilities(&self, image: &RgbImage, device: &Device) -> Result<Vec<f32>> {
        let x =
            crate::preprocess::image_input(image, self.input_size, &self.normalization, device)?;
        let logits = self.model.forward_t(&x, false)?;
        Ok(candle_nn::ops::sigmoid(&logits.to_dtype(DType::F32)?)?
            .flatten_all()?
            .to_vec1()?)
    }

    /// 0/1 per class: probability at or above the class's threshold.
    pub fn labels(&self, image: &RgbImage, device: &Device) -> Result<Vec<u8>> {
        Ok(self
            .probabilities(image, device)?
            .iter()
            .zip(&self.thresholds)
            .map(|(p, t)| u8::from(p >= t))
            .collect())
    }
}
