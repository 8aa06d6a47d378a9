//! The error type of voc-attack.

pub type Result<T, E = AttackError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum AttackError {
    #[error(transparent)]
    Tensor(#[from] voc_tensor::VocError),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// A budget, step or bound that cannot describe an attack (`field` names the config field).
    #[error("bad attack config: {field} = {value}: {expected}")]
    BadConfig {
        field: &'static str,
        value: String,
        expected: &'static str,
    },

    /// Inputs, labels or targets whose shapes or values do not fit the model's output.
    #[error("bad attack input: {0}")]
    BadInput(String),

    /// The model closure failed; its own error is the source.
    #[error("the model failed on the attacked input: {0}")]
    Model(#[source] Box<dyn std::error::Error + Send + Sync>),
}
