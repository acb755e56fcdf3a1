//! GreenScale on Kubernetes: the KEDA external scaler (gRPC) and the direct actuator that
//! patches a Deployment's scale subresource.
//!
//! - [`external`]: the `externalscaler.ExternalScaler` service;
//! - [`actuator`]: the direct actuator (Lease + scale subresource);
//! - [`error`]: what can go wrong, in words for the ScaledObject's author;
//! - [`metrics`]: Prometheus metrics and the HTTP server for `/metrics` and `/healthz`;
//! - [`tls`]: TLS and mutual TLS for the gRPC server.

pub mod actuator;
pub mod error;
pub mod external;
pub mod metrics;
pub mod tls;

/// Code generated from `proto/externalscaler.proto`.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("externalscaler");
}

pub use error::ScalerError;
pub use external::{Scaler, TargetSettings};
pub use metrics::ScalerMetrics;
pub use proto::external_scaler_server::ExternalScalerServer;
