//! Optimisers, parameter groups, learning-rate schedules and early stopping, with PyTorch semantics.
//!
//! - [`Sgd`]: momentum, dampening, Nesterov, weight decay added to the gradient (`torch.optim.SGD`).
//! - [`AdamW`]: decoupled weight decay (`torch.optim.AdamW`), or L2 added to the gradient
//!   (`torch.optim.Adam`) with [`AdamWConfig::decoupled_weight_decay`] off.
//! - [`param_groups`]: splits a `VarMap` into a decayed and a non-decayed group (biases and norms get
//!   no decay), leaves out batch-norm running statistics (state, not parameters) and frozen variables.
//! - [`LrSchedule`]: constant, step, cosine, polynomial, with an optional linear warm-up, evaluated per
//!   step; [`ReduceLrOnPlateau`] and [`EarlyStopping`] watch a metric per epoch.
//!
//! ```
//! use candle_nn::{Init, VarMap};
//! use voc_tensor::optim::{self, AdamW, AdamWConfig, LrSchedule, Optimizer};
//! use voc_tensor::{DType, Device};
//! # fn main() -> voc_tensor::Result<()> {
//! let varmap = VarMap::new();
//! let w = varmap.get((2,), "head.weight", Init::Const(0.0), DType::F32, &Device::Cpu)?;
//! let frozen = |name: &str| name.starts_with("backbone.");
//! let groups = optim::param_groups(&varmap, 0.01, &frozen);
//! let mut opt = AdamW::new(groups, AdamWConfig { lr: 0.1, ..Default::default() })?;
//! let schedule = LrSchedule::Cosine { total: 200, min_lr: 1e-3 }.with_warmup(10);
//! for step in 0..210 {
//!     opt.set_learning_rate(schedule.lr_at(0.1, step));
//!     let loss = w.affine(1.0, -3.0)?.sqr()?.sum_all()?; // smallest at w = 3
//!     opt.step(&loss.backward()?)?;
//! }
//! assert!(w.to_vec1::<f32>()?.iter().all(|v| (v - 3.0).abs() < 0.1));
//! # Ok(()) }
//! ```
use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::{Result, VocError};

/// Updates variables from their gradients.
pub trait Optimizer {
    /// One update of every variable that has a gradient in `grads`; variables without one are left
    /// untouched, their optimiser state included (as PyTorch does for `grad is None`).
    fn step(&mut self, grads: &GradStore) -> Result<()>;
    /// The base learning rate (each group uses `base * lr_scale`).
    fn learning_rate(&self) -> f64;
    /// Sets the base learning rate (what schedules call each step).
    fn set_learning_rate(&mut self, lr: f64);

    /// `loss.backward()` then [`Optimizer::step`].
    fn backward_step(&mut self, loss: &Tensor) -> Result<()> {
        let grads = loss.backward()?;
        self.step(&grads)
    }

    /// The optimiser's per-variable state (momentum buffers, moment estimates, step counts) as named
    /// tensors `VARIABLE.SLOT`, to be saved with a checkpoint so a resumed run continues exactly.
    fn state_tensors(&self) -> Result<HashMap<String, Tensor>>;

