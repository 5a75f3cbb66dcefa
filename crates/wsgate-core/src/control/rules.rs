//! The control API's validation rules and defaults, stated once for every transport.

use std::time::Duration;

use bytes::Bytes;
use serde_json::value::RawValue;

use super::ControlError;
use crate::protocol::{self, MAX_CHANNEL_LEN};

/// How long Connect waits for the first connection when the caller does not say.
pub const DEFAULT_CONNECT_WAIT: Duration = Duration::from_secs(10);
/// Longest wait for an upstream's auth reply when the caller does not say.
pub const DEFAULT_AUTH_TIMEOUT_MS: u64 = 10_000;
/// Longest Socket.IO event name a publication may carry.
pub const MAX_EVENT_LEN: usize = 64;

/// Events a Socket.IO client reserves for itself: emitting them would break its client.
const RESERVED_EVENTS: [&str; 6] = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// A publication's Socket.IO event: 1 to [`MAX_EVENT_LEN`] bytes without control characters,
/// and not one of the events the client reserves.
pub fn check_event(event: &str) -> Result<(), ControlError> {
    if protocol::check_name(event, MAX_EVENT_LEN).is_err() || RESERVED_EVENTS.contains(&event) {
        return Err(ControlError::invalid(format!(
            "event names are 1 to {MAX_EVENT_LEN} bytes without control characters, and not one of {}",
            RESERVED_EVENTS.join(", ")
        )));
    }
    Ok(())
}

/// SendAsync's timeout when the caller does not say.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 30_000;
/// The longest SendAsync timeout accepted.
pub const MAX_REQUEST_TIMEOUT_MS: u64 = 300_000;
/// Connections per page of a listing when the caller does not say.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// The most connections one page of a listing holds.
pub const MAX_PAGE_SIZE: usize = 1000;
/// The close reason of DisconnectClient when the caller gives none.
pub const DEFAULT_DISCONNECT_REASON: &str = "closed by the control API";

/// The channel rule of [`protocol::check_name`], worded for API callers.
pub fn check_channel(channel: &str) -> Result<(), ControlError> {
    protocol::check_name(channel, MAX_CHANNEL_LEN).map_err(|_| {
        ControlError::invalid(format!(
            "channel names are 1 to {MAX_CHANNEL_LEN} bytes without control characters"
        ))
    })
}

/// SendAsync's timeout: the default when not given, else 1 ms to [`MAX_REQUEST_TIMEOUT_MS`].
pub fn request_timeout(timeout_ms: Option<u64>) -> Result<Duration, ControlError> {
    match timeout_ms.unwrap_or(DEFAULT_REQUEST_TIMEOUT_MS) {
        ms @ 1..=MAX_REQUEST_TIMEOUT_MS => Ok(Duration::from_millis(ms)),
        _ => Err(ControlError::invalid(format!(
            "timeout_ms must be between 1 and {MAX_REQUEST_TIMEOUT_MS}"
        ))),
    }
}

/// A gateway payload: exactly one JSON value, as the broker carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload(Bytes);

impl Payload {
    /// Checks that `text` is one JSON value ([`protocol::validate_json`]).
    pub fn parse(text: &str) -> Result<Self, ControlError> {
        protocol::validate_json(text)
            .map(Self)
            .map_err(|e| ControlError::invalid(e.message))
    }

    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// A value a JSON decoder already checked.
impl From<&RawValue> for Payload {
    fn from(raw: &RawValue) -> Self {
        Self(Bytes::copy_from_slice(raw.get().as_bytes()))
    }
}

/// A JSON body's value, kept as its text (checked by the decoder).
impl<'de> serde::Deserialize<'de> for Payload {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(d).map(|raw| Self::from(&*raw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::ErrorCode;

    #[test]
    fn channel_names() {
        assert!(check_channel("news:eu").is_ok());
        for bad in ["", "a\nb", &"x".repeat(MAX_CHANNEL_LEN + 1)] {
            let e = check_channel(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidArgument);
            assert_eq!(
                e.message,
                "channel names are 1 to 256 bytes without control characters"
            );
        }
    }

    #[test]
    fn payloads_are_one_json_value() {
        assert_eq!(
            Payload::parse(r#" {"a":1} "#).unwrap().into_bytes(),
            Bytes::from_static(br#"{"a":1}"#)
        );
        for bad in ["", "{", "1 2", "not json"] {
            let e = Payload::parse(bad).unwrap_err();
            assert!(e.message.starts_with("data is not one JSON value"), "{e}");
        }
        let raw: Box<RawValue> = serde_json::from_str("[1, 2]").unwrap();
        assert_eq!(
            Payload::from(&*raw).into_bytes(),
            Bytes::from_static(b"[1, 2]")
        );
    }

    #[test]
    fn request_timeouts() {
        assert_eq!(request_timeout(None).unwrap(), Duration::from_secs(30));
        assert_eq!(request_timeout(Some(5)).unwrap(), Duration::from_millis(5));
        for bad in [0, MAX_REQUEST_TIMEOUT_MS + 1] {
            assert_eq!(
                request_timeout(Some(bad)).unwrap_err().message,
                "timeout_ms must be between 1 and 300000"
            );
        }
    }
}
