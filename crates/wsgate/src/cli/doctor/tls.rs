//! Doctor's TLS check for `wss://`: the server certificate's subject, issuer, expiry and
//! whether it names the host, and whether the client trusts it.
//!
//! The handshake runs with the client's trust store (platform roots, or `SSL_CERT_FILE` /
//! `SSL_CERT_DIR`) behind a verifier that records the certificate and the verdict and then
//! lets the handshake finish, so an expired or mis-named certificate is still shown (this
//! connection only looks; nothing is sent on it).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::ring::default_provider;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{self, ClientConfig, DigitallySignedStruct, SignatureScheme};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::CheckResult;
use crate::cli::ms;

/// A certificate this close to its end is a warning.
const EXPIRY_WARNING_DAYS: i64 = 14;

const RUNBOOK: &str = "connection-drops-immediately-or-proxy-timeouts";

/// What the verifier saw.
#[derive(Default)]
struct Seen {
    cert: Option<CertificateDer<'static>>,
    verdict: Option<Result<(), rustls::Error>>,
}

#[derive(Debug)]
struct Recording {
    inner: Arc<WebPkiServerVerifier>,
    seen: Arc<Mutex<Seen>>,
}

impl std::fmt::Debug for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Seen")
    }
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            .map(drop);
        let mut seen = self.seen.lock();
        seen.cert = Some(end_entity.clone().into_owned());
        seen.verdict = Some(verdict);
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The TLS check against `host` at `addrs`.
pub async fn check_tls(host: &str, addrs: &[SocketAddr], timeout: Duration) -> CheckResult {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let provider = Arc::new(default_provider());
    let roots = Arc::new(wsgate_client::platform_roots().clone());
    let inner = match WebPkiServerVerifier::builder_with_provider(roots, provider.clone()).build() {
        Ok(v) => v,
        Err(e) => {
            return CheckResult::fail("tls", format!("no trusted root certificates: {e}")).fix(
                "install the CA certificates package, or point SSL_CERT_FILE at a PEM bundle",
            );
        }
    };
    let verifier = Arc::new(Recording {
        inner,
        seen: seen.clone(),
    });
    let config =
        match ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions() {
            Ok(b) => b
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth(),
            Err(e) => return CheckResult::fail("tls", e.to_string()),
        };
    let Ok(name) = ServerName::try_from(host.to_string()) else {
        return CheckResult::fail("tls", format!("`{host}` is not a valid TLS server name"));
    };
    let start = std::time::Instant::now();
    let handshake = async {
        let tcp = TcpStream::connect(addrs).await?;
        TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
    };
    let outcome = tokio::time::timeout(timeout, handshake).await;
    let took = start.elapsed();
    let seen = std::mem::take(&mut *seen.lock());
    let Some(cert) = seen.cert else {
        let why = match outcome {
            Err(_) => format!("no TLS handshake within {timeout:?}"),
            Ok(Err(e)) => wsgate_client::describe_tls_error(&e),
            Ok(Ok(_)) => "the server sent no certificate".into(),
        };
        return CheckResult::fail("tls", format!("TLS handshake failed: {why}"))
            .cause("the port does not speak TLS (plain ws:// port?), or a proxy refused the handshake")
            .fix("check the URL's scheme and port; `openssl s_client -connect HOST:PORT -servername HOST` shows the server's side")
            .runbook(RUNBOOK);
    };
    let facts = match Facts::of(&cert, host) {
        Ok(f) => f,
        Err(e) => return CheckResult::fail("tls", format!("unreadable server certificate: {e}")),
    };
    let detail = facts.describe();
    match seen.verdict.unwrap_or(Ok(())) {
        Err(e) => {
            let io = std::io::Error::new(std::io::ErrorKind::InvalidData, e);
            let why = wsgate_client::describe_tls_error(&io);
            CheckResult::fail("tls", format!("{why}: {detail}"))
                .cause(match why.as_str() {
                    "certificate has expired" => "the server's certificate is past its end date",
                    "unknown issuer" => "the certificate's CA is not trusted here (private CA, or a missing intermediate)",
                    "hostname mismatch" => "the certificate does not name the host in the URL",
                    _ => "the client rejects the server's certificate",
                })
                .fix("renew or reissue the certificate; for a private CA set SSL_CERT_FILE (or the connection's tls.ca_pem)")
                .runbook(RUNBOOK)
        }
        Ok(()) if facts.days_left < EXPIRY_WARNING_DAYS => CheckResult::warn(
            "tls",
            format!("expires in {} day(s): {detail}", facts.days_left),
        )
        .fix("renew the certificate before it expires"),
        Ok(()) => CheckResult::pass(
            "tls",
            format!("trusted, handshake in {}: {detail}", ms(took)),
        ),
    }
}

/// What the check reports about a certificate.
struct Facts {
    subject: String,
    issuer: String,
    not_after: String,
    days_left: i64,
    hostname_match: bool,
}

impl Facts {
    fn of(der: &CertificateDer<'_>, host: &str) -> Result<Self, String> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
        let not_after = cert.validity().not_after;
        let now = x509_parser::time::ASN1Time::now();
        let days_left = (not_after.timestamp() - now.timestamp()).div_euclid(86_400);
        let mut dns = Vec::new();
        let mut ips = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for n in &san.value.general_names {
                match n {
                    GeneralName::DNSName(d) => dns.push(d.to_string()),
                    GeneralName::IPAddress(b) => ips.push(b.to_vec()),
                    _ => {}
                }
            }
        }
        Ok(Self {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            not_after: not_after.to_string(),
            days_left,
            hostname_match: names_host(&dns, &ips, host),
        })
    }

    fn describe(&self) -> String {
        format!(
            "subject {}; issuer {}; expires {} ({} day(s) left); hostname {}",
            self.subject,
            self.issuer,
            self.not_after,
            self.days_left,
            if self.hostname_match {
                "matches"
            } else {
                "does NOT match"
            }
        )
    }
}

/// Does a certificate with these subject alternative names name `host`? (`*.` wildcards
/// cover one leftmost label.)
fn names_host(dns: &[String], ips: &[Vec<u8>], host: &str) -> bool {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        let bytes = match ip {
            std::net::IpAddr::V4(v) => v.octets().to_vec(),
            std::net::IpAddr::V6(v) => v.octets().to_vec(),
        };
        return ips.contains(&bytes);
    }
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    dns.iter().any(|name| {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        match name.strip_prefix("*.") {
            Some(rest) => host
                .split_once('.')
                .is_some_and(|(label, tail)| !label.is_empty() && tail == rest),
            None => name == host,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names() {
        let dns = vec!["*.example.com".to_string(), "api.exchange.io".to_string()];
        assert!(names_host(&dns, &[], "ws.example.com"));
        assert!(!names_host(&dns, &[], "a.b.example.com"));
        assert!(!names_host(&dns, &[], "example.com"));
        assert!(names_host(&dns, &[], "API.exchange.io"));
        assert!(names_host(&[], &[vec![127, 0, 0, 1]], "127.0.0.1"));
        assert!(!names_host(&dns, &[], "127.0.0.1"));
    }
}
