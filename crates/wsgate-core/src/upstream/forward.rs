//! Upstream operations forwarded to the instance that owns the connection (cluster mode).
//!
//! The caller's node serialises the [`UpstreamOp`](super::UpstreamOp) and sends it through
//! the [`Forwarding`](crate::seams::Forwarding) request/reply channel to the owner, which
//! runs it locally (never forwarding again) and answers a [`Reply`]. Errors travel as their
//! kind and text, so the caller answers exactly as the owner would have.

use serde::{Deserialize, Serialize};

use super::UpstreamError;
use super::op::Outcome;
use super::op::wire::WireMessage;

/// The owner's answer.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Reply {
    /// Error kind (`None`: success).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// SendAsync's reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame: Option<WireMessage>,
    /// Subscriptions' tracked keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<Vec<String>>,
}

impl Reply {
    pub fn error(e: &UpstreamError) -> Self {
        let (kind, message) = match e {
            UpstreamError::NotFound => ("not_found", String::new()),
            UpstreamError::OwnedByDifferentInstance(o) => ("owned", o.clone()),
            UpstreamError::NotConnected => ("not_connected", String::new()),
            UpstreamError::RequestTimeout => ("timeout", String::new()),
            UpstreamError::Invalid(m) => ("invalid", m.clone()),
            other => ("other", other.to_string()),
        };
        Reply {
            error: Some(kind.into()),
            message: Some(message),
            ..Reply::default()
        }
    }

    /// The owner's side: what it answers for the result of running an operation.
    pub fn of(result: Result<Outcome, UpstreamError>) -> Self {
        match result {
            Ok(Outcome::Done) => Reply::default(),
            Ok(Outcome::Reply(m)) => Reply {
                frame: Some(WireMessage::from(&m)),
                ..Reply::default()
            },
            Ok(Outcome::Keys(keys)) => Reply {
                keys: Some(keys),
                ..Reply::default()
            },
            Err(e) => Reply::error(&e),
        }
    }

    /// The caller's side: the outcome or the error it carries.
    pub fn into_outcome(self) -> Result<Outcome, UpstreamError> {
        if let Some(kind) = self.error.as_deref() {
            let m = self.message.unwrap_or_default();
            return Err(match kind {
                "not_found" => UpstreamError::NotFound,
                "owned" => UpstreamError::OwnedByDifferentInstance(m),
                "not_connected" => UpstreamError::NotConnected,
                "timeout" => UpstreamError::RequestTimeout,
                "invalid" => UpstreamError::Invalid(m),
                _ => UpstreamError::Remote(m),
            });
        }
        Ok(match (self.frame, self.keys) {
            (Some(frame), _) => Outcome::Reply(
                frame
                    .into_message()
                    .map_err(|_| UpstreamError::Remote("bad forwarded frame".into()))?,
            ),
            (None, Some(keys)) => Outcome::Keys(keys),
            (None, None) => Outcome::Done,
        })
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use wsgate_client::Message;

    use super::*;

    fn trip(r: Reply) -> Reply {
        serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap()
    }

    #[test]
    fn errors_survive_the_trip() {
        for e in [
            UpstreamError::NotFound,
            UpstreamError::OwnedByDifferentInstance("n9".into()),
            UpstreamError::NotConnected,
            UpstreamError::RequestTimeout,
            UpstreamError::Invalid("bad".into()),
        ] {
            let back = trip(Reply::error(&e));
            assert_eq!(back.into_outcome().unwrap_err().to_string(), e.to_string());
        }
    }

    #[test]
    fn outcomes_survive_the_trip() {
        for o in [
            Outcome::Done,
            Outcome::Reply(Message::Binary(Bytes::from_static(b"\x00\x01"))),
            Outcome::Reply(Message::from("pong")),
            Outcome::Keys(vec!["a".into(), "b".into()]),
        ] {
            assert_eq!(trip(Reply::of(Ok(o.clone()))).into_outcome().unwrap(), o);
        }
    }
}