    /// Restores what [`Optimizer::state_tensors`] returned (variables matched by name). A slot for an
    /// unknown variable or of the wrong shape is an error and changes nothing.
    fn load_state_tensors(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()>;
}

/// Named optimiser state: `(variable name, slot) -> tensor` for every variable that has state.
fn collect_state<T>(
    groups: &[ParamGroup],
    states: &[Vec<Option<T>>],
    slots: impl Fn(&T) -> Result<Vec<(&'static str, Tensor)>>,
) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    for (group, states) in groups.iter().zip(states) {
        for ((name, _), state) in group.vars.iter().zip(states) {
            if let Some(state) = state {
                for (slot, t) in slots(state)? {
                    out.insert(format!("{name}.{slot}"), t);
                }
            }
        }
    }
    Ok(out)
}

/// Rebuilds every variable's state from `tensors` with `make(name, var, get_slot)`; all-or-nothing.
fn restore_state<T>(
    groups: &[ParamGroup],
    states: &mut [Vec<Option<T>>],
    tensors: &HashMap<String, Tensor>,
    make: impl Fn(&Var, &dyn Fn(&str) -> Option<Tensor>) -> Result<Option<T>>,
) -> Result<()> {
    let mut known = std::collections::HashSet::new();
    let mut fresh: Vec<Vec<Option<T>>> = Vec::with_capacity(groups.len());
    for group in groups {
        let mut row = Vec::with_capacity(group.vars.len());
        for (name, var) in &group.vars {
            let get =
                |slot: &str| -> Option<Tensor> { tensors.get(&format!("{name}.{slot}")).cloned() };
            for key in tensors.keys() {
                if key
                    .strip_prefix(name.as_str())
                    .is_some_and(|rest| rest.starts_with('.') && !rest[1..].contains('.'))
                {
                    known.insert(key.clone());
                }
            }
            row.push(make(var, &get)?);
        }
        fresh.push(row);
    }
    if let Some(unknown) = tensors.keys().find(|k| !known.contains(*k)) {
        return Err(VocError::BadArgument(format!(
            "optimiser state '{unknown}' belongs to no variable of this optimiser"
        )));
    }
    for (dst, src) in states.iter_mut().zip(fresh) {
        *dst = src;
    }
    Ok(())
}

/// `t` on `var`'s device and dtype, or an error naming the slot when the shape differs.
fn state_like(var: &Var, t: Tensor, what: &str) -> Result<Tensor> {
    if t.dims() != var.dims() {
        return Err(VocError::BadArgument(format!(
            "optimiser state {what} has shape {:?}, its variable {:?}",
            t.dims(),
            var.dims()
        )));
    }
    Ok(t.to_device(var.device())?.to_dtype(var.dtype())?)
}

/// Variables that share a weight decay and a learning-rate multiplier.
#[derive(Debug, Clone)]
pub struct ParamGroup {
    /// `(name, variable)`; the names are for reports and tests.
    pub vars: Vec<(String, Var)>,
    /// L2 / decoupled weight decay of every variable in the group.
    pub weight_decay: f64,
    /// The group's learning rate is the optimiser's times this (e.g. 0.1 for a pretrained backbone).
    pub lr_scale: f64,
}

impl ParamGroup {
    /// A group with `lr_scale` 1.
    pub fn new(vars: Vec<(String, Var)>, weight_decay: f64) -> Self {
        Self {
            vars,
            weight_decay,
            lr_scale: 1.0,
        }
    }

    /// This group with its learning rate multiplied by `lr_scale`.
    pub fn with_lr_scale(mut self, lr_scale: f64) -> Self {
        self.lr_scale = lr_scale;
        self
    }

    /// The variables' names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.vars.iter().map(|(n, _)| n.as_str()).collect()
    }
}

/// Batch-norm running statistics and counters: updated by the forward pass, never by an optimiser.
pub fn is_state_var(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    matches!(last, "running_mean" | "running_var" | "num_batches_tracked")
}

/// Whether weight decay should skip a parameter: biases, normalisation parameters and any tensor of
/// rank 0 or 1 (scales and offsets, whose decay only hurts).
pub fn skips_weight_decay(name: &str, dims: &[usize]) -> bool {
    if dims.len() <= 1 {
        return true;
    }
    let segments: Vec<&str> = name.split('.').collect();
    let last = segments.last().copied().unwrap_or(name);
    last == "bias"
        || last.ends_with("_bias")
        || segments.iter().any(|s| {
            let s = s.to_ascii_lowercase();
            s.contains("norm")
                || s == "running"
                || (s.starts_with("bn") && s[2..].chars().all(|c| c.is_ascii_digit()))
                || (s.starts_with("ln") && s[2..].chars().all(|c| c.is_ascii_digit()))
        })
}

/// The trainable variables of `varmap` in two groups, each sorted by name: first those that get
/// `weight_decay`, then those that get none ([`skips_weight_decay`]). State variables
/// ([`is_state_var`]) and those for which `frozen(name)` is true are in neither. Both groups are
/// always returned, possibly empty.
pub fn param_groups(
    varmap: &candle_nn::VarMap,
    weight_decay: f64,
    frozen: &dyn Fn(&str) -> bool,
) -> Vec<ParamGroup> {
    let mut vars: Vec<(String, Var)> = match varmap.data().lock() {
        Ok(map) => map.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        Err(poisoned) => poisoned
            .into_inner()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    };
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let (mut decayed, mut plain) = (Vec::new(), Vec::new());
    for (name, var) in vars {
        if is_state_var(&name) || frozen(&name) {
            continue;
        }
        if skips_weight_decay(&name, var.dims()) {
            plain.push((name, var));
        } else {
            decayed.push((name, var));
        }
    }
    vec![
        ParamGroup::new(decayed, weight_decay),
        ParamGroup::new(plain, 0.0),
    ]
}

