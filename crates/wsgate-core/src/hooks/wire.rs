//! What a hook sends the backend and what it may answer (docs/backend.md is the contract).
//!
//! Every request carries the [`Caller`]. Every answer is `{"result":{…}}` or
//! `{"error":{"code":…,"message":…}}`: exactly one of the two, or the answer is malformed
//! (and the client gets `backend_unavailable`, as for a backend that is down).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{Data, Failure, HookError};
use crate::gateway::Connection;

/// Who the hook is about: the client's connection as the backend sees it.
#[derive(Debug, Clone, Serialize)]
pub struct Caller {
    pub connection_id: Arc<str>,
    /// `None` only for a connect without a token: the backend names the user.
    pub user: Option<Arc<str>>,
    /// `ws` or `socketio`.
    pub transport: &'static str,
    /// The client's address (`ip:port`) as the node saw it.
    pub client: Option<String>,
    pub node: Arc<str>,
}

impl Caller {
    /// The caller of an open connection.
    pub fn of(conn: &Connection, node: &str) -> Self {
        Self {
            connection_id: conn.id.clone(),
            user: Some(conn.user().clone()),
            transport: transport_of(conn.kind),
            client: conn.remote.map(|a| a.to_string()),
            node: node.into(),
        }
    }
}

/// The `transport` a connection kind is reported as.
pub fn transport_of(kind: &str) -> &'static str {
    match kind {
        "socketio" => "socketio",
        _ => "ws",
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnectRequest {
    #[serde(flatten)]
    pub caller: Caller,
    /// The client's token, when it sent one (already verified when `auth.mode = jwt`).
    pub token: Option<String>,
    /// The upgrade request's headers named in the hook's `forward_headers`.
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectReply {
    /// The user; without it the token's (or, without a token, an anonymous id).
    pub user: Option<String>,
    /// Channels subscribed for the client at once (it sees `subscribed` for each).
    #[serde(default)]
    pub channels: Vec<String>,
    /// Sent to the client in `hello` as `data`.
    pub data: Option<Data>,
    /// When the connection expires (Unix seconds): the refresh hook is asked then.
    pub expire_at: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SubscribeRequest {
    #[serde(flatten)]
    pub caller: Caller,
    pub channel: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscribeReply {
    /// Sent to the client in `subscribed` as `data`.
    pub data: Option<Data>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PublishRequest {
    #[serde(flatten)]
    pub caller: Caller,
    pub channel: String,
    pub data: Data,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishReply {
    /// Published instead of what the client sent; `None`: what the client sent.
    pub data: Option<Data>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RpcRequest {
    #[serde(flatten)]
    pub caller: Caller,
    pub method: String,
    pub data: Data,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RpcReply {
    /// The `data` of `rpc_result` (`null` when absent).
    pub data: Option<Data>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RefreshRequest {
    #[serde(flatten)]
    pub caller: Caller,
}

/// Extend (`expire_at`) or end (`expired: true`) the connection.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshReply {
    pub expire_at: Option<u64>,
    #[serde(default)]
    pub expired: bool,
}

/// The backend's refusal.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rejection {
    pub code: u16,
    #[serde(default)]
    pub message: String,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "refused by the backend ({}): {}",
            self.code, self.message
        )
    }
}

/// An answer's envelope.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope<T> {
    result: Option<T>,
    error: Option<Rejection>,
}

/// Answers that must hold more than their shape says.
pub trait Reply: DeserializeOwned {
    /// Why this answer cannot be used, if it cannot.
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

impl Reply for ConnectReply {}
impl Reply for SubscribeReply {}
impl Reply for PublishReply {}
impl Reply for RpcReply {}
impl Reply for RefreshReply {
    fn check(&self) -> Result<(), String> {
        match (self.expire_at, self.expired) {
            (None, false) => Err("a refresh result needs `expire_at` or `expired: true`".into()),
            (Some(_), true) => {
                Err("a refresh result has `expire_at` or `expired`, not both".into())
            }
            _ => Ok(()),
        }
    }
}

/// Reads a backend's answer to `hook`: the result, the refusal, or why it is malformed. A
/// connect refusal must carry a close code applications may use (4000 to 4999).
pub fn parse<T: Reply>(hook: super::Hook, body: &[u8]) -> Result<T, HookError> {
    let malformed = |why: String| HookError::Unavailable(Failure::Malformed(why));
    let envelope: Envelope<T> =
        serde_json::from_slice(body).map_err(|e| malformed(e.to_string()))?;
    match (envelope.result, envelope.error) {
        (Some(result), None) => {
            result.check().map_err(malformed)?;
            Ok(result)
        }
        (None, Some(rejection)) => {
            if hook == super::Hook::Connect && !(4000..=4999).contains(&rejection.code) {
                return Err(malformed(format!(
                    "a connect refusal's code must be 4000 to 4999, not {}",
                    rejection.code
                )));
            }
            Err(HookError::Rejected(rejection))
        }
        _ => Err(malformed(
            "the answer has exactly one of `result` and `error`".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Hook;
    use super::*;

    #[test]
    fn a_connect_result_carries_user_channels_data_and_expiry() {
        let r: ConnectReply = parse(
            Hook::Connect,
            br#"{"result":{"user":"42","channels":["news"],"data":{"a":1},"expire_at":9}}"#,
        )
        .unwrap();
        assert_eq!(r.user.as_deref(), Some("42"));
        assert_eq!(r.channels, ["news"]);
        assert_eq!(r.data.unwrap().get(), r#"{"a":1}"#);
        assert_eq!(r.expire_at, Some(9));
    }

    #[test]
    fn refusals_keep_their_code_and_connect_codes_are_application_close_codes() {
        let e = parse::<ConnectReply>(
            Hook::Connect,
            br#"{"error":{"code":4403,"message":"banned"}}"#,
        )
        .unwrap_err();
        assert_eq!(
            e,
            HookError::Rejected(Rejection {
                code: 4403,
                message: "banned".into()
            })
        );
        let e = parse::<ConnectReply>(Hook::Connect, br#"{"error":{"code":1000}}"#).unwrap_err();
        assert_eq!(e.outcome(), "malformed");
        let e = parse::<PublishReply>(Hook::Publish, br#"{"error":{"code":1000}}"#).unwrap_err();
        assert_eq!(e.outcome(), "rejected");
    }

    #[test]
    fn malformed_answers_are_told_apart_from_refusals() {
        for body in [
            &b"not json"[..],
            br#"{}"#,
            br#"{"result":{},"error":{"code":4000}}"#,
            br#"{"result":{"usr":"x"}}"#,
            br#"{"result":{"channels":"news"}}"#,
        ] {
            let e = parse::<ConnectReply>(Hook::Connect, body).unwrap_err();
            assert_eq!(
                e.outcome(),
                "malformed",
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let e = parse::<RefreshReply>(Hook::Refresh, br#"{"result":{}}"#).unwrap_err();
        assert_eq!(e.outcome(), "malformed");
        let r: RefreshReply = parse(Hook::Refresh, br#"{"result":{"expired":true}}"#).unwrap();
        assert!(r.expired);
    }
}
