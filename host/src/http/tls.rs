//! TLS of the pooled client: which servers it trusts, and what a plugin is
//! told when a handshake fails.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use wasmtime_wasi_http::Error as HttpError;

/// The client's TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// `ca_file` could not be read.
    #[error("http.ca_file {path}: {error}")]
    ReadCa {
        /// The file.
        path: PathBuf,
        /// The I/O error (in the message, so not a `source` too).
        error: std::io::Error,
    },
    /// `ca_file` holds something that is not a usable PEM certificate.
    #[error("http.ca_file {path}: {reason}")]
    BadCa {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS setup: {0}")]
    Setup(rustls::Error),
}

/// Client settings trusting the bundled Mozilla roots (webpki-roots) and
/// every certificate of `ca_file`; no ALPN yet (the connector sets it).
pub fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|error| TlsError::ReadCa {
            path: path.to_owned(),
            error,
        })?;
        let bad = |reason: String| TlsError::BadCa {
            path: path.to_owned(),
            reason,
        };
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| bad(format!("not PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| bad(format!("not a CA certificate: {e}")))?;
            added += 1;
        }
        if added == 0 {
            return Err(bad("no `BEGIN CERTIFICATE` block in it".into()));
        }
    }
    // ring, named explicitly: the process-wide default provider is
    // ambiguous (and panics) if another crate enables aws-lc-rs too.
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(TlsError::Setup)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(config)
}

/// The `wasi:http` error code for a connection that failed in TLS, if it did.
pub fn error_code(err: &(dyn std::error::Error + 'static)) -> Option<HttpError> {
    let tls = find_rustls(err)?;
    Some(match tls {
        rustls::Error::InvalidCertificate(_)
        | rustls::Error::NoCertificatesPresented
        | rustls::Error::UnsupportedNameType => HttpError::TlsCertificateError,
        rustls::Error::AlertReceived(alert) => HttpError::TlsAlertReceived {
            alert_id: Some(u8::from(*alert)),
            alert_message: Some(format!("{alert:?}")),
        },
        _ => HttpError::TlsProtocolError,
    })
}

/// The rustls error in a chain. `io::Error::source` skips the error it
/// wraps, and hyper-rustls wraps tokio-rustls' `io::Error` in another, so
/// the wrapped errors are looked into explicitly.
fn find_rustls<'a>(mut err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    loop {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        err = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => inner as &(dyn std::error::Error + 'static),
            None => err.source()?,
        };
    }
}