fn finite_non_negative(x: f64) -> bool {
    x.is_finite() && x >= 0.0
}

fn check_groups(groups: &[ParamGroup], lr: f64) -> Result<()> {
    if !finite_non_negative(lr) {
        return Err(VocError::BadArgument(format!(
            "learning rate must be finite and >= 0, got {lr}"
        )));
    }
    for g in groups {
        if !finite_non_negative(g.weight_decay) || !finite_non_negative(g.lr_scale) {
            return Err(VocError::BadArgument(format!(
                "parameter group {:?}: weight_decay and lr_scale must be finite and >= 0, got {} and {}",
                g.names().into_iter().take(3).collect::<Vec<_>>(),
                g.weight_decay,
                g.lr_scale
            )));
        }
    }
    Ok(())
}

/// Calls `update(lr, weight_decay, var, param, grad, state)` for every variable of `groups` that has
/// a gradient in `grads`, with the group's learning rate (`base_lr·lr_scale`), the variable's value
/// and gradient detached from the graph, and its slot of optimiser state.
fn for_each_gradient<T>(
    groups: &[ParamGroup],
    states: &mut [Vec<Option<T>>],
    grads: &GradStore,
    base_lr: f64,
    mut update: impl FnMut(f64, f64, &Var, Tensor, Tensor, &mut Option<T>) -> Result<()>,
) -> Result<()> {
    for (group, states) in groups.iter().zip(states.iter_mut()) {
        let lr = base_lr * group.lr_scale;
        for ((_, var), state) in group.vars.iter().zip(states.iter_mut()) {
            let Some(grad) = grads.get(var.as_tensor()) else {
                continue;
            };
            let param = var.as_tensor().detach();
            update(lr, group.weight_decay, var, param, grad.detach(), state)?;
        }
    }
    Ok(())
}

/// No optimiser state yet for any variable of `groups` (state is made on a variable's first step).
fn empty_state<T>(groups: &[ParamGroup]) -> Vec<Vec<Option<T>>> {
    groups
        .iter()
        .map(|g| g.vars.iter().map(|_| None).collect())
        .collect()
}

/// [`Sgd`] hyper-parameters (weight decay is per [`ParamGroup`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SgdConfig {
    /// Base learning rate (default 0.01).
    pub lr: f64,
    /// Momentum factor; 0 (the default) is plain SGD.
    pub momentum: f64,
    /// Dampening of the momentum buffer's gradient term (default 0).
    pub dampening: f64,
    /// Nesterov momentum; needs `momentum > 0` and `dampening == 0`.
    pub nesterov: bool,
}

impl Default for SgdConfig {
    fn default() -> Self {
        Self {
            lr: 0.01,
            momentum: 0.0,
            dampening: 0.0,
            nesterov: false,
        }
    }
}

/// Stochastic gradient descent as `torch.optim.SGD`: `g = grad + wd·p`; with momentum
/// `buf = g` on the first step, then `buf = momentum·buf + (1 - dampening)·g`; the step direction is
/// `g + momentum·buf` (Nesterov) or `buf`; `p -= lr·direction`.
pub struct Sgd {
    groups: Vec<ParamGroup>,
    config: SgdConfig,
    momentum_buffers: Vec<Vec<Option<Tensor>>>,
}

impl Sgd {
    /// An SGD optimiser over `groups`.
    ///
    /// # Errors
    ///
    /// [`VocError::BadArgument`] for a negative or non-finite learning rate, weight decay, `lr_scale`
    /// or momentum, a dampening outside [0, 1], or Nesterov without momentum or with dampening.
    pub fn new(groups: Vec<ParamGroup>, config: SgdConfig) -> Result<Self> {
        check_groups(&groups, config.lr)?;
        if !finite_non_negative(config.momentum) || !(0.0..=1.0).contains(&config.dampening) {
            return Err(VocError::BadArgument(format!(
                "SGD: momentum must be >= 0 and dampening in [0, 1], got {} and {}",
                config.momentum, config.dampening
            )));
        }
        if config.nesterov && (config.momentum <= 0.0 || config.dampening != 0.0) {
            return Err(VocError::BadArgument(
                "SGD: Nesterov momentum needs momentum > 0 and dampening 0".into(),
            ));
        }
        let momentum_buffers = empty_state(&groups);
        Ok(Self {
            groups,
            config,
            momentum_buffers,
        })
    }

