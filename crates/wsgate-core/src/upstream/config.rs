//! From an [`UpstreamSpec`] (what the API and the store hold) to a
//! [`wsgate_client::ClientConfig`] (what the connection runs on), and the checks a spec
//! must pass first. Kept apart so a record reclaimed from the store is turned into a
//! connection by exactly the same code as a fresh Connect.

use std::time::Duration;

use crate::seams::upstream::{
    AuthExpect, CorrelationMode, OfflineMode, UpstreamSpec, UpstreamSubscription,
};
use wsgate_client::{
    Auth, Backoff, BreakerConfig, ClientConfig, Correlation, Heartbeat, HeartbeatPing, Matcher,
    Message, OfflinePolicy, Subscription,
};

use super::UpstreamError;

/// Messages queued per connection in outbox mode while the socket is down.
pub const OUTBOX_CAPACITY: usize = 1_000;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Rejects specs that cannot work, with a message for the API caller.
pub fn validate(spec: &UpstreamSpec) -> Result<(), UpstreamError> {
    let bad = |m: &str| Err(UpstreamError::Invalid(m.to_string()));
    if !(spec.url.starts_with("ws://") || spec.url.starts_with("wss://")) {
        return bad("url must start with ws:// or wss://");
    }
    let r = &spec.reconnect;
    if r.initial_ms == 0 {
        return bad("reconnect.initial_ms must be positive");
    }
    if r.max_ms < r.initial_ms {
        return bad("reconnect.max_ms must be at least reconnect.initial_ms");
    }
    if !(0.0..=1.0).contains(&r.jitter) {
        return bad("reconnect.jitter must be between 0 and 1");
    }
    if let Some(h) = &spec.heartbeat
        && (h.interval_ms == 0 || h.timeout_ms == 0)
    {
        return bad("heartbeat.interval_ms and heartbeat.timeout_ms must be positive");
    }
    if let CorrelationMode::JsonField { field } = &spec.correlation
        && field.is_empty()
    {
        return bad("correlation.field must not be empty");
    }
    if let Some(AuthExpect::JsonFields(text)) = spec.auth.as_ref().and_then(|a| a.expect.as_ref())
        && !serde_json::from_str::<serde_json::Value>(text).is_ok_and(|v| v.is_object())
    {
        return bad("auth.expect must be a string or a JSON object");
    }
    if let Some(AuthExpect::Field { field, equals }) =
        spec.auth.as_ref().and_then(|a| a.expect.as_ref())
        && (field.is_empty() || serde_json::from_str::<serde_json::Value>(equals).is_err())
    {
        return bad(
            "auth.expect.field must not be empty and auth.expect.equals must be a JSON value",
        );
    }
    if let Some(a) = &spec.auth {
        if a.sign.as_ref().is_some_and(|s| s.secret.is_empty()) {
            return bad("auth.sign.secret must not be empty");
        }
        if a.refresh_ms == Some(0) {
            return bad("auth.refresh_ms must be positive");
        }
    }
    if let Some(t) = &spec.tls {
        t.check()
            .map_err(|e| UpstreamError::Invalid(e.to_string()))?;
    }
    if spec.subscriptions.iter().any(|s| s.key.is_empty()) {
        return bad("subscription keys must not be empty");
    }
    if let Some(t) = &spec.publish_topic {
        validate_topic(t)?;
    }
    Ok(())
}

/// Topic names become channel names (`topic:<name>`), so they follow channel rules.
pub fn validate_topic(topic: &str) -> Result<(), UpstreamError> {
    let max = crate::protocol::MAX_CHANNEL_LEN - super::TOPIC_PREFIX.len();
    crate::protocol::check_name(topic, max).map_err(|_| {
        UpstreamError::Invalid(format!(
            "topic names are 1 to {max} bytes without control characters"
        ))
    })
}

pub fn subscription(s: &UpstreamSubscription) -> Subscription {
    let sub = Subscription::new(s.key.clone(), s.message.clone());
    match &s.unsubscribe {
        Some(u) => sub.with_unsubscribe(u.clone()),
        None => sub,
    }
}

fn matcher(expect: &AuthExpect) -> Matcher {
    match expect {
        AuthExpect::Contains(s) => Matcher::contains(s.clone()),
        AuthExpect::Field { field, equals } => Matcher::json_field(
            field.clone(),
            serde_json::from_str::<serde_json::Value>(equals).unwrap_or_default(),
        ),
        AuthExpect::JsonFields(text) => {
            let want: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(text).unwrap_or_default();
            Matcher::predicate(move |m: &Message| {
                serde_json::from_slice::<serde_json::Value>(m.as_bytes())
                    .ok()
                    .and_then(|v| v.as_object().cloned())
                    .is_some_and(|got| want.iter().all(|(k, v)| got.get(k) == Some(v)))
            })
        }
    }
}

