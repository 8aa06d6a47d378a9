//! Helpers for tests, examples and benches across the workspace: comparing tensors against golden values,
//! and finding hub files in the shared offline cache. Finding the shared folder itself (and skipping, or
//! failing under `VOC_REQUIRE_SHARED=1`, when a file is missing) is `voc_core::testing`, which needs no
//! tensor library.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::error::{Result, VocError};

/// The path of `filename` of hub repo `repo_id` (e.g. `google/mobilenet_v2_1.0_224`) in the shared
/// offline hub cache `shared/hf/hub`, resolved as [`crate::hub::HubCache`] does for the models.
pub fn shared_hub_file(shared: &Path, repo_id: &str, filename: &str) -> Result<PathBuf> {
    crate::hub::HubCache::new(shared.join("hf/hub"), true).resolve_file(repo_id, None, filename)
}

/// Loads every tensor of a safetensors file onto the CPU.
pub fn load_golden(path: &Path) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| VocError::Msg(format!("{}: cannot read golden file: {e}", path.display())))
}

/// Largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    if a.dims() != b.dims() {
        return Err(VocError::BadArgument(format!(
            "shapes differ: {:?} vs {:?}",
            a.dims(),
            b.dims()
        )));
    }
    let d = (a.to_dtype(candle_core::DType::F32)? - b.to_dtype(candle_core::DType::F32)?)?;
    Ok(d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

/// Relative error `max|a-b| / max(max|b|, tiny)`: the measure the golden tests bound.
pub fn rel_err(actual: &Tensor, expected: &Tensor) -> Result<f32> {
    let scale = expected
        .to_dtype(candle_core::DType::F32)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?;
    Ok(max_abs_diff(actual, expected)? / scale.max(1e-12))
}