    /// The parameter groups, as given.
    pub fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// The hyper-parameters (with the current learning rate).
    pub fn config(&self) -> &SgdConfig {
        &self.config
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        let c = self.config;
        let groups = &self.groups;
        for_each_gradient(
            groups,
            &mut self.momentum_buffers,
            grads,
            c.lr,
            |lr, wd, var, param, mut g, buffer| {
                if wd != 0.0 {
                    g = (g + param.affine(wd, 0.0)?)?;
                }
                if c.momentum != 0.0 {
                    let buf = match buffer.take() {
                        None => g.clone(),
                        Some(buf) => {
                            (buf.affine(c.momentum, 0.0)? + g.affine(1.0 - c.dampening, 0.0)?)?
                        }
                    };
                    g = if c.nesterov {
                        (g + buf.affine(c.momentum, 0.0)?)?
                    } else {
                        buf.clone()
                    };
                    *buffer = Some(buf);
                }
                var.set(&(param - g.affine(lr, 0.0)?)?)?;
                Ok(())
            },
        )
    }

    fn learning_rate(&self) -> f64 {
        self.config.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        collect_state(&self.groups, &self.momentum_buffers, |buf| {
            Ok(vec![("momentum_buffer", buf.clone())])
        })
    }

    fn load_state_tensors(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        restore_state(
            &self.groups,
            &mut self.momentum_buffers,
            tensors,
            |var, get| {
                get("momentum_buffer")
                    .map(|t| state_like(var, t, "momentum_buffer"))
                    .transpose()
            },
        )
    }
}

/// [`RmsProp`] hyper-parameters (weight decay, added to the gradient, is per [`ParamGroup`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RmsPropConfig {
    /// Base learning rate (default 0.01, PyTorch's; Keras's is 1e-3).
    pub lr: f64,
    /// Decay of the squared-gradient average (default 0.99, PyTorch's; Keras's `rho` is 0.9).
    pub alpha: f64,
    /// Added to the root of the average (default 1e-8).
    pub eps: f64,
    /// Momentum of the scaled step (default 0).
    pub momentum: f64,
    /// Divide by the root of the gradient's variance (average of `g²` minus the square of the average
    /// of `g`) instead of its second moment (default false).
    pub centered: bool,
}

impl Default for RmsPropConfig {
    fn default() -> Self {
        Self {
            lr: 0.01,
            alpha: 0.99,
            eps: 1e-8,
            momentum: 0.0,
            centered: false,
        }
    }
}

struct RmsPropState {
    square_avg: Tensor,
    grad_avg: Option<Tensor>,
    momentum_buffer: Option<Tensor>,
}

/// RMSprop as `torch.optim.RMSprop`: `g = grad + wd·p`; `v = alpha·v + (1 - alpha)·g²` (from 0);
/// centered: `m = alpha·m + (1 - alpha)·g` and `avg = sqrt(v - m²) + eps`, else `avg = sqrt(v) + eps`;
/// with momentum `buf = momentum·buf + g/avg` and `p -= lr·buf`, else `p -= lr·g/avg`.
pub struct RmsProp {
    groups: Vec<ParamGroup>,
    config: RmsPropConfig,
    state: Vec<Vec<Option<RmsPropState>>>,
}

impl RmsProp {
    /// An RMSprop optimiser over `groups`.
    ///
    /// # Errors
    ///
    /// [`VocError::BadArgument`] for a negative or non-finite learning rate, weight decay, `lr_scale`,
    /// `eps` or momentum, or `alpha` outside [0, 1].
    pub fn new(groups: Vec<ParamGroup>, config: RmsPropConfig) -> Result<Self> {
        check_groups(&groups, config.lr)?;
        if !(0.0..=1.0).contains(&config.alpha)
            || !finite_non_negative(config.eps)
            || !finite_non_negative(config.momentum)
        {
            return Err(VocError::BadArgument(format!(
                "RMSprop: alpha must be in [0, 1], eps and momentum >= 0, got alpha {}, eps {}, momentum {}",
                config.alpha, config.eps, config.momentum
            )));
        }
        let state = empty_state(&groups);
        Ok(Self {
            groups,
            config,
            state,
        })
    }

