//! Adversarial attacks on candle models: FGSM and PGD under L-inf or L2 budgets, untargeted or
//! targeted, with the losses of single-label classifiers, multi-label classifiers and segmenters.
//!
//! A model is any closure from an input batch to logits whose ops candle can differentiate; it
//! usually wraps the network's preprocessing so that the attack runs in pixel space (values 0..1):
//!
//! ```no_run
//! use voc_attack::{attack, AttackConfig, Objective};
//! # fn demo(net: impl Fn(&candle_core::Tensor) -> candle_core::Result<candle_core::Tensor>,
//! #         pixels: candle_core::Tensor) -> voc_attack::Result<()> {
//! let model = |u: &candle_core::Tensor| net(&u.affine(2.0, -1.0)?); // u in 0..1 -> input in -1..1
//! let outcome = attack(&model, &Objective::CrossEntropy { classes: vec![20] }, &pixels,
//!                      &AttackConfig::fgsm(2.0 / 255.0))?;
//! println!("loss {:?}, L-inf {:?}", outcome.losses, outcome.linf);
//! # Ok(()) }
//! ```
pub mod error;
pub mod objective;
pub mod pgd;

pub use error::{AttackError, Result};
pub use objective::{Loss, Objective};
pub use pgd::{attack, input_gradient, AttackConfig, AttackOutcome, Goal, Norm};
