//! TLS for the gRPC server: a certificate and key, and optionally a client CA for mutual
//! TLS (what KEDA uses when a TriggerAuthentication gives `caCert`, `tlsClientCert` and
//! `tlsClientKey`). rustls with ring underneath, as everywhere in GreenScale.

use std::path::Path;

use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// Why TLS could not be set up: which file, and what was wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// Which of the files (`--tls-cert`, …).
        what: &'static str,
        /// Its path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file holds no PEM block of the kind expected.
    #[error("{what} {path} holds no PEM {kind}")]
    NotPem {
        /// Which of the files.
        what: &'static str,
        /// Its path.
        path: String,
        /// The PEM label looked for.
        kind: &'static str,
    },
}

fn read_pem(what: &'static str, path: &Path, kind: &'static str) -> Result<Vec<u8>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.display().to_string(),
        source,
    })?;
    let text = String::from_utf8_lossy(&bytes);
    if !text.contains("-----BEGIN ") || !text.contains(kind) {
        return Err(TlsError::NotPem {
            what,
            path: path.display().to_string(),
            kind,
        });
    }
    Ok(bytes)
}

/// The server's TLS settings from PEM files; with `client_ca`, only clients presenting a
/// certificate that CA signed may connect. Files are read once, at start.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<ServerTlsConfig, TlsError> {
    let cert = read_pem("--tls-cert", cert, "CERTIFICATE")?;
    let key = read_pem("--tls-key", key, "PRIVATE KEY")?;
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
    if let Some(ca) = client_ca {
        let ca = read_pem("--tls-client-ca", ca, "CERTIFICATE")?;
        config = config.client_ca_root(Certificate::from_pem(ca));
    }
    Ok(config)
}