    /// The parameter groups, as given.
    pub fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// The hyper-parameters (with the current learning rate).
    pub fn config(&self) -> &RmsPropConfig {
        &self.config
    }
}

impl Optimizer for RmsProp {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        let c = self.config;
        let groups = &self.groups;
        for_each_gradient(
            groups,
            &mut self.state,
            grads,
            c.lr,
            |lr, wd, var, param, mut g, state| {
                if wd != 0.0 {
                    g = (g + param.affine(wd, 0.0)?)?;
                }
                let s = match state.take() {
                    Some(s) => s,
                    None => RmsPropState {
                        square_avg: g.zeros_like()?,
                        grad_avg: c.centered.then(|| g.zeros_like()).transpose()?,
                        momentum_buffer: None,
                    },
                };
                let square_avg =
                    (s.square_avg.affine(c.alpha, 0.0)? + g.sqr()?.affine(1.0 - c.alpha, 0.0)?)?;
                let grad_avg = match s.grad_avg {
                    Some(m) => Some((m.affine(c.alpha, 0.0)? + g.affine(1.0 - c.alpha, 0.0)?)?),
                    None => None,
                };
                let variance = match &grad_avg {
                    Some(m) => (&square_avg - m.sqr()?)?,
                    None => square_avg.clone(),
                };
                let avg = variance.sqrt()?.affine(1.0, c.eps)?;
                let scaled = (g / avg)?;
                let (direction, momentum_buffer) = if c.momentum > 0.0 {
                    let buf = match s.momentum_buffer {
                        Some(buf) => (buf.affine(c.momentum, 0.0)? + &scaled)?,
                        None => scaled,
                    };
                    (buf.clone(), Some(buf))
                } else {
                    (scaled, None)
                };
                var.set(&(param - direction.affine(lr, 0.0)?)?)?;
                *state = Some(RmsPropState {
                    square_avg,
                    grad_avg,
                    momentum_buffer,
                });
                Ok(())
            },
        )
    }

    fn learning_rate(&self) -> f64 {
        self.config.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        collect_state(&self.groups, &self.state, |s| {
            let mut slots = vec![("square_avg", s.square_avg.clone())];
            if let Some(t) = &s.grad_avg {
                slots.push(("grad_avg", t.clone()));
            }
            if let Some(t) = &s.momentum_buffer {
                slots.push(("momentum_buffer", t.clone()));
            }
            Ok(slots)
        })
    }

    fn load_state_tensors(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        restore_state(&self.groups, &mut self.state, tensors, |var, get| {
            let Some(square_avg) = get("square_avg") else {
                return Ok(None);
            };
            let slot = |name: &str| get(name).map(|t| state_like(var, t, name)).transpose();
            Ok(Some(RmsPropState {
                square_avg: state_like(var, square_avg, "square_avg")?,
                grad_avg: slot("grad_avg")?,
                momentum_buffer: slot("momentum_buffer")?,
            }))
        })
    }
}

/// [`AdamW`] hyper-parameters (weight decay is per [`ParamGroup`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    /// Base learning rate (default 1e-3).
    pub lr: f64,
    /// Decay of the first-moment average (default 0.9).
    pub beta1: f64,
    /// Decay of the second-moment average (default 0.999).
    pub beta2: f64,
    /// Added to the square root of the second moment (default 1e-8).
    pub eps: f64,
    /// `true`: AdamW, `p *= 1 - lr·wd` before the Adam step. `false`: Adam with L2, `grad += wd·p`.
    pub decoupled_weight_decay: bool,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            decoupled_weight_decay: true,
        }
    }
}

