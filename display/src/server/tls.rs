//! TLS 1.3 for viewers (DESIGN.md §3.1): rustls with the ring provider, only
//! TLS 1.3, a certificate chain and its key from PEM.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::ServerError;

/// A TLS 1.3 server configuration from PEM bytes: `cert_pem` holds the
/// server's certificate first, then any intermediates; `key_pem` its
/// private key (PKCS#8, PKCS#1 or SEC1).
pub fn config_from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<ServerConfig>, ServerError> {
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ServerError::Tls(format!("certificate: {e}")))?;
    if certs.is_empty() {
        return Err(ServerError::Tls(
            "certificate: no certificate in the PEM".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| ServerError::Tls(format!("private key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ServerError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ServerError::Tls(format!("certificate and key: {e}")))?;
    Ok(Arc::new(config))
}

/// [`config_from_pem`] from the files `--tls-cert` and `--tls-key` name.
pub fn config_from_files(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, ServerError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| ServerError::Tls(format!("{}: {e}", path.display())))
    };
    config_from_pem(&read(cert)?, &read(key)?)
}
