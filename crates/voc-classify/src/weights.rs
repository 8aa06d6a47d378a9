//! Loading named tensors into a network strictly: every tensor the network asks for must be in the file
//! with its shape, and (unless told otherwise) the file holds nothing else. A file of another
//! architecture fails with the list of missing, unexpected and mis-shaped names.
//!
//! A network is built candle-style, `Model::new(vb, config)`. [`FromWeights`] (the architecture's name
//! and that constructor) gives it every way of loading named tensors; they all go through the generic
//! loaders below. The names and shapes the constructor asks for are first recorded with a dry run,
//! checked with [`voc_tensor::hub::check_names`], and only then is the network built for real, from plain
//! tensors ([`load_frozen`], for inference) or from variables of a [`VarMap`] ([`load_trainable`],
//! [`load_trainable_prefix`], for fine-tuning).
//!
//! The loaders are generic in the network's error type `E` (any error a [`ClassifyError`] converts
//! into), so a network of another crate keeps its own errors, and a name mismatch arrives as
//! [`ClassifyError::WeightsMismatch`].
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{VarBuilder, VarMap};
use voc_tensor::hub::{self, HubCache, WeightsSource};

use crate::error::{ClassifyError, Result};

/// A network built from a [`VarBuilder`] and a config (`Model::new(vb, config)`) whose weights can be
/// loaded by name.
///
/// An implementation names the architecture and the constructor; the provided methods are the ways of
/// loading named tensors, all checked strictly by name and shape:
///
/// ```
/// use std::collections::HashMap;
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// use voc_classify::{ClassifierConfig, FromWeights, ImageClassifier, ModelPreset};
///
/// // Named tensors: here a fresh network's, usually a file's (`weights::read_weights`).
/// let device = Device::Cpu;
/// let config = ModelPreset::MOBILENET_V2.classifier_config();
/// let fresh = VarMap::new();
/// ImageClassifier::new(VarBuilder::from_varmap(&fresh, DType::F32, &device), config)?;
/// let tensors: HashMap<String, Tensor> = fresh.data().lock().unwrap().iter()
///     .map(|(name, var)| (name.clone(), var.as_tensor().detach()))
///     .collect();
///
/// // Inference: the tensors as constants.
/// let model = ImageClassifier::from_tensors(tensors.clone(), "fresh", config, &device)?;
/// assert_eq!(model.config().num_classes, 1001);
/// // Fine-tuning: every tensor a variable of `varmap`.
/// let varmap = VarMap::new();
/// ImageClassifier::trainable_from_tensors(&varmap, tensors.clone(), "fresh", config, &device)?;
/// assert_eq!(varmap.all_vars().len(), tensors.len());
/// // A new 20-label head on the backbone: only `mobilenet_v2.*` comes from the tensors.
/// let voc = ClassifierConfig { num_classes: 20, ..config };
/// let prefix = "mobilenet_v2.";
/// ImageClassifier::trainable_with_prefix(&VarMap::new(), tensors.clone(), prefix, "fresh", voc, &device)?;
/// // Names or shapes that differ are an error listing them.
/// let err = ImageClassifier::from_tensors(tensors, "fresh", voc, &device).unwrap_err();
/// assert!(err.to_string().contains("classifier.bias (expected [20], found [1001])"), "{err}");
/// # Ok::<(), voc_classify::ClassifyError>(())
/// ```
pub trait FromWeights: Sized {
    /// Architecture parameters, as the constructor takes them.
    type Config: Clone;
    /// The network's error type.
    type Error: From<ClassifyError>;

    /// The architecture's name in weight-mismatch reports (e.g. `mobilenet_v2`).
    fn architecture(config: &Self::Config) -> &'static str;

    /// The constructor, `Self::new(vb, config)`; `vb` is the root of the weight names.
    fn build(vb: VarBuilder, config: Self::Config) -> Result<Self, Self::Error>;

    /// The tensors of a weights file renamed (or reshaped) to the names the constructor asks for, for
    /// architectures whose published files use other names; the default keeps them as they are.
    fn adapt_tensors(
        _config: &Self::Config,
        tensors: HashMap<String, Tensor>,
    ) -> Result<HashMap<String, Tensor>, Self::Error> {
        Ok(tensors)
    }

    /// Builds the network from named tensors as constants (no gradient tracking: the lean path for
    /// inference), failing with a name report when they are not exactly this architecture's.
    fn from_tensors(
        tensors: HashMap<String, Tensor>,
        source: &str,
        config: Self::Config,
        device: &Device,
    ) -> Result<Self, Self::Error> {
        let arch = Self::architecture(&config);
        load_frozen(tensors, source, arch, Unexpected::Error, device, |vb| {
            Self::build(vb, config.clone())
        })
    }

