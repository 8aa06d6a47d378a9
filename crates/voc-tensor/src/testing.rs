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

/// What a seeded tensor of `shared/README.md`'s generator holds: how `v` in `[-1, 1)` is scaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeededKind {
    /// Conv and linear weights: `v · sqrt(3 / fan_in)`, `fan_in = numel / shape[0]`.
    Weight,
    /// Biases, batch-norm shifts and running means: `0.1 v`.
    Shift,
    /// Batch-norm scales and running variances: `0.75 + 0.5 u` (always positive).
    Scale,
}

impl std::str::FromStr for SeededKind {
    type Err = VocError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "weight" => Ok(Self::Weight),
            "shift" => Ok(Self::Shift),
            "scale" => Ok(Self::Scale),
            other => Err(VocError::BadArgument(format!(
                "seeded tensor kind '{other}': expected weight, shift or scale"
            ))),
        }
    }
}

impl SeededKind {
    /// The kind the timm reference files give a tensor, from its name and shape: matrices and kernels
    /// are weights; 1-D `*.weight` (batch-norm scales) and `*.running_var` scales; the rest (biases,
    /// shifts, running means) shifts. Checked against the listings of all three reference files.
    ///
    /// ```
    /// use voc_tensor::testing::SeededKind;
    /// assert_eq!(SeededKind::of("layer1.0.conv1.weight", &[64, 64, 1, 1]), SeededKind::Weight);
    /// assert_eq!(SeededKind::of("layer1.0.bn1.weight", &[64]), SeededKind::Scale);
    /// assert_eq!(SeededKind::of("fc.bias", &[1000]), SeededKind::Shift);
    /// ```
    pub fn of(name: &str, shape: &[usize]) -> Self {
        if shape.len() > 1 {
            Self::Weight
        } else if name.ends_with(".running_var") || name.ends_with(".weight") {
            Self::Scale
        } else {
            Self::Shift
        }
    }
}

/// FNV-1a over `bytes`, 32 bits (offset 2166136261, prime 16777619).
fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(2_166_136_261u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(16_777_619)
    })
}

/// The "lowbias32" integer hash (Chris Wellons' constants).
fn lowbias32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x7feb_352d);
    h ^= h >> 15;
    h = h.wrapping_mul(0x846c_a68b);
    h ^ (h >> 16)
}

/// The tensor `name` of `shape` that `shared/README.md`'s seeded-weight generator defines bit for bit
/// (the weights of the timm reference files): element `i` is `h = lowbias32(fnv1a32(name) + i ·
/// 0x9E3779B9)`, `u = (h >> 8) · 2⁻²⁴`, `v = 2u - 1`, scaled by `kind`, all in f32.
///
/// ```
/// use voc_tensor::testing::{seeded_tensor, SeededKind};
/// let t = seeded_tensor("bn.running_var", &[4], SeededKind::Scale)?;
/// let v: Vec<f32> = t.to_vec1()?;
/// assert!(v.iter().all(|&x| (0.75..1.25).contains(&x)));
/// # Ok::<(), voc_tensor::VocError>(())
/// ```
pub fn seeded_tensor(name: &str, shape: &[usize], kind: SeededKind) -> Result<Tensor> {
    let numel: usize = shape.iter().product();
    let seed = fnv1a32(name.as_bytes());
    let fan_in = match shape.first() {
        Some(&rows) if rows > 0 => numel / rows,
        _ => 1,
    };
    let weight_scale = (3f32 / fan_in as f32).sqrt();
    let data: Vec<f32> = (0..numel)
        .map(|i| {
            let h = lowbias32(seed.wrapping_add((i as u32).wrapping_mul(0x9E37_79B9)));
            let u = (h >> 8) as f32 * (1.0 / (1u32 << 24) as f32);
            let v = 2.0 * u - 1.0;
            match kind {
                SeededKind::Weight => v * weight_scale,
                SeededKind::Shift => 0.1 * v,
                SeededKind::Scale => 0.75 + 0.5 * u,
            }
        })
        .collect();
    Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
}

/// Every tensor of a seeded-weight listing, one `NAME [d0, d1, ...] kind` per line (the `weights`
/// metadata of the timm reference files), built with [`seeded_tensor`]. A malformed line is an error
/// quoting it.
pub fn seeded_weights(listing: &str) -> Result<HashMap<String, Tensor>> {
    listing
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let bad = || {
                VocError::BadArgument(format!(
                    "seeded weight line '{line}': expected `NAME [d0, d1, ...] weight|shift|scale`"
                ))
            };
            let (name, rest) = line.trim().split_once(' ').ok_or_else(bad)?;
            let (dims, kind) = rest
                .trim()
                .strip_prefix('[')
                .and_then(|r| r.split_once(']'))
                .ok_or_else(bad)?;
            let shape = dims
                .split(',')
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .map(|d| d.parse::<usize>().map_err(|_| bad()))
                .collect::<Result<Vec<usize>>>()?;
            let tensor = seeded_tensor(name, &shape, kind.trim().parse()?)?;
            Ok((name.to_string(), tensor))
        })
        .collect()
}

/// The string metadata of a safetensors file (its `__metadata__`), e.g. the `weights` listing of a
/// seeded reference file.
pub fn golden_metadata(path: &Path) -> Result<HashMap<String, String>> {
    let bytes = std::fs::read(path)
        .map_err(|e| VocError::Msg(format!("{}: cannot read golden file: {e}", path.display())))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| VocError::Msg(format!("{}: not a safetensors file: {e}", path.display())))?;
    Ok(meta.metadata().clone().unwrap_or_default())
}