struct AdamState {
    step: u64,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

/// Adam with decoupled weight decay as `torch.optim.AdamW` (per-parameter step counts, bias
/// correction, `eps` added after the square root).
pub struct AdamW {
    groups: Vec<ParamGroup>,
    config: AdamWConfig,
    state: Vec<Vec<Option<AdamState>>>,
}

impl AdamW {
    /// An AdamW (or Adam, see [`AdamWConfig::decoupled_weight_decay`]) optimiser over `groups`.
    ///
    /// # Errors
    ///
    /// [`VocError::BadArgument`] for a negative or non-finite learning rate, weight decay, `lr_scale`
    /// or `eps`, or betas outside [0, 1).
    pub fn new(groups: Vec<ParamGroup>, config: AdamWConfig) -> Result<Self> {
        check_groups(&groups, config.lr)?;
        let beta_ok = |b: f64| (0.0..1.0).contains(&b);
        if !beta_ok(config.beta1) || !beta_ok(config.beta2) || !finite_non_negative(config.eps) {
            return Err(VocError::BadArgument(format!(
                "AdamW: betas must be in [0, 1) and eps >= 0, got betas ({}, {}) and eps {}",
                config.beta1, config.beta2, config.eps
            )));
        }
        let state = empty_state(&groups);
        Ok(Self {
            groups,
            config,
            state,
        })
    }

    /// The parameter groups, as given.
    pub fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// The hyper-parameters (with the current learning rate).
    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }
}

impl Optimizer for AdamW {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        let c = self.config;
        let groups = &self.groups;
        for_each_gradient(
            groups,
            &mut self.state,
            grads,
            c.lr,
            |lr, wd, var, mut param, mut grad, state| {
                if wd != 0.0 {
                    if c.decoupled_weight_decay {
                        param = param.affine(1.0 - lr * wd, 0.0)?;
                    } else {
                        grad = (grad + param.affine(wd, 0.0)?)?;
                    }
                }
                let s = match state.take() {
                    Some(s) => s,
                    None => AdamState {
                        step: 0,
                        exp_avg: grad.zeros_like()?,
                        exp_avg_sq: grad.zeros_like()?,
                    },
                };
                let step = s.step + 1;
                let exp_avg =
                    (s.exp_avg.affine(c.beta1, 0.0)? + grad.affine(1.0 - c.beta1, 0.0)?)?;
                let exp_avg_sq = (s.exp_avg_sq.affine(c.beta2, 0.0)?
                    + grad.sqr()?.affine(1.0 - c.beta2, 0.0)?)?;
                let bias_correction1 = 1.0 - c.beta1.powf(step as f64);
                let bias_correction2 = 1.0 - c.beta2.powf(step as f64);
                let step_size = lr / bias_correction1;
                let denom = exp_avg_sq
                    .sqrt()?
                    .affine(1.0 / bias_correction2.sqrt(), c.eps)?;
                let update = (exp_avg.affine(step_size, 0.0)? / denom)?;
                var.set(&(param - update)?)?;
                *state = Some(AdamState {
                    step,
                    exp_avg,
                    exp_avg_sq,
                });
                Ok(())
            },
        )
    }

    fn learning_rate(&self) -> f64 {
        self.config.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        collect_state(&self.groups, &self.state, |s| {
            // The step count as f64: exact up to 2^53 steps, and safetensors stores it as is.
            let step = Tensor::new(&[s.step as f64], s.exp_avg.device())?;
            Ok(vec![
                ("step", step),
                ("exp_avg", s.exp_avg.clone()),
                ("exp_avg_sq", s.exp_avg_sq.clone()),
            ])
        })
    }

    fn load_state_tensors(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        restore_state(&self.groups, &mut self.state, tensors, |var, get| {
            let (Some(step), Some(m), Some(v)) = (get("step"), get("exp_avg"), get("exp_avg_sq"))
            else {
                return Ok(None);
            };
            let step = step
                .flatten_all()?
                .to_dtype(candle_core::DType::F64)?
                .to_vec1::<f64>()?;
            let step = match step.as_slice() {
                [s] if *s >= 0.0 && s.fract() == 0.0 => *s as u64,
                _ => {
                    return Err(VocError::BadArgument(format!(
                        "optimiser state step {step:?} is not one whole number"
                    )))
                }
            };
            Ok(Some(AdamState {
                step,
                exp_avg: state_like(var, m, "exp_avg")?,
                exp_avg_sq: state_like(var, v, "exp_avg_sq")?,
            }))
        })
    }
}

