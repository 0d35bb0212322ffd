//! TLS on the server's port, with rustls: the certificate chain and key come from PEM files
//! (`tls_cert`, `tls_key`) and can be read again while the server runs
//! ([`Server::reload_tls`](super::Server::reload_tls), SIGHUP for the binary). Each accepted
//! socket takes the configuration current at its accept, so a reload changes what new
//! handshakes see and leaves open connections as they are.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use thiserror::Error;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// Why the certificate or key could not be used.
#[derive(Debug, Error)]
#[error("TLS: {path}: {reason}")]
pub struct TlsError {
    /// The file at fault.
    pub path: PathBuf,
    /// What is wrong with it.
    pub reason: String,
}

/// The files and the acceptor made from them.
pub(crate) struct Tls {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<TlsAcceptor>,
}

impl Tls {
    /// Reads both files; fails if either is missing, unreadable or not what it should be.
    pub(crate) fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let acceptor = acceptor(cert, key)?;
        Ok(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new(acceptor),
        })
    }

    /// The acceptor for a socket accepted now.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads the files again; on an error the current certificate stays.
    pub(crate) fn reload(&self) -> Result<(), TlsError> {
        let fresh = acceptor(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }
}

fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let bad = |path: &Path| {
        let path = path.to_owned();
        move |e: &dyn std::fmt::Display| TlsError {
            path: path.clone(),
            reason: e.to_string(),
        }
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad(cert)(&e))?;
    if chain.is_empty() {
        return Err(bad(cert)(&"no CERTIFICATE block in the file"));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key)(&e))?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(cert)(&e))?
        .with_no_client_auth()
        // Checks that the key belongs to the certificate.
        .with_single_cert(chain, private)
        .map_err(|e| bad(key)(&e))?;
    // HTTP/1.1 only (WebSocket upgrades need it); a client offering h2 alone is refused.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
