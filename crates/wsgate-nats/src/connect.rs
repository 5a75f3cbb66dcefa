//! [`NatsConnect`]: where the NATS server is, who we are to it, and what TLS we trust.
//!
//! Everything that can be wrong in it (an unreadable credentials file, two ways to log in)
//! fails when the node starts, not later in the background task that connects, so a typo
//! stops the node with a message instead of leaving the broker silently unavailable.
//! Credentials never reach a log line: [`NatsConnect::redacted_url`] drops the user info of
//! `nats://user:password@host`, and the secrets themselves are never printed.

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

    /// The client options these settings give (reads the credentials file now).
    pub(crate) fn options(&self) -> std::io::Result<ConnectOptions> {
        let mut options = match &self.auth {
            NatsAuth::None => ConnectOptions::new(),
            NatsAuth::UserPassword { user, password } => {
                ConnectOptions::new().user_and_password(user.clone(), password.clone())
            }
            NatsAuth::Token(token) => ConnectOptions::new().token(token.clone()),
            NatsAuth::CredentialsFile(path) => {
                let creds = std::fs::read_to_string(path).map_err(|e| {
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
        Ok(options)
    }
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
        let e = c.options().err().expect("refused");
        assert!(e.to_string().contains("/nonexistent/x.creds"), "{e}");
    }
}