/// A learning rate as a function of the step (or epoch) count, from a base rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// `base` at every step.
    Constant,
    /// `base · gamma^(t / step_size)` (integer division), as `torch.optim.lr_scheduler.StepLR`.
    Step {
        /// Steps between cuts.
        step_size: usize,
        /// Factor of each cut.
        gamma: f64,
    },
    /// `min_lr + (base - min_lr)·(1 + cos(π·t/total))/2`, then `min_lr` from `total` on.
    Cosine {
        /// Steps of the half cosine.
        total: usize,
        /// The rate it ends at.
        min_lr: f64,
    },
    /// `base · (1 - t/total)^power` (DeepLab's "poly" uses power 0.9), then 0 from `total` on.
    Poly {
        /// Steps until the rate reaches 0.
        total: usize,
        /// The exponent.
        power: f64,
    },
    /// Linear warm-up: `base · (t + 1)/steps` for `t < steps`, then `then` evaluated at `t - steps`.
    Warmup {
        /// Warm-up steps.
        steps: usize,
        /// The schedule after the warm-up, started from its step 0.
        then: Box<LrSchedule>,
    },
}

impl LrSchedule {
    /// This schedule preceded by `steps` steps of linear warm-up (none when `steps == 0`).
    pub fn with_warmup(self, steps: usize) -> Self {
        if steps == 0 {
            self
        } else {
            Self::Warmup {
                steps,
                then: Box::new(self),
            }
        }
    }

    /// The learning rate at step `t` (0-based) for base rate `base_lr`.
    pub fn lr_at(&self, base_lr: f64, t: usize) -> f64 {
        let progress = |total: usize| {
            if total == 0 {
                1.0
            } else {
                t.min(total) as f64 / total as f64
            }
        };
        match self {
            Self::Constant => base_lr,
            Self::Step { step_size, gamma } => {
                base_lr * gamma.powi((t / (*step_size).max(1)) as i32)
            }
            Self::Cosine { total, min_lr } => {
                min_lr
                    + (base_lr - min_lr) * (1.0 + (std::f64::consts::PI * progress(*total)).cos())
                        / 2.0
            }
            Self::Poly { total, power } => base_lr * (1.0 - progress(*total)).powf(*power),
            Self::Warmup { steps, then } => {
                if t < *steps {
                    base_lr * (t + 1) as f64 / *steps as f64
                } else {
                    then.lr_at(base_lr, t - steps)
                }
            }
        }
    }

    /// Sets `optimizer`'s learning rate for step `t`.
    pub fn apply(&self, optimizer: &mut dyn Optimizer, base_lr: f64, t: usize) {
        optimizer.set_learning_rate(self.lr_at(base_lr, t));
    }
}

/// Whether a smaller or a larger metric is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Lower is better (a loss).
    Min,
    /// Higher is better (mAP, accuracy, IoU).
    Max,
}

/// Cuts the learning rate by `factor` when the metric has not improved for more than `patience`
/// epochs, as `torch.optim.lr_scheduler.ReduceLROnPlateau` with `threshold_mode="rel"`: an epoch
/// improves when `metric < best·(1 - threshold)` (min) or `metric > best·(1 + threshold)` (max).
/// After a cut, `cooldown` epochs pass before bad epochs count again; the rate never goes below `min_lr`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReduceLrOnPlateau {
    /// Whether the metric should go down or up.
    pub mode: Mode,
    /// Multiplier of each cut, in (0, 1).
    pub factor: f64,
    /// Bad epochs tolerated before a cut.
    pub patience: usize,
    /// Relative improvement needed to count as better.
    pub threshold: f64,
    /// Epochs after a cut during which bad epochs are not counted.
    pub cooldown: usize,
    /// The rate is never cut below this.
    pub min_lr: f64,
    best: Option<f64>,
    bad_epochs: usize,
    cooldown_left: usize,
}

