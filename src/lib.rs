//! voc: PASCAL VOC classification, segmentation, adversarial attacks and Kaggle submissions on candle.
//!
//! This root crate re-exports the workspace crates so that one dependency brings them all; it also owns
//! the cross-crate benchmarks (`benches/`). The end-to-end tests of the `voc` command are in
//! `crates/voc-cli/tests`.
pub use voc_attack as attack;
pub use voc_classify as classify;
pub use voc_core as core;
pub use voc_data as data;
pub use voc_segment as segment;
pub use voc_submit as submit;
pub use voc_tensor as tensor;
