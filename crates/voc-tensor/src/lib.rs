#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod checkpoint;
pub mod device;
pub mod error;
pub mod fused;
pub mod hub;
pub mod nhwc;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod preprocess;
pub mod run;
mod simd;
pub mod testing;

pub use candle_core::{DType, Device, Tensor, Var};
pub use device::DeviceSpec;
pub use error::{Result, VocError};
