#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod defence;
pub mod error;
pub mod objective;
pub mod pgd;
pub mod quality;

pub use error::{AttackError, Result};
pub use objective::{Loss, Objective};
pub use pgd::{
    attack, input_gradient, universal_perturbation, AttackConfig, AttackOutcome, Goal, Norm,
};
