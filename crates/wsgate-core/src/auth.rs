//! Who a connecting client is.
//!
//! Mode `none` (development) trusts everyone and gives anonymous users a generated id;
//! mode `jwt` verifies an HS256 or RS256 token whose `sub` is the user id. RS256 keys come
//! from a PEM file or from a JWKS URL ([`Jwks`]: cached, fetched again for an unknown `kid`
//! at most once per `min_refetch`). A token must carry `exp` unless
//! [`JwtRules::allow_missing_exp`] is on; `aud` and `iss` are checked when configured. A token
//! may carry a `channels` claim: a list of channel names, or prefixes ending in `*`, that
//! the client may subscribe and publish to. A `subs` claim lists channels (exact names) the
//! connection is subscribed to at connect without asking (server-side subscriptions, see
//! `gateway::server_subs`); it grants nothing else. Verification errors are reported by
//! kind, never with the key.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
pub use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header, errors::ErrorKind};
use parking_lot::RwLock;
use serde::Deserialize;
use tokio::time::Instant;

/// An authenticated client.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: Arc<str>,
    pub channels: ChannelGrant,
    /// The token's `subs` claim: channels subscribed at connect, server-side.
    pub subscribe: Arc<[Arc<str>]>,
    /// The token's `exp` (Unix seconds); `None` without a token or without the claim.
    pub expires_at: Option<u64>,
}

/// Which channels a client may use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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

impl AuthError {
    /// The reason label of metrics and logs, and the code of an error frame.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "auth_missing",
            Self::Expired => "auth_expired",
            Self::Invalid(_) => "auth_invalid",
        }
    }
}

/// The claims rules of `mode = jwt` beside the signature. The default is the strict one:
/// `exp` required, `aud` and `iss` not checked.
#[derive(Debug, Clone, Default)]
pub struct JwtRules {
    /// A token without `exp` is let in, and never expires. Off (default): it is refused.
    pub allow_missing_exp: bool,
    /// When not empty, `aud` must name one of these.
    pub audience: Vec<String>,
    /// When not empty, `iss` must be one of these.
    pub issuer: Vec<String>,
}

/// Where a JWKS comes from (the server fetches it over HTTP; tests hand one in).
#[async_trait]
pub trait JwksSource: Send + Sync + 'static {
    /// The current key set; the error is for the log (never holds key material).
    async fn fetch(&self) -> Result<JwkSet, String>;
}

/// How often a [`Jwks`] may fetch.
#[derive(Debug, Clone, Copy)]
pub struct JwksPolicy {
    /// Known keys are fetched again after this long (a failed fetch keeps the old ones).
    pub max_age: Duration,
    /// At most one fetch per this interval, whatever unknown `kid`s arrive.
    pub min_refetch: Duration,
}

/// Default [`JwksPolicy::max_age`].
pub const DEFAULT_JWKS_MAX_AGE: Duration = Duration::from_secs(600);
/// Default [`JwksPolicy::min_refetch`].
pub const DEFAULT_JWKS_MIN_REFETCH: Duration = Duration::from_secs(10);

impl Default for JwksPolicy {
    fn default() -> Self {
        Self {
            max_age: DEFAULT_JWKS_MAX_AGE,
            min_refetch: DEFAULT_JWKS_MIN_REFETCH,
        }
    }
}

#[derive(Default)]
struct KeyCache {
    by_kid: HashMap<String, Arc<DecodingKey>>,
    /// The set's only key, for tokens without `kid`.
    only: Option<Arc<DecodingKey>>,
    fetched_at: Option<Instant>,
}

/// RS256 keys from a JWKS, cached. Fetches are single-flight and rate-bounded.
pub struct Jwks {
    source: Box<dyn JwksSource>,
    policy: JwksPolicy,
    cache: RwLock<KeyCache>,
    /// Held while fetching; holds the time of the last attempt.
    fetching: tokio::sync::Mutex<Option<Instant>>,
}

impl Jwks {
    pub fn new(source: impl JwksSource, policy: JwksPolicy) -> Self {
        Self {
            source: Box::new(source),
            policy,
            cache: RwLock::new(KeyCache::default()),
            fetching: tokio::sync::Mutex::new(None),
        }
    }