impl ReduceLrOnPlateau {
    /// PyTorch's defaults for the rest: `threshold = 1e-4`, `cooldown = 0`, `min_lr = 0`.
    ///
    /// # Errors
    ///
    /// [`VocError::BadArgument`] when `factor` is not in (0, 1).
    pub fn new(mode: Mode, factor: f64, patience: usize) -> Result<Self> {
        if !(factor > 0.0 && factor < 1.0) {
            return Err(VocError::BadArgument(format!(
                "ReduceLrOnPlateau: factor must be in (0, 1), got {factor}"
            )));
        }
        Ok(Self {
            mode,
            factor,
            patience,
            threshold: 1e-4,
            cooldown: 0,
            min_lr: 0.0,
            best: None,
            bad_epochs: 0,
            cooldown_left: 0,
        })
    }

    /// Sets [`Self::min_lr`].
    pub fn with_min_lr(mut self, min_lr: f64) -> Self {
        self.min_lr = min_lr;
        self
    }

    /// Sets [`Self::threshold`] (relative).
    pub fn with_threshold(mut self, threshold: f64) -> Self {
        self.threshold = threshold;
        self
    }

    /// Sets [`Self::cooldown`].
    pub fn with_cooldown(mut self, cooldown: usize) -> Self {
        self.cooldown = cooldown;
        self
    }

    /// Records one epoch's `metric` and returns the learning rate for the next epoch given the
    /// current one.
    pub fn step(&mut self, metric: f64, lr: f64) -> f64 {
        let improved = match (self.best, self.mode) {
            (None, _) => !metric.is_nan(),
            (Some(best), Mode::Min) => metric < best * (1.0 - self.threshold),
            (Some(best), Mode::Max) => metric > best * (1.0 + self.threshold),
        };
        if improved {
            self.best = Some(metric);
            self.bad_epochs = 0;
        } else {
            self.bad_epochs += 1;
        }
        if self.cooldown_left > 0 {
            self.cooldown_left -= 1;
            self.bad_epochs = 0;
        }
        if self.bad_epochs > self.patience {
            self.cooldown_left = self.cooldown;
            self.bad_epochs = 0;
            let reduced = (lr * self.factor).max(self.min_lr);
            // As PyTorch: changes below 1e-8 are not worth making.
            if lr - reduced > 1e-8 {
                return reduced;
            }
        }
        lr
    }

    /// [`Self::step`] on `optimizer`'s learning rate; true when it was reduced.
    pub fn step_optimizer(&mut self, metric: f64, optimizer: &mut dyn Optimizer) -> bool {
        let lr = optimizer.learning_rate();
        let next = self.step(metric, lr);
        optimizer.set_learning_rate(next);
        next < lr
    }

    /// The best metric so far; `None` before the first epoch.
    pub fn best(&self) -> Option<f64> {
        self.best
    }
}

/// Stops training when the monitored metric has not improved by more than `min_delta` for `patience`
/// epochs in a row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EarlyStopping {
    /// Whether the metric should go down or up.
    pub mode: Mode,
    /// Epochs without improvement tolerated before stopping.
    pub patience: usize,
    /// The least change that counts as an improvement (absolute, >= 0).
    pub min_delta: f64,
    best: Option<f64>,
    bad_epochs: usize,
    improved: bool,
}

impl EarlyStopping {
    /// Nothing recorded yet; `min_delta` is taken as its absolute value.
    pub fn new(mode: Mode, patience: usize, min_delta: f64) -> Self {
        Self {
            mode,
            patience,
            min_delta: min_delta.abs(),
            best: None,
            bad_epochs: 0,
            improved: false,
        }
    }

    /// Records one epoch's `metric`; true when training should stop now (with `patience` 0: at the
    /// first epoch that does not improve).
    pub fn should_stop(&mut self, metric: f64) -> bool {
        self.improved = match (self.best, self.mode) {
            (None, _) => !metric.is_nan(),
            (Some(best), Mode::Min) => metric < best - self.min_delta,
            (Some(best), Mode::Max) => metric > best + self.min_delta,
        };
        if self.improved {
            self.best = Some(metric);
            self.bad_epochs = 0;
        } else {
            self.bad_epochs += 1;
        }
        self.bad_epochs > 0 && self.bad_epochs >= self.patience
    }

    /// Whether the last recorded metric was a new best (the moment to save the best checkpoint).
    pub fn improved(&self) -> bool {
        self.improved
    }

    /// The best metric so far; `None` before the first epoch.
    pub fn best(&self) -> Option<f64> {
        self.best
    }

    /// Epochs since the last improvement.
    pub fn bad_epochs(&self) -> usize {
        self.bad_epochs
    }
}
