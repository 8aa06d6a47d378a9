//! One-file checkpoints: every variable of a model (trainable weights and state such as batch-norm
//! running statistics) plus the JSON metadata needed to use it, in a single safetensors file.
//!
//! The metadata travels in the safetensors header (`__metadata__`): `format = "voc-checkpoint"`,
//! `format_version`, and `voc_meta`, the JSON of [`CheckpointMeta`]. Any safetensors reader can still
//! read the tensors; [`load_checkpoint`] needs nothing but the file.
//!
//! ```no_run
//! use voc_tensor::checkpoint::{self, CheckpointMeta, Normalization};
//! # fn main() -> voc_tensor::Result<()> {
//! let varmap = candle_nn::VarMap::new();
//! // ... build and train a model on `varmap` ...
//! let mut meta = CheckpointMeta::new("mobilenet_v2_classifier", vec!["aeroplane".into(), "bicycle".into()]);
//! meta.input_size = Some((224, 224));
//! meta.normalization = Normalization::MINUS_ONE_TO_ONE;
//! checkpoint::save_checkpoint("model.safetensors".as_ref(), &varmap, &meta)?;
//! let (tensors, meta) = checkpoint::load_checkpoint("model.safetensors".as_ref(), &voc_tensor::Device::Cpu)?;
//! checkpoint::restore_varmap(&varmap, &tensors)?;
//! # Ok(()) }
//! ```
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Result, VocError};
use crate::hub::{check_names, NameReport};

/// Value of the `format` header entry that marks a voc checkpoint.
pub const FORMAT: &str = "voc-checkpoint";
/// Version of the layout written by [`save_checkpoint`]; bumped on incompatible changes.
pub const FORMAT_VERSION: u32 = 1;
const META_KEY: &str = "voc_meta";

/// The input normalisation recorded in a checkpoint (defined in voc-core).
pub use voc_core::Normalization;

/// What a checkpoint needs to be used without other flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// The model family and variant, e.g. `mobilenet_v2_classifier`, `deeplabv3plus_mobilenet_v2`.
    pub architecture: String,
    /// Output index `i` is `class_names[i]`.
    pub class_names: Vec<String>,
    /// `(height, width)` the model was trained at, when it has a fixed one.
    pub input_size: Option<(usize, usize)>,
    /// How pixels become inputs (see [`crate::preprocess::normalize`]).
    pub normalization: Normalization,
    /// Per-class decision thresholds of a multi-label classifier.
    pub thresholds: Option<Vec<f32>>,
    /// The training configuration (optimiser, schedule, epochs, data, ...), as the trainer records it.
    pub training: serde_json::Value,
    /// The random seed of the run that produced the weights.
    pub seed: Option<u64>,
    /// Version of voc-tensor that wrote the file.
    pub crate_version: String,
    /// Anything else a model needs (output stride, backbone repo, metrics, ...).
    #[serde(default)]
    pub extra: serde_json::Value,
}

impl CheckpointMeta {
    /// Metadata with `[-1, 1]` normalisation, no thresholds, empty training config and this crate's
    /// version; set the other fields directly.
    pub fn new(architecture: impl Into<String>, class_names: Vec<String>) -> Self {
        Self {
            architecture: architecture.into(),
            class_names,
            input_size: None,
            normalization: Normalization::MINUS_ONE_TO_ONE,
            thresholds: None,
            training: serde_json::Value::Object(Default::default()),
            seed: None,
            crate_version: env!("CARGO_PKG_VERSION").to_string(),
            extra: serde_json::Value::Object(Default::default()),
        }
    }
}

/// Saves every variable of `varmap` (trainable weights and state like batch-norm running statistics)
/// with `meta` to `path`, atomically.
pub fn save_checkpoint(
    path: &Path,
    varmap: &candle_nn::VarMap,
    meta: &CheckpointMeta,
) -> Result<()> {
    let tensors: HashMap<String, Tensor> = {
        let vars = varmap
            .data()
            .lock()
            .map_err(|_| VocError::Msg("the VarMap lock is poisoned".into()))?;
        vars.iter()
            .map(|(name, var)| (name.clone(), var.as_tensor().clone()))
            .collect()
    };
    save_checkpoint_tensors(path, &tensors, meta)
}

