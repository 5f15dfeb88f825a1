//! TLS to PostgreSQL over TCP: one rustls configuration per upstream, made from its `sslmode`,
//! `sslrootcert`, `sslcert` and `sslkey` the way libpq reads them. `require` encrypts without
//! checking who answers (libpq's meaning, for servers with self-signed certificates) unless
//! `sslrootcert` is set, when it checks like `verify-ca`; `verify-ca` accepts only a certificate
//! signed by an authority of `sslrootcert`; `verify-full` also wants it to name the host. With
//! `sslcert` and `sslkey` the daemon shows a client certificate (PostgreSQL's `cert`
//! authentication, or `clientcert=verify-full` in `pg_hba.conf`).
//!
//! tokio-postgres negotiates TLS as usual (`SSLRequest`, then [`Upgrade`] when the server says
//! yes), but the handshake upgrades the daemon's socket in place (`pg::socket`) instead of
//! wrapping the stream tokio-postgres sees, so grouped pipelines and coalesced statements write
//! their plaintext messages into the same TLS session. The session's channel binding
//! (`tls-server-end-point`, from the server certificate) goes to tokio-postgres for
//! SCRAM-SHA-256-PLUS.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use const_oid::db::rfc5912::{
    ECDSA_WITH_SHA_256, ECDSA_WITH_SHA_384, ECDSA_WITH_SHA_512, SHA_1_WITH_RSA_ENCRYPTION,
    SHA_256_WITH_RSA_ENCRYPTION, SHA_384_WITH_RSA_ENCRYPTION, SHA_512_WITH_RSA_ENCRYPTION,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{ring, verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, TlsConnect, TlsStream};
use x509_cert::der::Decode;

use crate::config::{SslMode, UpstreamConfig};
use crate::pg::socket::PgStream;

/// Why an upstream's TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("sslmode = \"{0}\" needs sslrootcert: the certificate authorities to trust")]
    NoRootCert(&'static str),
    #[error("cannot read {key} {path}: {reason}")]
    Unreadable {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{key} {path} holds no PEM certificate")]
    NoCertificates { key: &'static str, path: PathBuf },
    #[error("sslcert and sslkey go together: set both or neither")]
    HalfClientCert,
    #[error("sslcert and sslkey cannot be used together: {0}")]
    ClientCert(rustls::Error),
    #[error("{0:?} is not a host name or address a TLS certificate can name")]
    BadHost(String),
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
}

impl TlsError {
    /// The upstream setting the error is about.
    pub fn key(&self) -> &'static str {
        match self {
            TlsError::Unreadable { key, .. } | TlsError::NoCertificates { key, .. } => key,
            TlsError::HalfClientCert | TlsError::ClientCert(_) => "sslcert",
            TlsError::BadHost(_) => "host",
            TlsError::NoRootCert(_) | TlsError::Rustls(_) => "sslmode",
        }
    }
}

/// An upstream's TLS settings, ready to connect with.
#[derive(Clone)]
pub struct Tls {
    connector: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
}

/// The TLS settings of `up`, or `None` when it talks to PostgreSQL in the clear (`disable`, or
/// a Unix-socket directory, where libpq ignores `sslmode` too). Reads the PEM files it names.
pub fn connector(up: &UpstreamConfig) -> Result<Option<Tls>, TlsError> {
    if up.sslmode == SslMode::Disable || up.is_socket_dir() {
        return Ok(None);
    }
    let provider = Arc::new(ring::default_provider());
    let roots = match (up.sslmode, up.sslrootcert.as_deref()) {
        (_, Some(path)) => Some(Arc::new(load_roots(path)?)),
        (SslMode::VerifyFull, None) => return Err(TlsError::NoRootCert("verify-full")),
        (SslMode::VerifyCa, None) => return Err(TlsError::NoRootCert("verify-ca")),
        _ => None,
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match (up.sslmode, roots) {
        (SslMode::VerifyFull, Some(roots)) => builder.with_root_certificates(roots),
        (_, roots) => {
            let chain = match roots {
                Some(roots) => Some(
                    WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                        .build()
                        .map_err(|e| rustls::Error::General(e.to_string()))?,
                ),
                None => None,
            };
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Lenient { chain, provider }))
        }
    };
    let config = match (&up.sslcert, &up.sslkey) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(load_certs("sslcert", cert)?, load_key(key)?)
            .map_err(TlsError::ClientCert)?,
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(TlsError::HalfClientCert),
    };
    let server_name =
        ServerName::try_from(up.host.clone()).map_err(|_| TlsError::BadHost(up.host.clone()))?;
    Ok(Some(Tls {
        connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        server_name,
    }))
}

