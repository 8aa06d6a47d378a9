//! Loading named tensors into a network strictly: every tensor the network asks for must be in the file
//! with its shape, and (unless told otherwise) the file holds nothing else. A file of another
//! architecture fails with the list of missing, unexpected and mis-shaped names.
//!
//! The networks are built by a closure over a [`VarBuilder`]; the names and shapes it asks for are first
//! recorded with a dry run, checked with [`voc_tensor::hub::check_names`], and only then is the network
//! built for real, from plain tensors ([`load_frozen`], for inference) or from variables of a [`VarMap`]
//! ([`load_trainable`], for fine-tuning).
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{VarBuilder, VarMap};

use crate::error::{ClassifyError, Result};

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
pub fn expected_tensors<M>(
    device: &Device,
    build: impl FnOnce(VarBuilder) -> Result<M>,
) -> Result<Vec<(String, Vec<usize>)>> {
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
pub fn check_tensors<M>(
    tensors: &HashMap<String, Tensor>,
    source: &str,
    architecture: &str,
    unexpected: Unexpected,
    device: &Device,
    build: impl FnOnce(VarBuilder) -> Result<M>,
) -> Result<()> {
    let expected = expected_tensors(device, build)?;
    let mut report = voc_tensor::hub::check_names(&expected, tensors);
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
pub fn load_frozen<M>(
    tensors: HashMap<String, Tensor>,
    source: &str,
    architecture: &str,
    unexpected: Unexpected,
    device: &Device,
    build: impl Fn(VarBuilder) -> Result<M>,
) -> Result<M> {
    check_tensors(&tensors, source, architecture, unexpected, device, &build)?;
    let vb = VarBuilder::from_tensors(to_f32(tensors, device)?, DType::F32, device);
    build(vb)
}

/// Builds the network on variables of `varmap` initialised from `tensors` (names checked first), so an
/// optimiser can train every weight and batch norms can update their running statistics.
pub fn load_trainable<M>(
    varmap: &VarMap,
    tensors: HashMap<String, Tensor>,
    source: &str,
    architecture: &str,
    unexpected: Unexpected,
    device: &Device,
    build: impl Fn(VarBuilder) -> Result<M>,
) -> Result<M> {
    let expected = expected_tensors(device, &build)?;
    check_tensors(&tensors, source, architecture, unexpected, device, &build)?;
    insert_vars(varmap, &expected, tensors, device)?;
    build(VarBuilder::from_varmap(varmap, DType::F32, device))
}

/// Builds the network on variables of `varmap` where only the tensors named `prefix*` (e.g.
/// `mobilenet_v2.`) come from `tensors`, and the rest (a new head) keep their fresh initialisation.
/// Under the prefix the names are checked strictly; tensors outside it are ignored.
#[allow(clippy::too_many_arguments)]
pub fn load_trainable_prefix<M>(
    varmap: &VarMap,
    tensors: HashMap<String, Tensor>,
    prefix: &str,
    source: &str,
    architecture: &str,
    device: &Device,
    build: impl Fn(VarBuilder) -> Result<M>,
) -> Result<M> {
    let expected: Vec<(String, Vec<usize>)> = expected_tensors(device, &build)?
        .into_iter()
        .filter(|(name, _)| name.starts_with(prefix))
        .collect();
    let under: HashMap<String, Tensor> = tensors
        .into_iter()
        .filter(|(name, _)| name.starts_with(prefix))
        .collect();
    let report = voc_tensor::hub::check_names(&expected, &under);
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
        });
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
    Ok(voc_tensor::hub::load_tensors(path, device)?)
}
