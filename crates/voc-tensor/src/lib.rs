//! The shared candle tensor layer of voc.
//!
//! Every model, attack and training loop of the workspace goes through this crate for:
//! - [`device`]: picking CPU or CUDA, `--device` parsing, CPU thread set-up;
//! - [`ops`]: differentiable ops that candle 0.11 lacks or gets wrong (bilinear resize with a gradient,
//!   pooling, fast depthwise conv, odd-size strided conv, TF "SAME" padding, batch norm, stable losses);
//! - [`fused`]: CPU kernels that fuse a convolution's epilogue: conv + training batch norm + activation
//!   (+ residual) as one autograd node, batch norm + activation, folded-BN shift + activation;
//! - [`optim`]: SGD with momentum/Nesterov, AdamW, parameter groups, LR schedules, early stopping;
//! - [`hub`]: pretrained weights from the Hugging Face hub (cache first, offline-safe);
//! - [`checkpoint`]: one-file safetensors checkpoints with JSON metadata.
pub mod checkpoint;
pub mod device;
pub mod error;
pub mod fused;
pub mod hub;
pub mod nn;
pub mod ops;
pub mod optim;
mod simd;
pub mod testing;

pub use candle_core::{DType, Device, Tensor, Var};
pub use device::DeviceSpec;
pub use error::{Result, VocError};
