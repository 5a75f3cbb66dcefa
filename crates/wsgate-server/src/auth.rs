//! How clients authenticate on `/ws`: the `auth` settings and the [`Authenticator`] they build.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use wsgate_core::auth::{Authenticator, Jwks, JwksPolicy, JwtRules};
use wsgate_core::gateway::DEFAULT_TOKEN_GRACE;

use crate::secret::Secret;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Development: everyone is welcome, anonymous users get a generated id.
    #[default]
    None,
    /// JWT (HS256 with `jwt_secret`, or RS256 with `jwt_public_key_file` or `jwks_url`).
    Jwt,
}

/// The `auth` table (`WSGATE_AUTH__MODE`, `WSGATE_AUTH__JWT_SECRET`, ...). Default: no
/// authentication, for a laptop run.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub mode: AuthMode,
    pub jwt_secret: Option<Secret>,
    pub jwt_public_key_file: Option<PathBuf>,
    /// RS256 keys from a JWKS document (`https://…/.well-known/jwks.json`), picked by `kid`.
    pub jwks_url: Option<String>,
    /// Known JWKS keys are fetched again after this long.
    pub jwks_max_age_ms: u64,
    /// At most one JWKS fetch per this interval, however many unknown `kid`s arrive.
    pub jwks_min_refetch_ms: u64,
    /// Tokens without `exp` are refused; `false` lets them in (they never expire).
    pub require_exp: bool,
    /// Accepted `aud` values (a list, or one comma-separated string); empty: not checked.
    #[serde(deserialize_with = "one_or_many")]
    pub audience: Vec<String>,
    /// Accepted `iss` values (a list, or one comma-separated string); empty: not checked.
    #[serde(deserialize_with = "one_or_many")]
    pub issuer: Vec<String>,
    /// After `token_expired`, how long a connection may take to send `refresh` before it is
    /// closed with 4001.
    pub token_grace_ms: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        let jwks = JwksPolicy::default();
        Self {
            mode: AuthMode::None,
            jwt_secret: None,
            jwt_public_key_file: None,
            jwks_url: None,
            jwks_max_age_ms: jwks.max_age.as_millis() as u64,
            jwks_min_refetch_ms: jwks.min_refetch.as_millis() as u64,
            require_exp: true,
            audience: Vec::new(),
            issuer: Vec::new(),
            token_grace_ms: DEFAULT_TOKEN_GRACE.as_millis() as u64,
        }
    }
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        OneOrMany::Many(v) => v,
    })
}

/// How `mode = jwt` verifies tokens; only a validated config has one.
enum JwtKey<'a> {
    Jwks(&'a str),
    PublicKeyFile(&'a PathBuf),
    Secret(&'a Secret),
}

impl AuthConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.mode == AuthMode::Jwt {
            self.jwt_key()?;
        }
        Ok(())
    }

    /// The grace after `token_expired`.
    pub fn token_grace(&self) -> Duration {
        Duration::from_millis(self.token_grace_ms)
    }

    /// The JWKS URL wins over the public key file, which wins over the shared secret.
    fn jwt_key(&self) -> anyhow::Result<JwtKey<'_>> {
        if let Some(url) = &self.jwks_url {
            crate::jwks::check_url(url)?;
            return Ok(JwtKey::Jwks(url));
        }
        match (&self.jwt_secret, &self.jwt_public_key_file) {
            (_, Some(path)) => Ok(JwtKey::PublicKeyFile(path)),
            (Some(secret), None) => Ok(JwtKey::Secret(secret)),
            (None, None) => anyhow::bail!(
                "auth.mode = jwt needs auth.jwt_secret, auth.jwt_public_key_file or auth.jwks_url"
            ),
        }
    }

    /// Reads the key file, if any. A JWKS is fetched on first use.
    pub fn build(&self) -> anyhow::Result<Authenticator> {
        if self.mode == AuthMode::None {
            return Ok(Authenticator::None);
        }
        let rules = JwtRules {
            allow_missing_exp: !self.require_exp,
            audience: self.audience.clone(),
            issuer: self.issuer.clone(),
        };
        match self.jwt_key()? {
            JwtKey::Jwks(url) => {
                let policy = JwksPolicy {
                    max_age: Duration::from_millis(self.jwks_max_age_ms),
                    min_refetch: Duration::from_millis(self.jwks_min_refetch_ms),
                };
                let source = crate::jwks::HttpJwks::new(url)?;
                Ok(Authenticator::rs256_jwks(Jwks::new(source, policy), &rules))
            }
            JwtKey::PublicKeyFile(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    anyhow::anyhow!("reading JWT public key {}: {e}", path.display())
                })?;
                Ok(Authenticator::rs256_pem(&pem, &rules)?)
            }
            JwtKey::Secret(secret) => Ok(Authenticator::hs256(secret.expose().as_bytes(), &rules)),
        }
    }
}
