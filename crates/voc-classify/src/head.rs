//! Classification heads on pooled features: one linear layer (the default), or the seed notebook's MLP.
//!
//! Weight names (under the classifier's `classifier` prefix): the linear head is `classifier.weight` and
//! `classifier.bias`, as the pretrained ImageNet heads, so a pretrained head loads into it unchanged; the
//! MLP is `classifier.fc1.*`, `classifier.fc2.*` and `classifier.out.*`.
use std::fmt;
use std::str::FromStr;

use candle_core::{ModuleT, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::error::{ClassifyError, Result};
use crate::layers;

/// Width of the MLP head's two hidden layers: the seed notebook's dense 64 -> ReLU -> dense 64 -> ReLU.
pub const MLP_HIDDEN: usize = 64;

/// Which head reads the pooled features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadKind {
    /// Dropout (training only), then one linear layer to the logits.
    #[default]
    Linear,
    /// The seed notebook's head: dense 64 -> ReLU -> dense 64 -> ReLU -> dropout -> dense to the logits.
    Mlp,
}

impl HeadKind {
    /// Every head, in `--head` order.
    pub const ALL: [HeadKind; 2] = [HeadKind::Linear, HeadKind::Mlp];

    /// The name on command lines and in checkpoints (`linear`, `mlp`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Linear => "linear",
            Self::Mlp => "mlp",
        }
    }
}

impl fmt::Display for HeadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for HeadKind {
    type Err = ClassifyError;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|h| h.name() == s)
            .ok_or_else(|| {
                ClassifyError::BadArgument(format!("unknown head '{s}': expected linear or mlp"))
            })
    }
}

/// A head: logits `N x num_classes` from features `N x in_features`.
///
/// ```
/// use candle_core::{DType, Device, ModuleT, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// use voc_classify::head::{Head, HeadKind};
///
/// let varmap = VarMap::new();
/// let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
/// let head = Head::new(vb.pp("classifier"), HeadKind::Mlp, 1280, 20, 0.5)?;
/// let features = Tensor::randn(0f32, 1.0, (4, 1280), &Device::Cpu)?;
/// assert_eq!(head.forward_t(&features, true)?.dims(), [4, 20]);
/// assert!(varmap.data().lock().unwrap().contains_key("classifier.fc1.weight"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Head {
    kind: HeadKind,
    /// The linear layers in order; the last gives the logits.
    layers: Vec<Linear>,
    dropout: voc_tensor::nn::Dropout,
}

impl Head {
    /// Builds the head under `vb` (the `classifier` prefix). A dropout outside `[0, 1)`, no input
    /// features or no classes is a [`ClassifyError::BadArgument`].
    pub fn new(
        vb: VarBuilder,
        kind: HeadKind,
        in_features: usize,
        num_classes: usize,
        dropout: f32,
    ) -> Result<Self> {
        if in_features == 0 || num_classes == 0 {
            return Err(ClassifyError::BadArgument(format!(
                "a head needs features and classes, got {in_features} features and {num_classes} classes"
            )));
        }
        if !(0.0..1.0).contains(&dropout) {
            return Err(ClassifyError::BadArgument(format!(
                "dropout {dropout} is not in [0, 1)"
            )));
        }
        let layers = match kind {
            HeadKind::Linear => vec![layers::linear(vb, in_features, num_classes)?],
            HeadKind::Mlp => vec![
                layers::linear(vb.pp("fc1"), in_features, MLP_HIDDEN)?,
                layers::linear(vb.pp("fc2"), MLP_HIDDEN, MLP_HIDDEN)?,
                layers::linear(vb.pp("out"), MLP_HIDDEN, num_classes)?,
            ],
        };
        Ok(Self {
            kind,
            layers,
            dropout: voc_tensor::nn::Dropout::new(dropout),
        })
    }

    /// Which head this is.
    pub fn kind(&self) -> HeadKind {
        self.kind
    }

    /// The dropout before the last layer (training mode only).
    pub fn dropout(&self) -> f32 {
        self.dropout.p()
    }

    /// Seeds the dropout masks, so a training run repeats exactly.
    pub fn seed_dropout(&self, seed: u64) {
        self.dropout.seed(seed);
    }

    /// Logits for `N x in_features` features; `train` turns dropout on.
    pub fn forward_t(&self, features: &Tensor, train: bool) -> Result<Tensor> {
        let (last, hidden) = self
            .layers
            .split_last()
            .ok_or_else(|| ClassifyError::BadArgument("a head without layers".into()))?;
        let mut h = features.clone();
        for layer in hidden {
            h = layers::linear_forward(layer, &h)?.relu()?;
        }
        h = self.dropout.forward_t(&h, train)?;
        layers::linear_forward(last, &h)
    }
}

impl ModuleT for Head {
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        Ok(Head::forward_t(self, xs, train)?)
    }
}
