//! `wss://`: the TLS side of a handshake, with rustls.
//!
//! The client does its own TCP connect and TLS handshake (then hands the stream to
//! tungstenite), so the trust store and the error strings are ours:
//! - **Roots.** The platform's roots, or `SSL_CERT_FILE` / `SSL_CERT_DIR` when set (they
//!   replace the platform store: the convention of OpenSSL, curl and `rustls-native-certs`,
//!   which reads them), loaded once per process; plus a per-connection CA bundle
//!   ([`TlsOptions::ca_pem`]) for private gateways.
//! - **Mutual TLS.** An optional client certificate chain and key ([`TlsOptions::client_cert_pem`]).
//! - **SNI** is the URL's host.
//! - **Errors** say what went wrong in the words operators search for: `certificate has
//!   expired`, `unknown issuer`, `hostname mismatch` ([`describe`]).

use std::fmt;
use std::io;
use std::sync::{Arc, OnceLock};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{CertificateError, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::Error;

/// Per-connection TLS settings, all optional. PEM texts are secrets only for the key, but
/// `Debug` prints none of them.
#[derive(Clone, Default, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(deny_unknown_fields)
)]
pub struct TlsOptions {
    /// Extra trusted CA certificates (PEM), added to the platform's roots.
    #[cfg_attr(feature = "serde", serde(default))]
    pub ca_pem: Option<String>,
    /// Client certificate chain (PEM) for mutual TLS; needs `client_key_pem`.
    #[cfg_attr(feature = "serde", serde(default))]
    pub client_cert_pem: Option<String>,
    /// The client certificate's private key (PEM).
    #[cfg_attr(feature = "serde", serde(default))]
    pub client_key_pem: Option<String>,
}

impl fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsOptions")
            .field("ca_pem", &self.ca_pem.is_some())
            .field("client_cert", &self.client_cert_pem.is_some())
            .finish_non_exhaustive()
    }
}

impl TlsOptions {
    /// Checks the PEM texts parse (what an API should call before accepting them).
    pub fn check(&self) -> Result<(), Error> {
        self.client_config().map(|_| ())
    }

    /// A connector for `tokio_tungstenite::connect_async_tls_with_config` (the CLI's way
    /// to reach `wss://` with the same trust as the client).
    pub fn connector(&self) -> Result<tokio_tungstenite::Connector, Error> {
        self.client_config()
            .map(tokio_tungstenite::Connector::Rustls)
    }

    /// The rustls configuration these options describe.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, Error> {
        let mut roots = platform_roots().clone();
        if let Some(pem) = &self.ca_pem {
            let certs = certs(pem, "tls.ca_pem")?;
            if certs.is_empty() {
                return Err(invalid("tls.ca_pem holds no certificate"));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| invalid(format!("tls.ca_pem: {e}")))?;
            }
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(format!("tls: {e}")))?
        .with_root_certificates(roots);
        let config = match (&self.client_cert_pem, &self.client_key_pem) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), Some(key)) => {
                let chain = certs(cert, "tls.client_cert_pem")?;
                if chain.is_empty() {
                    return Err(invalid("tls.client_cert_pem holds no certificate"));
                }
                builder
                    .with_client_auth_cert(chain, private_key(key)?)
                    .map_err(|e| invalid(format!("tls client certificate: {e}")))?
            }
            _ => {
                return Err(invalid(
                    "tls.client_cert_pem and tls.client_key_pem go together",
                ));
            }
        };
        Ok(Arc::new(config))
    }
}

fn invalid(m: impl Into<String>) -> Error {
    Error::InvalidConfig(m.into())
}

fn certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("{what}: {e}")))
}

fn private_key(pem: &str) -> Result<PrivateKeyDer<'static>, Error> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .map_err(|e| invalid(format!("tls.client_key_pem: {e}")))?
        .ok_or_else(|| invalid("tls.client_key_pem holds no private key"))
}

/// The platform's roots (or `SSL_CERT_FILE` / `SSL_CERT_DIR`), read once per process
/// (reading a certificate directory per connection attempt would be thousands of file
/// reads on a reconnect storm). Certificates that fail to load are skipped and logged.
pub fn platform_roots() -> &'static RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::warn!(error = %e, "could not load some platform root certificates");
        }
        let mut roots = RootCertStore::empty();
        let (added, ignored) = roots.add_parsable_certificates(found.certs);
        tracing::debug!(added, ignored, "platform root certificates loaded");
        roots
    })
}

/// TLS over `tcp` to `host` (the SNI name and the name the certificate must hold).
pub(crate) async fn connect(
    config: Arc<rustls::ClientConfig>,
    host: &str,
    tcp: TcpStream,
) -> Result<TlsStream<TcpStream>, Error> {
    // An IPv6 literal comes bracketed from the URL.
    let name = host.trim_start_matches('[').trim_end_matches(']');
    let server = ServerName::try_from(name.to_string())
        .map_err(|e| invalid(format!("TLS server name {name:?}: {e}")))?;
    TlsConnector::from(config)
        .connect(server, tcp)
        .await
        .map_err(|e| Error::Tls(describe(&e)))
}

/// The operator's words for a failed TLS handshake.
pub fn describe(e: &io::Error) -> String {
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return e.to_string();
    };
    match tls {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "certificate has expired".into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "certificate is not valid yet".into()
            }
            CertificateError::UnknownIssuer => "unknown issuer".into(),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "hostname mismatch".into()
            }
            CertificateError::Revoked => "certificate revoked".into(),
            other => format!("invalid certificate: {other:?}"),
        },
        other => other.to_string(),
    }
}