    fn cached(&self, kid: Option<&str>) -> (Option<Arc<DecodingKey>>, bool) {
        let cache = self.cache.read();
        let key = match kid {
            Some(kid) => cache.by_kid.get(kid).cloned(),
            None => cache.only.clone(),
        };
        let fresh = cache
            .fetched_at
            .is_some_and(|t| t.elapsed() < self.policy.max_age);
        (key, fresh)
    }

    /// The key for `kid`: from the cache, or after a fetch when it is unknown or old and
    /// the last fetch is at least `min_refetch` ago.
    pub async fn key(&self, kid: Option<&str>) -> Result<Arc<DecodingKey>, AuthError> {
        let unknown = || match kid {
            Some(_) => AuthError::Invalid("unknown key id".into()),
            None => AuthError::Invalid("token has no kid".into()),
        };
        let mut last = match self.cached(kid) {
            (Some(key), true) => return Ok(key),
            // Known but old: while another task fetches, the old key serves.
            (Some(key), false) => match self.fetching.try_lock() {
                Ok(last) => last,
                Err(_) => return Ok(key),
            },
            (None, _) => self.fetching.lock().await,
        };
        // Somebody else may have fetched while this waited.
        let (key, fresh) = self.cached(kid);
        if let (Some(key), true) = (&key, fresh) {
            return Ok(key.clone());
        }
        if last.is_some_and(|t| t.elapsed() < self.policy.min_refetch) {
            return key.ok_or_else(unknown);
        }
        *last = Some(Instant::now());
        match self.source.fetch().await {
            Ok(set) => self.store(&set),
            Err(e) => tracing::warn!(error = %e, "JWKS fetch failed; keeping the cached keys"),
        }
        drop(last);
        self.cached(kid).0.ok_or_else(unknown)
    }

    fn store(&self, set: &JwkSet) {
        let mut by_kid = HashMap::new();
        let mut all = Vec::new();
        for jwk in &set.keys {
            match DecodingKey::from_jwk(jwk) {
                Ok(key) => {
                    let key = Arc::new(key);
                    if let Some(kid) = &jwk.common.key_id {
                        by_kid.insert(kid.clone(), key.clone());
                    }
                    all.push(key);
                }
                Err(e) => tracing::warn!(kid = ?jwk.common.key_id, error = %e, "JWKS key skipped"),
            }
        }
        tracing::debug!(keys = all.len(), "JWKS fetched");
        let only = (all.len() == 1).then(|| all[0].clone());
        *self.cache.write() = KeyCache {
            by_kid,
            only,
            fetched_at: Some(Instant::now()),
        };
    }
}

enum Keys {
    Static(DecodingKey),
    Jwks(Jwks),
}

pub struct Jwt {
    keys: Keys,
    validation: Validation,
}

#[derive(Clone)]
pub enum Authenticator {
    None,
    Jwt(Arc<Jwt>),
}

impl std::fmt::Debug for Authenticator {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Authenticator::None => f.write_str("Authenticator::None"),
            Authenticator::Jwt(jwt) => {
                let source = match jwt.keys {
                    Keys::Static(_) => "static",
                    Keys::Jwks(_) => "jwks",
                };
                write!(
                    f,
                    "Authenticator::Jwt({:?}, {source})",
                    jwt.validation.algorithms
                )
            }
        }
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    channels: Option<Vec<String>>,
    subs: Option<Vec<String>>,
    exp: Option<u64>,
}

/// Channels of a `subs` claim past this many make the token invalid: each costs a
/// subscription, and a connection has at most a few hundred.
pub const MAX_SUBS_CLAIM: usize = 1024;

/// The `subs` claim, checked: channel names by the one rule, a bounded count.
fn subs_claim(subs: Option<Vec<String>>) -> Result<Arc<[Arc<str>]>, AuthError> {
    let subs = subs.unwrap_or_default();
    if subs.len() > MAX_SUBS_CLAIM {
        return Err(AuthError::Invalid(format!(
            "`subs` lists more than {MAX_SUBS_CLAIM} channels"
        )));
    }
    subs.into_iter()
        .map(|c| {
            crate::protocol::check_name(&c, crate::protocol::MAX_CHANNEL_LEN)
                .map(|()| Arc::from(c))
                .map_err(|_| AuthError::Invalid("`subs` holds an invalid channel name".into()))
        })
        .collect()
}

