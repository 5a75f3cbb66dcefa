//! How clients authenticate on `/ws`: the `auth` settings and the [`Authenticator`] they build.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use wsgate_core::auth::Authenticator;

use crate::secret::Secret;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Development: everyone is welcome, anonymous users get a generated id.
    #[default]
    None,
    /// JWT (HS256 with `jwt_secret`, or RS256 with `jwt_public_key_file`).
    Jwt,
}

/// The `auth` table (`WSGATE_AUTH__MODE`, `WSGATE_AUTH__JWT_SECRET`, ...). Default: no
/// authentication, for a laptop run.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub mode: AuthMode,
    pub jwt_secret: Option<Secret>,
    pub jwt_public_key_file: Option<PathBuf>,
}

/// How `mode = jwt` verifies tokens; only a validated config has one.
enum JwtKey<'a> {
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

    /// The public key file wins over the shared secret when both are set.
    fn jwt_key(&self) -> anyhow::Result<JwtKey<'_>> {
        match (&self.jwt_secret, &self.jwt_public_key_file) {
            (_, Some(path)) => Ok(JwtKey::PublicKeyFile(path)),
            (Some(secret), None) => Ok(JwtKey::Secret(secret)),
            (None, None) => {
                anyhow::bail!("auth.mode = jwt needs auth.jwt_secret or auth.jwt_public_key_file")
            }
        }
    }

    /// Reads the key file, if any.
    pub fn build(&self) -> anyhow::Result<Authenticator> {
        if self.mode == AuthMode::None {
            return Ok(Authenticator::None);
        }
        match self.jwt_key()? {
            JwtKey::PublicKeyFile(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    anyhow::anyhow!("reading JWT public key {}: {e}", path.display())
                })?;
                Ok(Authenticator::rs256_pem(&pem)?)
            }
            JwtKey::Secret(secret) => Ok(Authenticator::hs256(secret.expose().as_bytes())),
        }
    }
}
