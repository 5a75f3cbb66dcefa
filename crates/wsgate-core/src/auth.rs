//! Who a connecting client is.
//!
//! Mode `none` (development) trusts everyone and gives anonymous users a generated id;
//! mode `jwt` verifies an HS256 or RS256 token whose `sub` is the user id. A token may carry
//! a `channels` claim: a list of channel names, or prefixes ending in `*`, that the client may
//! subscribe and publish to. Verification errors are reported by kind, never with the key.

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, errors::ErrorKind};
use serde::Deserialize;

/// An authenticated client.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: Arc<str>,
    pub channels: ChannelGrant,
}

/// Which channels a client may use.
#[derive(Debug, Clone, Default)]
pub enum ChannelGrant {
    #[default]
    All,
    Only(Arc<[String]>),
}

impl ChannelGrant {
    pub fn allows(&self, channel: &str) -> bool {
        match self {
            ChannelGrant::All => true,
            ChannelGrant::Only(list) => {
                list.iter().any(|pattern| match pattern.strip_suffix('*') {
                    Some(prefix) => channel.starts_with(prefix),
                    None => pattern == channel,
                })
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing token")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
}

#[derive(Clone)]
pub enum Authenticator {
    None,
    Jwt {
        key: Arc<DecodingKey>,
        validation: Arc<Validation>,
    },
}

impl std::fmt::Debug for Authenticator {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Authenticator::None => f.write_str("Authenticator::None"),
            Authenticator::Jwt { validation, .. } => {
                write!(f, "Authenticator::Jwt({:?})", validation.algorithms)
            }
        }
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    channels: Option<Vec<String>>,
}

impl Authenticator {
    /// HS256 with a shared secret.
    pub fn hs256(secret: &[u8]) -> Self {
        Self::jwt(DecodingKey::from_secret(secret), Algorithm::HS256)
    }

    /// RS256 with a PEM public key.
    pub fn rs256_pem(pem: &[u8]) -> Result<Self, AuthError> {
        let key = DecodingKey::from_rsa_pem(pem)
            .map_err(|e| AuthError::Invalid(format!("RS256 public key: {e}")))?;
        Ok(Self::jwt(key, Algorithm::RS256))
    }

    fn jwt(key: DecodingKey, alg: Algorithm) -> Self {
        let mut validation = Validation::new(alg);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["sub"]);
        validation.validate_aud = false;
        Authenticator::Jwt {
            key: Arc::new(key),
            validation: Arc::new(validation),
        }
    }

    /// Authenticates a connecting client from its token, if it sent one.
    pub fn authenticate(&self, token: Option<&str>) -> Result<Identity, AuthError> {
        match self {
            Authenticator::None => Ok(Identity {
                user: format!("anon-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]).into(),
                channels: ChannelGrant::All,
            }),
            Authenticator::Jwt { key, validation } => {
                let token = token.filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;
                let data =
                    decode::<Claims>(token, key, validation).map_err(|e| match e.kind() {
                        ErrorKind::ExpiredSignature => AuthError::Expired,
                        kind => AuthError::Invalid(format!("{kind:?}")),
                    })?;
                let user = data
                    .claims
                    .sub
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| AuthError::Invalid("empty sub".into()))?;
                Ok(Identity {
                    user: user.into(),
                    channels: data
                        .claims
                        .channels
                        .map_or(ChannelGrant::All, |c| ChannelGrant::Only(c.into())),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};

    fn token(claims: serde_json::Value, secret: &[u8]) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    #[test]
    fn jwt_modes() {
        let auth = Authenticator::hs256(b"s3cret");
        let exp = crate::clock::unix_ms() / 1000 + 60;
        let ok = token(
            serde_json::json!({"sub":"u1","exp":exp,"channels":["team:*","news"]}),
            b"s3cret",
        );
        let id = auth.authenticate(Some(&ok)).unwrap();
        assert_eq!(&*id.user, "u1");
        assert!(id.channels.allows("team:42") && id.channels.allows("news"));
        assert!(!id.channels.allows("news2") && !id.channels.allows("admin"));
        assert_eq!(auth.authenticate(None).unwrap_err(), AuthError::Missing);
        let expired = token(serde_json::json!({"sub":"u1","exp":1000}), b"s3cret");
        assert_eq!(
            auth.authenticate(Some(&expired)).unwrap_err(),
            AuthError::Expired
        );
        let forged = token(serde_json::json!({"sub":"u1","exp":exp}), b"other");
        assert!(matches!(
            auth.authenticate(Some(&forged)),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            auth.authenticate(Some("garbage")),
            Err(AuthError::Invalid(_))
        ));
        assert!(!format!("{auth:?}").contains("s3cret"));
        assert!(
            Authenticator::None
                .authenticate(None)
                .unwrap()
                .user
                .starts_with("anon-")
        );
    }
}