impl Tls {
    /// What tokio-postgres calls once the server has agreed to TLS on one new connection.
    pub fn upgrade(&self) -> Upgrade {
        Upgrade(self.clone())
    }
}

/// Upgrades one connection's socket to TLS in place (see the module docs).
pub struct Upgrade(Tls);

impl TlsConnect<PgStream> for Upgrade {
    type Stream = Encrypted;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Encrypted>> + Send>>;

    fn connect(self, stream: PgStream) -> Self::Future {
        Box::pin(async move {
            let Tls {
                connector,
                server_name,
            } = self.0;
            let certificate = stream.upgrade(&connector, server_name).await?;
            let binding = certificate.as_ref().and_then(server_end_point);
            Ok(Encrypted { stream, binding })
        })
    }
}

/// The [`PgStream`] tokio-postgres uses once its socket runs TLS, with the session's channel
/// binding.
pub struct Encrypted {
    stream: PgStream,
    binding: Option<Vec<u8>>,
}

impl TlsStream for Encrypted {
    fn channel_binding(&self) -> ChannelBinding {
        match &self.binding {
            Some(hash) => ChannelBinding::tls_server_end_point(hash.clone()),
            None => ChannelBinding::none(),
        }
    }
}

impl AsyncRead for Encrypted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Encrypted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// `tls-server-end-point` channel binding data (RFC 5929): the server certificate hashed with
/// the hash of its signature algorithm, SHA-256 where that is SHA-1. `None` for an algorithm
/// without one hash (Ed25519, RSA-PSS): then SCRAM runs without channel binding.
fn server_end_point(certificate: &CertificateDer<'_>) -> Option<Vec<u8>> {
    let cert = x509_cert::Certificate::from_der(certificate).ok()?;
    let oid = cert.signature_algorithm.oid;
    let algorithm = if [
        SHA_1_WITH_RSA_ENCRYPTION,
        SHA_256_WITH_RSA_ENCRYPTION,
        ECDSA_WITH_SHA_256,
    ]
    .contains(&oid)
    {
        &::ring::digest::SHA256
    } else if [SHA_384_WITH_RSA_ENCRYPTION, ECDSA_WITH_SHA_384].contains(&oid) {
        &::ring::digest::SHA384
    } else if [SHA_512_WITH_RSA_ENCRYPTION, ECDSA_WITH_SHA_512].contains(&oid) {
        &::ring::digest::SHA512
    } else {
        return None;
    };
    Some(
        ::ring::digest::digest(algorithm, certificate.as_ref())
            .as_ref()
            .to_vec(),
    )
}

/// A digest of the contents of the TLS files `up` uses (0 when it uses none), to notice
/// rotated certificates on reload.
pub fn files_digest(up: &UpstreamConfig) -> Result<u64, TlsError> {
    use std::hash::{Hash, Hasher};
    if up.sslmode == SslMode::Disable || up.is_socket_dir() {
        return Ok(0);
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let files = [
        ("sslrootcert", &up.sslrootcert),
        ("sslcert", &up.sslcert),
        ("sslkey", &up.sslkey),
    ];
    let mut any = false;
    for (key, path) in files {
        if let Some(path) = path {
            std::fs::read(path)
                .map_err(|e| unreadable(key, path, e))?
                .hash(&mut hasher);
            any = true;
        }
    }
    Ok(if any { hasher.finish() } else { 0 })
}

/// The certificate authorities of a PEM file.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs("sslrootcert", path)? {
        roots
            .add(cert)
            .map_err(|e| unreadable("sslrootcert", path, e))?;
    }
    Ok(roots)
}

/// The certificates of a PEM file (at least one).
fn load_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| unreadable(key, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unreadable(key, path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificates {
            key,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| unreadable("sslkey", path, e))
}

fn unreadable(key: &'static str, path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::Unreadable {
        key,
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// The server check of every mode but `verify-full` (which is rustls' own). With `chain`
/// (`verify-ca`, and `require` with `sslrootcert`) the certificate must lead to a trusted
/// authority, whatever host name it names; without (`require`, `prefer`) whoever answers is
/// accepted. The handshake's signatures are checked either way, so the session keys belong to
/// the certificate shown.
#[derive(Debug)]
struct Lenient {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        // The name is checked last, once the chain is known to be good.
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
