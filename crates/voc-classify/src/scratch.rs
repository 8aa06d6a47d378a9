//! The seed notebook's AlexNet-like CNN, trained from random weights: the baseline the transfer models
//! are compared with.
//!
//! Layer for layer as the notebook's Keras model (valid padding, pools with stride = size, batch norm
//! after the ReLU): 150x150x3 input; conv 64@7x7 -> ReLU -> BN -> max-pool 3; conv 128@5x5 -> ReLU ->
//! BN -> max-pool 3; conv 145@3x3 -> ReLU; conv 145@3x3 -> ReLU; conv 128@3x3 -> ReLU -> BN ->
//! max-pool 4; flatten (2x2x128 = 512) -> dense 64 -> ReLU -> dense 64 -> ReLU -> dropout 0.5 ->
//! dense 20 (logits). Keras counts 777,695 parameters for it, 640 of them the batch norms' moving
//! statistics; weights start as Keras's do (Glorot-uniform kernels, zero biases).
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::{ModuleT, VarBuilder, VarMap};
//! use voc_classify::{ScratchCnn, ScratchCnnConfig};
//!
//! let varmap = VarMap::new();
//! let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
//! let net = ScratchCnn::new(vb, ScratchCnnConfig::default())?;
//! // Keras's count, the 640 moving statistics of the batch norms included.
//! let count: usize = varmap.all_vars().iter().map(|v| v.elem_count()).sum();
//! assert_eq!(count, 777_695);
//! let x = Tensor::zeros((2, 3, 150, 150), DType::F32, &Device::Cpu)?;
//! assert_eq!(net.forward_t(&x, false)?.dims(), &[2, 20]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
use candle_core::{Module, Tensor};
use candle_nn::{Init, Linear, ModuleT, VarBuilder};
use voc_core::NUM_CLASSES;
use voc_tensor::nn::BatchNorm2d;
use voc_tensor::ops::{conv2d, max_pool2d, Padding};

use crate::error::{ClassifyError, Result};

/// Sizes of the scratch CNN; the defaults are the notebook's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScratchCnnConfig {
    /// Side of the square input (150 in the notebook).
    pub input_size: usize,
    /// Outputs (one logit per class).
    pub num_classes: usize,
    /// Dropout before the last dense layer, in training mode.
    pub dropout: f32,
    /// Batch-norm epsilon (Keras's default 1e-3).
    pub bn_eps: f64,
    /// Weight of the new batch in the moving statistics (Keras's momentum 0.99 is 0.01 here).
    pub bn_momentum: f64,
}

impl Default for ScratchCnnConfig {
    fn default() -> Self {
        Self {
            input_size: 150,
            num_classes: NUM_CLASSES,
            dropout: 0.5,
            bn_eps: 1e-3,
            bn_momentum: 0.01,
        }
    }
}

/// `(kernel, output channels, max-pool after it)` of the five convolutions, in order.
const CONVS: [(usize, usize, Option<usize>); 5] = [
    (7, 64, Some(3)),
    (5, 128, Some(3)),
    (3, 145, None),
    (3, 145, None),
    (3, 128, Some(4)),
];
/// Width of the two hidden dense layers.
const HIDDEN: usize = 64;

/// Side of the last feature map for a square input of side `input`, if every valid convolution and pool
/// has room.
fn feature_side_of(input: usize) -> Option<usize> {
    let mut side = input;
    for (kernel, _, pool) in CONVS {
        side = side.checked_sub(kernel - 1).filter(|&s| s > 0)?;
        if let Some(pool) = pool {
            side /= pool;
        }
    }
    (side > 0).then_some(side)
}

impl ScratchCnnConfig {
    /// Side of the last feature map for this input size, or an error naming the smallest input that
    /// works when this one is too small for the valid convolutions and pools.
    pub fn feature_side(&self) -> Result<usize> {
        feature_side_of(self.input_size).ok_or_else(|| {
            let smallest = (1..).find(|&s| feature_side_of(s).is_some()).unwrap_or(0);
            ClassifyError::BadArgument(format!(
                "the scratch CNN needs an input of at least {smallest}x{smallest} (valid 7/5/3/3/3 \
                 convolutions, pools 3/3/4), got {0}x{0}",
                self.input_size
            ))
        })
    }

    /// Length of the flattened features the first dense layer reads (512 at 150x150).
    pub fn flat_features(&self) -> Result<usize> {
        let side = self.feature_side()?;
        Ok(side * side * CONVS[CONVS.len() - 1].1)
    }
}

