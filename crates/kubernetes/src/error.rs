//! Why the Kubernetes scaler could not do what was asked: bad trigger metadata, a policy that
//! does not parse, or a failed call to the API server or the queue.

use greenscale_core::QueueError;
use greenscale_core::policy::SpecError;

/// An error of the scaler, in words for the ScaledObject's author or the operator.
#[derive(Debug, thiserror::Error)]
pub enum ScalerError {
    /// The trigger metadata cannot be used (unknown key, bad value); says which key.
    #[error("{0}")]
    Metadata(String),
    /// The policy spec does not parse.
    #[error(transparent)]
    Policy(#[from] SpecError),
    /// A call to the Kubernetes API server failed.
    #[error("{what}: {source}")]
    Kubernetes {
        /// What was being done (`Lease`, `scale of deployment worker`, …).
        what: String,
        /// The client's error.
        source: kube::Error,
    },
    /// The queue could not be read.
    #[error("queue: {0}")]
    Queue(#[from] QueueError),
}

impl ScalerError {
    /// A failed Kubernetes call, with what it was for.
    pub fn kubernetes(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let what = what.into();
        move |source| ScalerError::Kubernetes { what, source }
    }
}