    /// Builds the network on trainable variables in `varmap`, every one initialised from `tensors`
    /// (batch-norm running statistics too), so an optimiser can train every weight.
    fn trainable_from_tensors(
        varmap: &VarMap,
        tensors: HashMap<String, Tensor>,
        source: &str,
        config: Self::Config,
        device: &Device,
    ) -> Result<Self, Self::Error> {
        let arch = Self::architecture(&config);
        load_trainable(
            varmap,
            tensors,
            source,
            arch,
            Unexpected::Error,
            device,
            |vb| Self::build(vb, config.clone()),
        )
    }

    /// Builds the network on trainable variables in `varmap` where the tensors named `prefix*` (e.g. a
    /// pretrained backbone's `mobilenet_v2.`) come from `tensors`, names checked, and the rest (a new
    /// head) keep their fresh initialisation; tensors of the file outside the prefix are ignored.
    fn trainable_with_prefix(
        varmap: &VarMap,
        tensors: HashMap<String, Tensor>,
        prefix: &str,
        source: &str,
        config: Self::Config,
        device: &Device,
    ) -> Result<Self, Self::Error> {
        let arch = Self::architecture(&config);
        load_trainable_prefix(varmap, tensors, prefix, source, arch, device, |vb| {
            Self::build(vb, config.clone())
        })
    }

    /// [`FromWeights::from_tensors`] on the weights file of `source` (a hub repo through `cache`, or a
    /// local file). A file that cannot be found (not cached while offline), read, or that does not fit
    /// is an error naming it.
    fn from_source(
        cache: &HubCache,
        source: &WeightsSource,
        config: Self::Config,
        device: &Device,
    ) -> Result<Self, Self::Error> {
        let path = hub::resolve_weights_in(cache, source).map_err(ClassifyError::from)?;
        let tensors = Self::adapt_tensors(&config, read_weights(&path, device)?)?;
        Self::from_tensors(tensors, &path.display().to_string(), config, device)
    }
}

/// What to do with tensors in the file that the network does not use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unexpected {
    /// A file with extra tensors is the wrong file: fail.
    Error,
    /// Extra tensors are expected (e.g. an ImageNet classifier's head when only its backbone is used).
    Ignore,
}

type Requests = Arc<Mutex<Vec<(String, Vec<usize>)>>>;

/// A var-builder backend that hands out zeros and writes down every request.
struct Recorder {
    requests: Requests,
}

