//! [`NatsConnect`]: where the NATS server is, who we are to it, and what TLS we trust.
//!
//! Everything that can be wrong in it (an unreadable credentials file, two ways to log in)
//! fails when the node starts, not later in the background task that connects, so a typo
//! stops the node with a message instead of leaving the broker silently unavailable.
//! Credentials never reach a log line: the NATS client is given the URL *without* its user
//! info (the client logs the URL it dials at debug level, and ignores URL credentials
//! anyway), and `nats://user:password@host` / `nats://token@host` become the client's
//! user-and-password or token login instead; [`NatsConnect::redacted_url`] is what our own
//! log lines show.

use std::path::PathBuf;

use async_nats::ConnectOptions;
use async_nats::rustls::ClientConfig;
use wsgate_core::seams::upstream::redact_url;

/// How the node logs in to NATS (besides user and password in the URL, which NATS
/// clients also accept).
#[derive(Clone, Default)]
pub enum NatsAuth {
    /// No credentials, or those of the URL.
    #[default]
    None,
    /// `nats_user` / `nats_password`.
    UserPassword { user: String, password: String },
    /// `nats_token`.
    Token(String),
    /// `nats_credentials_file`: a `.creds` file (user JWT and NKey seed).
    CredentialsFile(PathBuf),
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::UserPassword { user, .. } => write!(f, "UserPassword({user}, <redacted>)"),
            Self::Token(_) => f.write_str("Token(<redacted>)"),
            Self::CredentialsFile(p) => write!(f, "CredentialsFile({})", p.display()),
        }
    }
}

/// The NATS connection settings.
#[derive(Clone)]
pub struct NatsConnect {
    /// `nats://host:4222`, or `tls://host:4222` to require TLS. May carry `user:password@`.
    pub url: String,
    pub auth: NatsAuth,
    /// Refuse a server that does not offer TLS (also implied by a `tls://` URL).
    pub require_tls: bool,
    /// The TLS client configuration (its trusted roots) when the platform's roots alone
    /// are not enough; `None`: the platform's roots.
    pub tls: Option<ClientConfig>,
}

impl std::fmt::Debug for NatsConnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConnect")
            .field("url", &self.redacted_url())
            .field("auth", &self.auth)
            .field("require_tls", &self.require_tls)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl NatsConnect {
    /// Plain settings for `url`: no extra credentials, the platform's roots.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            auth: NatsAuth::None,
            require_tls: false,
            tls: None,
        }
    }

    /// The URL without its user info, fit for a log line.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }

    /// The URL to dial (without user info) and the client options these settings give
    /// (reads the credentials file now).
    pub(crate) fn prepare(&self) -> std::io::Result<(String, ConnectOptions)> {
        let (url, from_url) = split_user_info(&self.url);
        let auth = match (&self.auth, from_url) {
            (auth, None) => auth.clone(),
            (NatsAuth::None, Some(auth)) => auth,
            (_, Some(_)) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "NATS credentials are given twice: in nats_url and in nats_user, nats_token \
                     or nats_credentials_file",
                ));
            }
        };
        let mut options = match auth {
            NatsAuth::None => ConnectOptions::new(),
            NatsAuth::UserPassword { user, password } => {
                ConnectOptions::new().user_and_password(user, password)
            }
            NatsAuth::Token(token) => ConnectOptions::new().token(token),
            NatsAuth::CredentialsFile(path) => {
                let creds = std::fs::read_to_string(&path).map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!("reading NATS credentials {}: {e}", path.display()),
                    )
                })?;
                ConnectOptions::new().credentials(&creds)?
            }
        };
        if self.require_tls {
            options = options.require_tls(true);
        }
        if let Some(tls) = &self.tls {
            options = options.tls_client_config(tls.clone());
        }
        Ok((url, options))
    }
}

/// `url` (one server or a comma-separated list) without user info, and the login the first
/// user info gave: `user:password@` or `token@`, percent-decoded.
fn split_user_info(url: &str) -> (String, Option<NatsAuth>) {
    let mut auth = None;
    let servers: Vec<String> = url
        .split(',')
        .map(|server| {
            let server = server.trim();
            let (scheme, rest) = server.split_once("://").unwrap_or(("", server));
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let Some((info, host)) = rest[..authority_end].rsplit_once('@') else {
                return server.to_string();
            };
            auth.get_or_insert_with(|| match info.split_once(':') {
                Some((user, password)) => NatsAuth::UserPassword {
                    user: percent_decode(user),
                    password: percent_decode(password),
                },
                None => NatsAuth::Token(percent_decode(info)),
            });
            let path = &rest[authority_end..];
            match scheme {
                "" => format!("{host}{path}"),
                scheme => format!("{scheme}://{host}{path}"),
            }
        })
        .collect();
    (servers.join(","), auth)
}

/// `%XX` escapes decoded (user info in a URL is percent-encoded); anything else kept.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| {
            std::str::from_utf8(h)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        });
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_stay_out_of_debug_and_the_logged_url() {
        let c = NatsConnect {
            auth: NatsAuth::UserPassword {
                user: "u".into(),
                password: "hunter2".into(),
            },
            ..NatsConnect::new("nats://u:hunter2@h:4222")
        };
        assert_eq!(c.redacted_url(), "nats://h:4222");
        assert!(!format!("{c:?}").contains("hunter2"), "{c:?}");
        assert!(!format!("{:?}", NatsAuth::Token("t0k".into())).contains("t0k"));
    }

    #[test]
    fn a_missing_credentials_file_fails_at_once() {
        let c = NatsConnect {
            auth: NatsAuth::CredentialsFile("/nonexistent/x.creds".into()),
            ..NatsConnect::new("nats://h")
        };
        let Err(e) = c.prepare() else {
            panic!("accepted")
        };
        assert!(e.to_string().contains("/nonexistent/x.creds"), "{e}");
    }

    #[test]
    fn user_info_leaves_the_url_and_becomes_the_login() {
        let (url, auth) = split_user_info("tls://u%40x:p%3Aw@h:4222,nats://h2:4222");
        assert_eq!(url, "tls://h:4222,nats://h2:4222");
        let Some(NatsAuth::UserPassword { user, password }) = auth else {
            panic!("{auth:?}")
        };
        assert_eq!((user.as_str(), password.as_str()), ("u@x", "p:w"));
        let (url, auth) = split_user_info("nats://s3cret@h");
        assert_eq!(url, "nats://h");
        assert!(matches!(auth, Some(NatsAuth::Token(t)) if t == "s3cret"));
        assert_eq!(split_user_info("h:4222").0, "h:4222");
        assert!(split_user_info("nats://h:4222").1.is_none());

        let twice = NatsConnect {
            auth: NatsAuth::Token("t".into()),
            ..NatsConnect::new("nats://u:p@h")
        };
        assert!(twice.prepare().is_err());
    }
}
