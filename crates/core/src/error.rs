//! The error of input the core cannot use as given.

/// Input that cannot be used as given (a job, a duration, a trace format): the message says
/// what is wrong in words a user can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInput(pub String);

impl From<String> for InvalidInput {
    fn from(message: String) -> Self {
        InvalidInput(message)
    }
}

impl From<&str> for InvalidInput {
    fn from(message: &str) -> Self {
        InvalidInput(message.to_string())
    }
}