impl Authenticator {
    /// HS256 with a shared secret.
    pub fn hs256(secret: &[u8], rules: &JwtRules) -> Self {
        Self::jwt(
            Keys::Static(DecodingKey::from_secret(secret)),
            Algorithm::HS256,
            rules,
        )
    }

    /// RS256 with a PEM public key.
    pub fn rs256_pem(pem: &[u8], rules: &JwtRules) -> Result<Self, AuthError> {
        let key = DecodingKey::from_rsa_pem(pem)
            .map_err(|e| AuthError::Invalid(format!("RS256 public key: {e}")))?;
        Ok(Self::jwt(Keys::Static(key), Algorithm::RS256, rules))
    }

    /// RS256 with the keys of a JWKS, picked by the token's `kid`.
    pub fn rs256_jwks(jwks: Jwks, rules: &JwtRules) -> Self {
        Self::jwt(Keys::Jwks(jwks), Algorithm::RS256, rules)
    }

    fn jwt(keys: Keys, alg: Algorithm, rules: &JwtRules) -> Self {
        let mut validation = Validation::new(alg);
        validation.leeway = 5;
        let mut required = vec!["sub"];
        if !rules.allow_missing_exp {
            required.push("exp");
        }
        validation.validate_aud = !rules.audience.is_empty();
        if validation.validate_aud {
            validation.set_audience(&rules.audience);
            required.push("aud");
        }
        if !rules.issuer.is_empty() {
            validation.set_issuer(&rules.issuer);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        Authenticator::Jwt(Arc::new(Jwt { keys, validation }))
    }

    /// Authenticates a connecting client from its token, if it sent one.
    pub async fn authenticate(&self, token: Option<&str>) -> Result<Identity, AuthError> {
        let jwt = match self {
            Authenticator::None => {
                return Ok(Identity {
                    user: format!("anon-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
                        .into(),
                    channels: ChannelGrant::All,
                    subscribe: Arc::default(),
                    expires_at: None,
                });
            }
            Authenticator::Jwt(jwt) => jwt,
        };
        let token = token.filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;
        let kind = |e: jsonwebtoken::errors::Error| match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::MissingRequiredClaim(claim) => {
                AuthError::Invalid(format!("missing claim `{claim}`"))
            }
            kind => AuthError::Invalid(format!("{kind:?}")),
        };
        let jwks_key;
        let key = match &jwt.keys {
            Keys::Static(key) => key,
            Keys::Jwks(jwks) => {
                let header = decode_header(token).map_err(kind)?;
                jwks_key = jwks.key(header.kid.as_deref()).await?;
                &jwks_key
            }
        };
        let data = decode::<Claims>(token, key, &jwt.validation).map_err(kind)?;
        let user = data
            .claims
            .sub
            .filter(|s| !s.is_empty())
            .ok_or_else(|| AuthError::Invalid("empty sub".into()))?;
        let subscribe = subs_claim(data.claims.subs)?;
        Ok(Identity {
            user: user.into(),
            subscribe,
            channels: data
                .claims
                .channels
                .map_or(ChannelGrant::All, |c| ChannelGrant::Only(c.into())),
            expires_at: data.claims.exp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    fn token(claims: serde_json::Value, secret: &[u8]) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn subs_claim_lists_channels_subscribed_at_connect() {
        let auth = Authenticator::hs256(b"k", &JwtRules::default());
        let exp = crate::clock::unix_ms() / 1000 + 60;
        let t = token(
            json!({"sub":"u1","exp":exp,"channels":["chat:*"],"subs":["news","alerts:u1"]}),
            b"k",
        );
        let id = auth.authenticate(Some(&t)).await.unwrap();
        let subs: Vec<&str> = id.subscribe.iter().map(|c| &**c).collect();
        assert_eq!(subs, ["news", "alerts:u1"]);
        assert!(!id.channels.allows("news"), "subs grant nothing else");
        let bad = token(json!({"sub":"u1","exp":exp,"subs":[""]}), b"k");
        assert!(matches!(
            auth.authenticate(Some(&bad)).await,
            Err(AuthError::Invalid(m)) if m.contains("subs")
        ));
    }

    #[tokio::test]
    async fn jwt_modes() {
        let auth = Authenticator::hs256(b"s3cret", &JwtRules::default());
        let exp = crate::clock::unix_ms() / 1000 + 60;
        let ok = token(
            json!({"sub":"u1","exp":exp,"channels":["team:*","news"]}),
            b"s3cret",
        );
        let id = auth.authenticate(Some(&ok)).await.unwrap();
        assert_eq!(&*id.user, "u1");
        assert_eq!(id.expires_at, Some(exp));
        assert!(id.channels.allows("team:42") && id.channels.allows("news"));
        assert!(!id.channels.allows("news2") && !id.channels.allows("admin"));
        assert!(id.subscribe.is_empty());
        assert_eq!(
            auth.authenticate(None).await.unwrap_err(),
            AuthError::Missing
        );
        let expired = token(json!({"sub":"u1","exp":1000}), b"s3cret");
        assert_eq!(
            auth.authenticate(Some(&expired)).await.unwrap_err(),
            AuthError::Expired
        );
        let forged = token(json!({"sub":"u1","exp":exp}), b"other");
        assert!(matches!(
            auth.authenticate(Some(&forged)).await,
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            auth.authenticate(Some("garbage")).await,
            Err(AuthError::Invalid(_))
        ));
        assert!(!format!("{auth:?}").contains("s3cret"));
        assert!(
            Authenticator::None
                .authenticate(None)
                .await
                .unwrap()
                .user
                .starts_with("anon-")
        );
    }

    #[tokio::test]
    async fn exp_is_required_unless_turned_off() {
        let forever = token(json!({"sub":"u1"}), b"k");
        let strict = Authenticator::hs256(b"k", &JwtRules::default());
        assert_eq!(
            strict.authenticate(Some(&forever)).await.unwrap_err(),
            AuthError::Invalid("missing claim `exp`".into())
        );
        let lax = JwtRules {
            allow_missing_exp: true,
            ..JwtRules::default()
        };
        let id = Authenticator::hs256(b"k", &lax)
            .authenticate(Some(&forever))
            .await
            .unwrap();
        assert_eq!((&*id.user, id.expires_at), ("u1", None));
    }

    #[tokio::test]
    async fn audience_and_issuer_when_configured() {
        let exp = crate::clock::unix_ms() / 1000 + 60;
        let rules = JwtRules {
            audience: vec!["gate".into()],
            issuer: vec!["https://idp".into()],
            ..JwtRules::default()
        };
        let auth = Authenticator::hs256(b"k", &rules);
        let claims = |aud: &str, iss: &str| json!({"sub":"u","exp":exp,"aud":aud,"iss":iss});
        let ok = token(claims("gate", "https://idp"), b"k");
        assert!(auth.authenticate(Some(&ok)).await.is_ok());
        for bad in [
            claims("other", "https://idp"),
            claims("gate", "https://evil"),
        ] {
            let t = token(bad, b"k");
            assert!(matches!(
                auth.authenticate(Some(&t)).await,
                Err(AuthError::Invalid(_))
            ));
        }
        let bare = token(json!({"sub":"u","exp":exp}), b"k");
        assert!(auth.authenticate(Some(&bare)).await.is_err());
        // Not configured: any audience passes.
        let open = Authenticator::hs256(b"k", &JwtRules::default());
        assert!(open.authenticate(Some(&ok)).await.is_ok());
    }

    /// Serves a fixed set and counts fetches.
    struct Counting(Arc<std::sync::atomic::AtomicUsize>);

    #[async_trait]
    impl JwksSource for Counting {
        async fn fetch(&self) -> Result<JwkSet, String> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(JwkSet { keys: Vec::new() })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_kids_fetch_at_most_once_per_interval() {
        let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let policy = JwksPolicy {
            max_age: Duration::from_secs(600),
            min_refetch: Duration::from_secs(10),
        };
        let jwks = Jwks::new(Counting(fetches.clone()), policy);
        let count = || fetches.load(std::sync::atomic::Ordering::SeqCst);
        for _ in 0..20 {
            assert!(jwks.key(Some("nope")).await.is_err());
        }
        assert_eq!(count(), 1);
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(jwks.key(Some("nope")).await.is_err());
        assert_eq!(count(), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(jwks.key(Some("nope")).await.is_err());
        assert_eq!(count(), 2);
    }
}