/// Glorot-uniform initialisation (Keras's default for convolution and dense kernels).
fn glorot(fan_in: usize, fan_out: usize) -> Init {
    let limit = (6.0 / (fan_in + fan_out) as f64).sqrt();
    Init::Uniform {
        lo: -limit,
        up: limit,
    }
}

/// The scratch CNN: `conv1..conv5`, `bn1..bn3`, `fc1`, `fc2`, `classifier`.
#[derive(Debug, Clone)]
pub struct ScratchCnn {
    /// `(weight, bias)` of each convolution, `out x in x k x k` and `out`.
    convs: Vec<(Tensor, Tensor)>,
    norms: Vec<BatchNorm2d>,
    hidden: [Linear; 2],
    classifier: Linear,
    dropout: voc_tensor::nn::Dropout,
    config: ScratchCnnConfig,
}

impl ScratchCnn {
    /// Builds the network under `vb` (fresh Glorot-uniform weights from a `VarMap`, or named tensors).
    pub fn new(vb: VarBuilder, config: ScratchCnnConfig) -> Result<Self> {
        let flat = config.flat_features()?;
        if !(0.0..1.0).contains(&config.dropout) {
            return Err(ClassifyError::BadArgument(format!(
                "dropout {} is not a probability in [0, 1)",
                config.dropout
            )));
        }
        let mut convs = Vec::with_capacity(CONVS.len());
        let mut norms = Vec::new();
        let mut channels = 3;
        for (i, &(kernel, out, pool)) in CONVS.iter().enumerate() {
            let cvb = vb.pp(format!("conv{}", i + 1));
            let weight = cvb.get_with_hints(
                (out, channels, kernel, kernel),
                "weight",
                glorot(channels * kernel * kernel, out * kernel * kernel),
            )?;
            let bias = cvb.get_with_hints(out, "bias", Init::Const(0.0))?;
            convs.push((weight, bias));
            if pool.is_some() {
                let name = format!("bn{}", norms.len() + 1);
                norms.push(BatchNorm2d::new(
                    vb.pp(name),
                    out,
                    config.bn_eps,
                    config.bn_momentum,
                )?);
            }
            channels = out;
        }
        let dense = |name: &str, cin: usize, cout: usize| -> Result<Linear> {
            let dvb = vb.pp(name);
            let weight = dvb.get_with_hints((cout, cin), "weight", glorot(cin, cout))?;
            let bias = dvb.get_with_hints(cout, "bias", Init::Const(0.0))?;
            Ok(Linear::new(weight, Some(bias)))
        };
        Ok(Self {
            convs,
            norms,
            hidden: [dense("fc1", flat, HIDDEN)?, dense("fc2", HIDDEN, HIDDEN)?],
            classifier: dense("classifier", HIDDEN, config.num_classes)?,
            dropout: voc_tensor::nn::Dropout::new(config.dropout),
            config,
        })
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &ScratchCnnConfig {
        &self.config
    }

    /// Seeds the dropout masks, so a training run repeats exactly.
    pub fn seed_dropout(&self, seed: u64) {
        self.dropout.seed(seed);
    }

    /// Logits `N x num_classes` for an `N x 3 x S x S` input (S = `input_size`); `train` puts batch norm
    /// in training mode (batch statistics, moving statistics updated) and turns dropout on.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (_, c, h, w) = x.dims4()?;
        let s = self.config.input_size;
        if (c, h, w) != (3, s, s) {
            return Err(ClassifyError::BadArgument(format!(
                "the scratch CNN takes N x 3 x {s} x {s} inputs, got {:?}",
                x.dims()
            )));
        }
        let mut x = x.clone();
        let mut norms = self.norms.iter();
        for (conv, &(_, _, pool)) in self.convs.iter().zip(&CONVS) {
            // voc-tensor's convolution: im2col + one matrix product, several times faster than
            // candle's on the CPU, forward and backward.
            x = conv2d(&x, &conv.0, Some(&conv.1), 1, Padding::default(), 1, 1)?.relu()?;
            if let Some(pool) = pool {
                let bn = norms.next().expect("one batch norm per pooled convolution");
                x = max_pool2d(&bn.forward_t(&x, train)?, pool, pool, 0)?;
            }
        }
        let mut x = x.flatten_from(1)?;
        for layer in &self.hidden {
            x = layer.forward(&x)?.relu()?;
        }
        let x = self.dropout.forward_t(&x, train)?;
        Ok(self.classifier.forward(&x)?)
    }
}

impl ModuleT for ScratchCnn {
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        Ok(ScratchCnn::forward_t(self, xs, train)?)
    }
}
