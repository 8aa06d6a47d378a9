//! Fused CPU kernels for the convolution epilogues of MobileNet-style networks.
//!
//! Every convolution of these networks is followed by batch norm and a cheap activation. Composed from
//! candle primitives, batch norm in training mode is about ten full passes over the activation forward and
//! twenty backward (each with its own temporary), and ReLU6 five; at 2 threads those passes, not the
//! convolutions, dominate a training step. Here each is one custom op with a hand-written backward:
//!
//! - [`batch_norm_act_train`]: batch norm with batch statistics (PyTorch semantics: biased variance
//!   for normalising, unbiased for the running variance, gradient through the statistics) followed by
//!   the activation, in three passes forward and three backward, and the running-statistics update;
//! - [`conv_bn_act_train`]: a 1x1 or depthwise convolution, that batch norm, the activation and an
//!   optional residual add as one autograd node (candle's backward costs three passes per node);
//! - [`bias_act()`]: per-channel bias then the activation in one pass (the epilogue of a convolution
//!   whose eval-mode batch norm was folded into its weights), whose backward is one pass too, and
//!   [`conv2d_bias_act`], which runs it in place after the convolution when nothing needs a gradient.
//!
//! All run on f32 CPU tensors; on other devices or dtypes they compose the same maths from candle
//! primitives, so callers need no second path.
//!
//! One file per op: `bias_act` (bias + activation, in place after a convolution), `batch_norm`
//! (training batch norm + activation and the batch statistics both fused ops share), `conv_bn` (the
//! whole conv + batch norm + activation node), `pointwise` (the 1x1 convolution as gemm calls, and a
//! 1x1 convolution with a constant weight whose backward skips the weight gradient).
use candle_core::{DType, Tensor};

use crate::error::Result;

/// Runs `$body` with the activation `$f` and its output-side gradient gate `$pass` as concrete closures,
/// so the per-element loops are compiled (and vectorised) once per activation.
macro_rules! with_act {
    ($act:expr, |$f:ident, $pass:ident| $body:expr) => {
        match $act {
            Act::Identity => {
                let $f = |v: f32| v;
                let $pass = |_: f32| true;
                $body
            }
            Act::Relu => {
                let $f = |v: f32| v.max(0.0);
                let $pass = |o: f32| o > 0.0;
                $body
            }
            Act::Relu6 => {
                let $f = |v: f32| v.clamp(0.0, 6.0);
                let $pass = |o: f32| (o > 0.0) & (o < 6.0);
                $body
            }
        }
    };
}

mod batch_norm;
mod bias_act;
mod conv_bn;
mod pointwise;
pub(crate) mod pointwise_gemm;

pub use batch_norm::batch_norm_act_train;
pub use bias_act::{bias_act, conv2d_bias_act, conv2d_bias_residual_act, scale_shift_act};
pub use conv_bn::{conv_bn_act_train, conv_bn_fusion, set_conv_bn_fusion, ConvKind};
pub(crate) use pointwise::{pointwise_const_weight, pointwise_conv};

/// The activation closing a fused epilogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// No activation.
    Identity,
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, 0), 6)`, gradient 1 strictly inside (0, 6), as PyTorch's `hardtanh_backward`.
    Relu6,
}

impl Act {
    /// The same activation from candle primitives (other devices and dtypes).
    fn compose(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Identity => x.clone(),
            Self::Relu => x.relu()?,
            Self::Relu6 => crate::ops::relu6(x)?,
        })
    }
}

/// Planes are handed to rayon in groups of at least this many elements.
const MIN_PARALLEL_ELEMS: usize = 1 << 14;

fn on_cpu_f32(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// A new buffer of `len` values, plane `i` (of `plane` values) written from `values(i)` (see
/// [`append_planes`]).
fn planes<I: Iterator<Item = f32>>(
    len: usize,
    plane: usize,
    values: impl Fn(usize) -> I + Sync + Send,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(len);
    append_planes(&mut out, len, plane, values);
    out
}

/// Appends `len` values to `out`, plane `i` (of `plane` values) written from `values(i)` in parallel,
/// small planes going to rayon in groups of at least [`MIN_PARALLEL_ELEMS`] values. The helper writes
/// every value itself, one pass, and zero-fills whatever `values` leaves short
/// ([`crate::ops::append_planes_from`]): no plane can be left uninitialised.
fn append_planes<I: Iterator<Item = f32>>(
    out: &mut Vec<f32>,
    len: usize,
    plane: usize,
    values: impl Fn(usize) -> I + Sync + Send,
) {
    let plane = plane.max(1);
    let min_planes = (MIN_PARALLEL_ELEMS / plane).max(1);
    crate::ops::append_planes_from(out, len, plane, min_planes, values);
}

/// Inputs and checks shared by the fused kernels' tests.
#[cfg(test)]
pub(crate) mod test_support {
    use candle_core::backprop::GradStore;
    use candle_core::{DType, Device, Tensor};
    use candle_nn::{VarBuilder, VarMap};

    use crate::nn::BatchNorm2d;
    use crate::testing::max_abs_diff;

    /// A deterministic saw-tooth of `shape`, shifted by `seed` so different tensors differ.
    pub(crate) fn ramp(shape: &[usize], scale: f32, offset: f32, seed: usize) -> Tensor {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|i| (((i + seed) * 37 % 23) as f32 - 11.0) * scale + offset)
            .collect();
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
    }

    /// A trainable batch norm (eps 1e-3, momentum 0.1) with the given weight and bias.
    pub(crate) fn batch_norm(weight: &[f32], bias: &[f32]) -> (VarMap, BatchNorm2d) {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let bn = BatchNorm2d::new(vb, weight.len(), 1e-3, 0.1).unwrap();
        let data = varmap.data().lock().unwrap();
        data["weight"]
            .set(&Tensor::new(weight, &Device::Cpu).unwrap())
            .unwrap();
        data["bias"]
            .set(&Tensor::new(bias, &Device::Cpu).unwrap())
            .unwrap();
        drop(data);
        (varmap, bn)
    }

    /// The two batch norms' running statistics agree to a few f32 ulps (the fused kernels sum in
    /// AVX2 lanes, candle's reductions in another order).
    pub(crate) fn assert_same_running_stats(a: &BatchNorm2d, b: &BatchNorm2d, what: &str) {
        for (x, y) in [
            (a.running_mean(), b.running_mean()),
            (a.running_var(), b.running_var()),
        ] {
            let diff = max_abs_diff(x.as_tensor(), y.as_tensor()).unwrap();
            assert!(diff < 2e-6, "{what}: running statistics differ by {diff}");
        }
    }

    /// The gradients of `sum(y * mix)`.
    pub(crate) fn weighted_sum_grads(y: &Tensor, mix: &Tensor) -> GradStore {
        (y * mix).unwrap().sum_all().unwrap().backward().unwrap()
    }
}
