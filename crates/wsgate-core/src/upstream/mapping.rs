//! How an upstream message becomes the `data` of a channel publication.
//!
//! - a text frame that is valid JSON is published as that JSON value (as is, not re-encoded);
//! - any other text frame is published as a JSON string;
//! - a binary frame is published as `{"binary_base64":"<standard base64>"}`.
//!
//! Browsers subscribed to `topic:<name>` therefore always get JSON in `data`, and an
//! exchange feed that already speaks JSON arrives unchanged.

use base64::Engine;
use bytes::Bytes;
use wsgate_client::Message;

pub fn publication_data(msg: &Message) -> Bytes {
    match msg {
        Message::Text(t) => {
            let text = t.as_str();
            if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
                Bytes::copy_from_slice(text.as_bytes())
            } else {
                Bytes::from(serde_json::Value::from(text).to_string())
            }
        }
        Message::Binary(b) => {
            let encoded = base64::engine::general_purpose::STANDARD.encode(b);
            Bytes::from(serde_json::json!({ "binary_base64": encoded }).to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_text_string_and_binary() {
        assert_eq!(
            publication_data(&Message::from(r#"{"px":1.5}"#)),
            Bytes::from(r#"{"px":1.5}"#)
        );
        assert_eq!(publication_data(&Message::from("42")), Bytes::from("42"));
        assert_eq!(
            publication_data(&Message::from(r#"hello "x""#)),
            Bytes::from(r#""hello \"x\"""#)
        );
        assert_eq!(
            publication_data(&Message::from(r#"{"a":1} trailing"#)),
            Bytes::from(r#""{\"a\":1} trailing""#)
        );
        assert_eq!(
            publication_data(&Message::binary(vec![0u8, 1, 2])),
            Bytes::from(r#"{"binary_base64":"AAEC"}"#)
        );
    }
}