impl SimpleBackend for Recorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if let Ok(mut r) = self.requests.lock() {
            r.push((name.to_string(), s.dims().to_vec()));
        }
        Tensor::zeros(s, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("{name}: the network asked for a tensor without giving its shape")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// The `(name, shape)` of every tensor `build` asks its var builder for, in order.
pub fn expected_tensors<M, E>(
    device: &Device,
    build: impl FnOnce(VarBuilder) -> Result<M, E>,
) -> Result<Vec<(String, Vec<usize>)>, E> {
    let requests = Arc::new(Mutex::new(Vec::new()));
    let vb = VarBuilder::from_backend(
        Box::new(Recorder {
            requests: requests.clone(),
        }),
        DType::F32,
        device.clone(),
    );
    build(vb)?;
    let list = requests.lock().map(|r| r.clone()).unwrap_or_default();
    Ok(list)
}

/// Checks `tensors` against what `build` asks for; `source` and `architecture` name them in the error.
pub fn check_tensors<M, E: From<ClassifyError>>(
    tensors: &HashMap<String, Tensor>,
    source: &str,
    architecture: &str,
    unexpected: Unexpected,
    device: &Device,
    build: impl FnOnce(VarBuilder) -> Result<M, E>,
) -> Result<(), E> {
    let expected = expected_tensors(device, build)?;
    Ok(check_expected(
        &expected,
        tensors,
        source,
        architecture,
        unexpected,
    )?)
}

/// Fails with [`ClassifyError::WeightsMismatch`] unless `tensors` hold every `expected` name with its
/// shape (and, with [`Unexpected::Error`], nothing else).
fn check_expected(
    expected: &[(String, Vec<usize>)],
    tensors: &HashMap<String, Tensor>,
    source: &str,
    architecture: &str,
    unexpected: Unexpected,
) -> Result<()> {
    let mut report = hub::check_names(expected, tensors);
    if unexpected == Unexpected::Ignore {
        report.unexpected.clear();
    }
    if report.is_clean() {
        Ok(())
    } else {
        Err(ClassifyError::WeightsMismatch {
            source_name: source.to_string(),
            architecture: architecture.to_string(),
            report: report.to_string(),
        })
    }
}

fn to_f32(tensors: HashMap<String, Tensor>, device: &Device) -> Result<HashMap<String, Tensor>> {
    tensors
        .into_iter()
        .map(|(k, t)| Ok((k, t.to_dtype(DType::F32)?.to_device(device)?)))
        .collect()
}

/// Builds the network from `tensors` as constants (no gradient tracking: the lean path for inference),
/// after checking the names. `build` runs twice (a dry run records what it asks for).
pub fn load_frozen<M, E: From<ClassifyError>>(
    tensors: HashMap<String, Tensor>,
    source: &str,
    architecture: &str,
    unexpected: Unexpected,
    device: &Device,
    build: impl Fn(VarBuilder) -> Result<M, E>,
) -> Result<M, E> {
    check_tensors(&tensors, source, architecture, unexpected, device, &build)?;
    let vb = VarBuilder::from_tensors(to_f32(tensors, device)?, DType::F32, device);
    build(vb)
}

/// Builds the network on variables of `varmap` initialised from `tensors` (names checked first), so an
/// optimiser can train every weight and batch norms can update their running statistics.
pub fn load_trainable<M, E: From<ClassifyError>>(
    varmap: &VarMap,
    tensors: HashMap<String, Tensor>,
    source: &str,
    architecture: &str,
    unexpected: Unexpected,
    device: &Device,
    build: impl Fn(VarBuilder) -> Result<M, E>,
) -> Result<M, E> {
    let expected = expected_tensors(device, &build)?;
    check_expected(&expected, &tensors, source, architecture, unexpected)?;
    insert_vars(varmap, &expected, tensors, device)?;
    build(VarBuilder::from_varmap(varmap, DType::F32, device))
}

/// Builds the network on variables of `varmap` where only the tensors named `prefix*` (e.g.
/// `mobilenet_v2.`) come from `tensors`, and the rest (a new head) keep their fresh initialisation.
/// Under the prefix the names are checked strictly; tensors outside it are ignored.
#[allow(clippy::too_many_arguments)]
pub fn load_trainable_prefix<M, E: From<ClassifyError>>(
    varmap: &VarMap,
    tensors: HashMap<String, Tensor>,
    prefix: &str,
    source: &str,
    architecture: &str,
    device: &Device,
    build: impl Fn(VarBuilder) -> Result<M, E>,
) -> Result<M, E> {
    let expected: Vec<(String, Vec<usize>)> = expected_tensors(device, &build)?
        .into_iter()
        .filter(|(name, _)| name.starts_with(prefix))
        .collect();
    let under: HashMap<String, Tensor> = tensors
        .into_iter()
        .filter(|(name, _)| name.starts_with(prefix))
        .collect();
    let report = hub::check_names(&expected, &under);
    if expected.is_empty() || !report.is_clean() {
        let report = if expected.is_empty() {
            format!("the network has no tensors under '{prefix}'")
        } else {
            report.to_string()
        };
        return Err(ClassifyError::WeightsMismatch {
            source_name: source.to_string(),
            architecture: format!("{architecture} (tensors under '{prefix}')"),
            report,
        }
        .into());
    }
    insert_vars(varmap, &expected, under, device)?;
    build(VarBuilder::from_varmap(varmap, DType::F32, device))
}

/// Puts a variable into `varmap` for every `expected` name that `tensors` holds (as f32 on `device`).
/// The variables exist before the network is built so that layers which copy a value at construction
/// (batch-norm running statistics) see the pretrained one.
fn insert_vars(
    varmap: &VarMap,
    expected: &[(String, Vec<usize>)],
    mut tensors: HashMap<String, Tensor>,
    device: &Device,
) -> Result<()> {
    let mut data = varmap
        .data()
        .lock()
        .map_err(|_| ClassifyError::BadArgument("the VarMap's lock is poisoned".into()))?;
    for (name, _) in expected {
        if let Some(t) = tensors.remove(name) {
            data.insert(
                name.clone(),
                Var::from_tensor(&t.to_dtype(DType::F32)?.to_device(device)?)?,
            );
        }
    }
    Ok(())
}

/// Reads a weights file (safetensors or PyTorch zip) onto `device`.
pub fn read_weights(path: &std::path::Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    Ok(hub::load_tensors(path, device)?)
}
