//! TLS to PostgreSQL over TCP: one rustls connector per upstream, made from its `sslmode` and
//! `sslrootcert` the way libpq reads them. `require` encrypts without checking who answers
//! (libpq's meaning, for servers with self-signed certificates); `verify-full` accepts only a
//! certificate signed by an authority of `sslrootcert` that names the configured host.
//!
//! Under TLS the daemon cannot write PostgreSQL messages into the socket itself, so grouped
//! pipelines and coalesced statements run through tokio-postgres instead (`pg::burst`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::{SslMode, UpstreamConfig};

/// Why an upstream's TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("sslmode = \"verify-full\" needs sslrootcert: the certificate authorities to trust")]
    NoRootCert,
    #[error("cannot read sslrootcert {path}: {reason}")]
    RootCert { path: PathBuf, reason: String },
    #[error("sslrootcert {path} holds no PEM certificate")]
    NoCertificates { path: PathBuf },
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The connector for `up`, or `None` when it talks to PostgreSQL in the clear (`disable`, or a
/// Unix-socket directory, where libpq ignores `sslmode` too).
pub fn connector(up: &UpstreamConfig) -> Result<Option<MakeRustlsConnect>, TlsError> {
    if up.sslmode == SslMode::Disable || up.is_socket_dir() {
        return Ok(None);
    }
    let provider = Arc::new(ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let config = match up.sslmode {
        SslMode::VerifyFull => {
            let path = up.sslrootcert.as_deref().ok_or(TlsError::NoRootCert)?;
            builder
                .with_root_certificates(load_roots(path)?)
                .with_no_client_auth()
        }
        _ => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
            .with_no_client_auth(),
    };
    Ok(Some(MakeRustlsConnect::new(config)))
}

/// The certificate authorities of a PEM file.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let unreadable = |reason: String| TlsError::RootCert {
        path: path.to_path_buf(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| unreadable(e.to_string()))? {
        roots
            .add(cert.map_err(|e| unreadable(e.to_string()))?)
            .map_err(|e| unreadable(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoCertificates {
            path: path.to_path_buf(),
        });
    }
    Ok(roots)
}

/// `require` and `prefer`: the connection is encrypted, but whoever answers is accepted (the
/// handshake's signatures are still checked, so the session keys belong to that certificate).
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
