//! The error type of voc-attack.

/// voc-attack's result type.
pub type Result<T, E = AttackError> = std::result::Result<T, E>;

/// What can go wrong setting up or running an attack.
#[derive(Debug, thiserror::Error)]
pub enum AttackError {
    /// An error of voc-tensor's ops (the losses), with its source.
    #[error(transparent)]
    Tensor(#[from] voc_tensor::VocError),

    /// An error of the shared vocabulary layer (an image or mask that cannot be built), with its source.
    #[error(transparent)]
    Core(#[from] voc_core::CoreError),

    /// A candle tensor operation failed (including the backward pass).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// A budget, step or bound that cannot describe an attack (`field` names the config field).
    #[error("bad attack config: {field} = {value}: {expected}")]
    BadConfig {
        /// The [`crate::AttackConfig`] field.
        field: &'static str,
        /// Its value.
        value: String,
        /// What it must be.
        expected: &'static str,
    },

    /// Inputs, labels or targets whose shapes or values do not fit the model's output.
    #[error("bad attack input: {0}")]
    BadInput(String),

    /// The model closure failed; its own error is the source.
    #[error("the model failed on the attacked input: {0}")]
    Model(#[source] Box<dyn std::error::Error + Send + Sync>),
}