/// The client configuration for connection `id`. Subscriptions are not part of it: the
/// manager hands them to the client as tracked subscriptions, which the client replays.
pub fn client_config(id: &str, spec: &UpstreamSpec) -> ClientConfig {
    let r = &spec.reconnect;
    let mut cfg = ClientConfig::new(spec.url.clone())
        .id(id)
        .auto_reconnect(spec.auto_reconnect)
        .backoff(
            Backoff::new()
                .initial_delay(ms(r.initial_ms))
                .max_delay(ms(r.max_ms))
                .jitter(r.jitter)
                .max_attempts(r.max_attempts),
        )
        .min_stable(ms(r.min_stable_ms.unwrap_or(r.max_ms)))
        .offline(match spec.offline {
            OfflineMode::Reject => OfflinePolicy::Reject,
            OfflineMode::Outbox => OfflinePolicy::Outbox {
                capacity: OUTBOX_CAPACITY,
            },
        })
        .correlation(match &spec.correlation {
            CorrelationMode::None => Correlation::None,
            CorrelationMode::UuidPrefix => Correlation::UuidPrefix,
            CorrelationMode::JsonField { field } => Correlation::JsonField(field.clone()),
        });
    if let Some(t) = &spec.tls {
        cfg = cfg.tls(t.clone());
    }
    for (k, v) in &spec.headers {
        cfg = cfg.header(k.clone(), v.clone());
    }
    if let Some(b) = spec.breaker {
        cfg = cfg.breaker(BreakerConfig {
            failure_threshold: b.failure_threshold,
            cooldown: ms(b.cooldown_ms),
        });
    }
    if let Some(h) = spec.heartbeat {
        cfg = cfg.heartbeat(Some(Heartbeat {
            interval: ms(h.interval_ms),
            timeout: ms(h.timeout_ms),
            ping: HeartbeatPing::WebSocket,
        }));
    }
    if let Some(a) = &spec.auth {
        let mut auth = Auth::new().timeout(ms(a.timeout_ms));
        for m in &a.messages {
            auth = auth.send(m.clone());
        }
        if let Some(e) = &a.expect {
            auth = auth.expect(matcher(e));
        }
        if let Some(s) = &a.sign {
            auth = auth.sign(s.clone());
        }
        if let Some(p) = a.refresh_ms {
            auth = auth.refresh(ms(p));
        }
        cfg = cfg.auth(auth);
    }
    cfg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seams::upstream::UpstreamTls;

    #[test]
    fn json_fields_matcher_checks_every_field() {
        let m = matcher(&AuthExpect::JsonFields(r#"{"op":"auth_ok"}"#.into()));
        assert!(m.matches(&Message::from(r#"{"op":"auth_ok","user":"x"}"#)));
        assert!(!m.matches(&Message::from(r#"{"op":"auth_failed"}"#)));
        assert!(!m.matches(&Message::from("auth_ok")));
        let m = matcher(&AuthExpect::Field {
            field: "event".into(),
            equals: r#""login""#.into(),
        });
        assert!(m.matches(&Message::from(r#"{"event":"login","code":0}"#)));
        assert!(!m.matches(&Message::from(r#"{"event":"error"}"#)));
    }

    #[test]
    fn validation() {
        assert!(validate(&UpstreamSpec::new("ws://h/")).is_ok());
        assert!(validate(&UpstreamSpec::new("http://h/")).is_err());
        let mut s = UpstreamSpec::new("ws://h/");
        s.reconnect.max_ms = 1;
        assert!(validate(&s).is_err());
        let mut s = UpstreamSpec::new("ws://h/");
        s.publish_topic = Some(String::new());
        assert!(validate(&s).is_err());
        let mut s = UpstreamSpec::new("ws://h/");
        s.reconnect.initial_ms = 0;
        s.reconnect.max_ms = 0;
        assert_eq!(
            validate(&s).unwrap_err().to_string(),
            "reconnect.initial_ms must be positive"
        );
        let mut s = UpstreamSpec::new("wss://h/");
        s.tls = Some(UpstreamTls {
            ca_pem: Some("not pem".into()),
            ..Default::default()
        });
        assert!(validate(&s).is_err());
    }
}