/// [`save_checkpoint`] for tensors held outside a `VarMap`.
pub fn save_checkpoint_tensors(
    path: &Path,
    tensors: &HashMap<String, Tensor>,
    meta: &CheckpointMeta,
) -> Result<()> {
    if tensors.is_empty() {
        return Err(VocError::bad_file(
            path,
            "refusing to write a checkpoint with no tensors",
        ));
    }
    let meta_json = serde_json::to_string(meta)
        .map_err(|e| VocError::Msg(format!("cannot serialise checkpoint metadata: {e}")))?;
    let header = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("format_version".to_string(), FORMAT_VERSION.to_string()),
        (META_KEY.to_string(), meta_json),
    ]);
    // The safetensors view of a candle tensor panics on a failed device copy; do the copies here first.
    let mut cpu = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        cpu.push((name.as_str(), t.to_device(&Device::Cpu)?.contiguous()?));
    }
    cpu.sort_by(|a, b| a.0.cmp(b.0));
    let bytes = safetensors::serialize(cpu, Some(header)).map_err(|e| {
        VocError::Msg(format!(
            "{}: cannot serialise checkpoint: {e}",
            path.display()
        ))
    })?;
    Ok(voc_core::write_atomic(path, |f| f.write_all(&bytes))?)
}

/// Reads a checkpoint written by [`save_checkpoint`]: its tensors by name (on `device`) and its
/// metadata. A truncated file, a file that is not safetensors, or a safetensors file without voc
/// metadata (a plain weights file) is an error naming the file.
pub fn load_checkpoint(
    path: &Path,
    device: &Device,
) -> Result<(HashMap<String, Tensor>, CheckpointMeta)> {
    let bytes = std::fs::read(path).map_err(|e| VocError::io(path, e))?;
    let meta = parse_meta(path, &bytes)?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|e| VocError::bad_file(path, format!("corrupt checkpoint tensors: {e}")))?;
    Ok((tensors, meta))
}

/// Only the metadata of a checkpoint (the tensors are validated but not loaded).
pub fn read_checkpoint_meta(path: &Path) -> Result<CheckpointMeta> {
    let bytes = std::fs::read(path).map_err(|e| VocError::io(path, e))?;
    parse_meta(path, &bytes)
}

fn parse_meta(path: &Path, bytes: &[u8]) -> Result<CheckpointMeta> {
    use safetensors::SafeTensorError as E;
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| {
        let what = match e {
            E::HeaderTooSmall | E::InvalidHeaderLength | E::MetadataIncompleteBuffer | E::InvalidOffset(_) => {
                "truncated or corrupt: the file is shorter or longer than its safetensors header says"
            }
            _ => "not a voc checkpoint: not a safetensors file",
        };
        VocError::bad_file(path, format!("{what} ({e}, {} bytes)", bytes.len()))
    })?;
    let entries = header.metadata().as_ref();
    let get = |key: &str| entries.and_then(|m| m.get(key));
    if get("format").map(String::as_str) != Some(FORMAT) {
        return Err(VocError::bad_file(
            path,
            "a safetensors file without voc checkpoint metadata (header __metadata__.format is not \
             \"voc-checkpoint\"): plain weights, not a checkpoint; use it as --weights instead",
        ));
    }
    let version = get("format_version").and_then(|v| v.parse::<u32>().ok());
    if version != Some(FORMAT_VERSION) {
        return Err(VocError::bad_file(
            path,
            format!(
                "checkpoint format_version {version:?}, this build reads version {FORMAT_VERSION}"
            ),
        ));
    }
    let json = get(META_KEY).ok_or_else(|| {
        VocError::bad_file(path, format!("checkpoint header has no `{META_KEY}` entry"))
    })?;
    serde_json::from_str(json)
        .map_err(|e| VocError::bad_file(path, format!("checkpoint `{META_KEY}` is not valid: {e}")))
}

/// Sets every variable of `varmap` from `tensors` (converting dtype and device as needed). Fails, changing
/// nothing, when a variable is missing or has another shape; tensors without a variable are reported as
/// `unexpected` and ignored.
pub fn restore_varmap(
    varmap: &candle_nn::VarMap,
    tensors: &HashMap<String, Tensor>,
) -> Result<NameReport> {
    let vars = varmap
        .data()
        .lock()
        .map_err(|_| VocError::Msg("the VarMap lock is poisoned".into()))?;
    let expected: Vec<(String, Vec<usize>)> = vars
        .iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect();
    let report = check_names(&expected, tensors);
    if !report.is_loadable() {
        return Err(VocError::Msg(format!(
            "checkpoint does not fit the model: {report}"
        )));
    }
    let mut values = Vec::with_capacity(vars.len());
    for (name, var) in vars.iter() {
        values.push((
            var,
            tensors[name]
                .to_device(var.device())?
                .to_dtype(var.dtype())?,
        ));
    }
    for (var, value) in values {
        var.set(&value)?;
    }
    Ok(report)
}
