//! Whom the node trusts when it dials out over TLS (`rediss://`, NATS over TLS).
//!
//! By default the platform's roots, as the engines load them themselves. A deployment with
//! its own CA (an in-cluster Redis or NATS with a self-signed issuer) names it in
//! `redis_ca_file` / `nats_ca_file`; the node then trusts that CA *in addition to* the
//! platform's roots, so moving a server to a public certificate later needs no change.
//! One [`TrustBundle`] serves both engines: the Redis client takes PEM, NATS a rustls
//! client configuration.

use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

/// The platform's roots plus a deployment's own CA certificates.
pub struct TrustBundle(Vec<CertificateDer<'static>>);

impl TrustBundle {
    /// The platform's roots and every certificate of the PEM file `ca_file`. Fails when the
    /// file is unreadable or holds no certificate (a wrong path must not pass silently).
    pub fn with_ca_file(ca_file: &Path) -> anyhow::Result<Self> {
        let what = || format!("CA file {}", ca_file.display());
        let own = CertificateDer::pem_file_iter(ca_file)
            .map_err(|e| anyhow::anyhow!("{}: {e}", what()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("{}: {e}", what()))?;
        if own.is_empty() {
            anyhow::bail!("{}: no PEM certificate in it", what());
        }
        // A platform without a readable store still trusts the named CA.
        let mut certs = rustls_native_certs::load_native_certs().certs;
        certs.extend(own);
        Ok(Self(certs))
    }

    /// Every certificate as PEM, for the Redis client.
    pub fn pem(&self) -> Vec<u8> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut out = String::new();
        for cert in &self.0 {
            out.push_str("-----BEGIN CERTIFICATE-----\n");
            let text = b64.encode(cert.as_ref());
            for line in text.as_bytes().chunks(64) {
                out.push_str(std::str::from_utf8(line).unwrap_or_default());
                out.push('\n');
            }
            out.push_str("-----END CERTIFICATE-----\n");
        }
        out.into_bytes()
    }

    /// A rustls client configuration trusting these roots (ring, as the listener uses),
    /// for NATS.
    pub fn client_config(&self) -> anyhow::Result<ClientConfig> {
        let mut roots = RootCertStore::empty();
        // Platform stores may hold certificates rustls cannot parse: skip those only.
        roots.add_parsable_certificates(self.0.iter().cloned());
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        Ok(ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_is_added_to_the_platform_roots_and_survives_pem() {
        let dir = std::env::temp_dir().join(format!("wsgate-trust-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = TrustBundle::with_ca_file(&dir.join("nope.pem"));
        assert!(missing.err().unwrap().to_string().contains("nope.pem"));
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        assert!(TrustBundle::with_ca_file(&empty).is_err());

        // Any DER bytes round-trip through PEM; the bundle ends with the file's certificate.
        let ca = dir.join("ca.pem");
        let der = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01]);
        let one = TrustBundle(vec![der.clone()]);
        std::fs::write(&ca, one.pem()).unwrap();
        let bundle = TrustBundle::with_ca_file(&ca).unwrap();
        assert_eq!(bundle.0.last(), Some(&der));
        let back: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bundle.pem())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(back, bundle.0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
