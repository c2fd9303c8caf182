//! TLS 1.3 to the display server (DESIGN.md §3.1): rustls with the ring
//! provider, only TLS 1.3, the server verified against the CA certificates
//! the viewer is given (`--ca`) and the name it expects.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};

/// Why a TLS configuration could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// The CA file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The PEM held no usable CA certificate.
    #[error("ca: {0}")]
    Ca(String),
    /// The server name is neither a DNS name nor an IP address.
    #[error("invalid server name {0:?}")]
    ServerName(String),
    /// rustls refused the configuration.
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// How a viewer's connection is protected.
#[derive(Debug, Clone)]
pub enum Security {
    /// TLS 1.3, the server verified as [`TlsClient`] says.
    Tls(TlsClient),
    /// Plain TCP (`--insecure-plaintext`): benchmarks and tests only.
    InsecurePlaintext,
}

/// A TLS 1.3 client configuration and the server name it verifies.
#[derive(Debug, Clone)]
pub struct TlsClient {
    pub(crate) config: Arc<ClientConfig>,
    pub(crate) server_name: ServerName<'static>,
}

impl TlsClient {
    /// Trusts the CA certificates in `ca_pem` (one or more) and expects the
    /// server's certificate to name `server_name` (a DNS name or an IP
    /// address).
    pub fn from_ca_pem(ca_pem: &[u8], server_name: &str) -> Result<Self, TlsConfigError> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            let cert = cert.map_err(|e| TlsConfigError::Ca(e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| TlsConfigError::Ca(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(TlsConfigError::Ca("no certificate in the PEM".into()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server_name = match server_name.parse::<IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(server_name.to_owned())
                .map_err(|_| TlsConfigError::ServerName(server_name.to_owned()))?,
        };
        Ok(TlsClient {
            config: Arc::new(config),
            server_name,
        })
    }

    /// [`Self::from_ca_pem`] with the CA certificates read from a file.
    pub fn from_ca_file(ca: &Path, server_name: &str) -> Result<Self, TlsConfigError> {
        let pem = std::fs::read(ca).map_err(|source| TlsConfigError::Read {
            path: ca.display().to_string(),
            source,
        })?;
        Self::from_ca_pem(&pem, server_name)
    }
}
