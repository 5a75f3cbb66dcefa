//! TLS on the listener (rustls, ring provider): the certificate and key come from PEM files
//! (`tls_cert_file`, `tls_key_file`) and are reloaded on demand (SIGHUP in the binary) without
//! touching established connections: only handshakes that start after a reload use the new
//! certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;

/// The listener's current TLS configuration, swappable at run time.
pub struct TlsReloader {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: ArcSwap<ServerConfig>,
}

impl std::fmt::Debug for TlsReloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsReloader")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

impl TlsReloader {
    /// Loads the certificate chain and key; fails when either is missing or unusable.
    pub fn load(cert_file: &Path, key_file: &Path) -> anyhow::Result<Self> {
        let config = server_config(cert_file, key_file)?;
        Ok(Self {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            current: ArcSwap::from_pointee(config),
        })
    }

    /// Reads the files again. On error the previous certificate stays in use.
    pub fn reload(&self) -> anyhow::Result<()> {
        let config = server_config(&self.cert_file, &self.key_file)?;
        self.current.store(Arc::new(config));
        Ok(())
    }

    /// An acceptor with the current certificate (cheap: one `Arc`).
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }
}

fn server_config(cert_file: &Path, key_file: &Path) -> anyhow::Result<ServerConfig> {
    let certs = CertificateDer::pem_file_iter(cert_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("reading TLS certificate {}: {e}", cert_file.display()))?;
    if certs.is_empty() {
        anyhow::bail!("no certificate in {}", cert_file.display());
    }
    // The key's own error text is not echoed: it is never the key, but keep it short anyway.
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| anyhow::anyhow!("reading TLS key {}: {e}", key_file.display()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| anyhow::anyhow!("TLS certificate and key do not fit: {e}"))?;
    // The listener serves HTTP/1.1 only (WebSocket upgrades need it).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
