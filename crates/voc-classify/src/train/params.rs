//! Networks whose weights are part constants, part trainable variables: the frozen part of a fine-tuned
//! backbone is plain tensors (no gradient is ever computed for it, and eval-mode layers fold their batch
//! norms once), the rest are variables of a `VarMap` an optimiser updates.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{ClassifyError, Result};

/// Decides whether a weight name becomes a variable.
pub type IsVariable = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// A var-builder backend: names for which `is_variable` holds become variables of `varmap` (initialised
/// from `values`, else from the layer's init hint with a generator seeded by `seed` and the name); the
/// others are the constants of `values`.
struct MixedBackend {
    values: Arc<HashMap<String, Tensor>>,
    is_variable: IsVariable,
    varmap: VarMap,
    seed: u64,
    /// The constants the network took, by name.
    used_constants: Arc<Mutex<HashMap<String, Tensor>>>,
}

/// FNV-1a, 64 bits: each fresh variable's generator is seeded by the run's seed and the hash of its
/// name, so its initial value does not depend on the order layers are built in; the feature cache is
/// keyed by the hash of the image Ids.
pub(crate) fn fnv1a(name: &str) -> u64 {
    name.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

/// `shape` filled as candle's `init` would, from a seeded generator (candle's CPU generator cannot be
/// seeded).
fn seeded_init(
    init: Init,
    shape: &Shape,
    seed: u64,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let n = shape.elem_count();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut normal = |mean: f64, std: f64| -> Vec<f32> {
        (0..n)
            .map(|_| {
                // Box-Muller: two uniforms in (0, 1] give one standard normal.
                let u1: f64 = 1.0 - rng.gen::<f64>();
                let u2: f64 = rng.gen::<f64>();
                (mean + std * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
            })
            .collect()
    };
    let data: Vec<f32> = match init {
        Init::Const(v) => vec![v as f32; n],
        Init::Randn { mean, stdev } => normal(mean, stdev),
        Init::Uniform { lo, up } => {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..n).map(|_| rng.gen_range(lo..up) as f32).collect()
        }
        Init::Kaiming { .. } => {
            // Fall back to candle for the rarely used Kaiming hints (not used by voc's layers).
            return Ok(init
                .var(shape.clone(), DType::F32, device)?
                .as_tensor()
                .clone());
        }
    };
    Tensor::from_vec(data, shape.clone(), device)
}

impl SimpleBackend for MixedBackend {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        init: Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let value = match self.values.get(name) {
            Some(t) if t.dims() != shape.dims() => candle_core::bail!(
                "weight {name} has shape {:?}, the network expects {:?}",
                t.dims(),
                shape.dims()
            ),
            Some(t) => Some(t.to_dtype(dtype)?.to_device(device)?),
            None => None,
        };
        if !(self.is_variable)(name) {
            let value = value.ok_or_else(|| {
                candle_core::Error::Msg(format!("no weight {name} for a frozen layer"))
            })?;
            if let Ok(mut used) = self.used_constants.lock() {
                used.insert(name.to_string(), value.clone());
            }
            return Ok(value);
        }
        let mut vars = self
            .varmap
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("the VarMap lock is poisoned".into()))?;
        if let Some(var) = vars.get(name) {
            return Ok(var.as_tensor().clone());
        }
        let value = match value {
            Some(v) => v,
            None => seeded_init(init, &shape, self.seed ^ fnv1a(name), device)?.to_dtype(dtype)?,
        };
        let var = Var::from_tensor(&value)?;
        let tensor = var.as_tensor().clone();
        vars.insert(name.to_string(), var);
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("{name}: the network asked for a tensor without giving its shape")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.values.contains_key(name) || (self.is_variable)(name)
    }
}

/// A network built over a mix of constants and variables, with everything needed to save it whole.
pub struct MixedParams {
    /// The trainable variables (and, with batch norm in training mode, the running statistics).
    pub varmap: VarMap,
    /// The constant weights (the frozen part), by name.
    pub constants: HashMap<String, Tensor>,
}

impl MixedParams {
    /// Every weight of the network by name: the constants and the variables' current values.
    pub fn all_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = self.constants.clone();
        let vars = self
            .varmap
            .data()
            .lock()
            .map_err(|_| ClassifyError::BadArgument("the VarMap lock is poisoned".into()))?;
        for (name, var) in vars.iter() {
            out.insert(name.clone(), var.as_tensor().detach());
        }
        Ok(out)
    }

    /// The variable called `name`, if it is one.
    pub fn var(&self, name: &str) -> Option<Var> {
        self.varmap.data().lock().ok()?.get(name).cloned()
    }
}

/// Builds a network with `build` where the weights named by `is_variable` are fresh variables
/// (initialised from `values` when there, else seeded from `seed`) and the others are `values`' constants.
/// Every constant the network asks for must be in `values` with its shape (an error names it).
pub fn build_mixed<M>(
    values: HashMap<String, Tensor>,
    is_variable: IsVariable,
    seed: u64,
    device: &Device,
    build: impl FnOnce(VarBuilder) -> Result<M>,
) -> Result<(M, MixedParams)> {
    let varmap = VarMap::new();
    let used_constants = Arc::new(Mutex::new(HashMap::new()));
    let backend = MixedBackend {
        values: Arc::new(values),
        is_variable,
        varmap: varmap.clone(),
        seed,
        used_constants: used_constants.clone(),
    };
    let model = build(VarBuilder::from_backend(
        Box::new(backend),
        DType::F32,
        device.clone(),
    ))?;
    let constants = used_constants
        .lock()
        .map(|c| c.clone())
        .map_err(|_| ClassifyError::BadArgument("constant list lock poisoned".into()))?;
    Ok((model, MixedParams { varmap, constants }))
}
