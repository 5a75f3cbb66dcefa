//! Tracked subscriptions, replayed in insertion order after every (re)connect.
//!
//! The driver owns the only copy, so a subscription added or removed while
//! disconnected is simply part of (or missing from) the next replay: there is
//! no separate "pending" list to get out of sync (seed 002, failure 2).

use crate::Message;

/// One subscription: a key (the topic/channel, for bookkeeping and the stats
/// view), the message that subscribes, and optionally the one that undoes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    key: String,
    subscribe: Message,
    unsubscribe: Option<Message>,
}

impl Subscription {
    /// A subscription for `key`, established by sending `subscribe`.
    pub fn new(key: impl Into<String>, subscribe: impl Into<Message>) -> Self {
        Self {
            key: key.into(),
            subscribe: subscribe.into(),
            unsubscribe: None,
        }
    }

    /// Message sent when this subscription is removed while connected.
    pub fn with_unsubscribe(mut self, msg: impl Into<Message>) -> Self {
        self.unsubscribe = Some(msg.into());
        self
    }

    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The subscribe message.
    pub fn subscribe_message(&self) -> &Message {
        &self.subscribe
    }

    /// The unsubscribe message, if any.
    pub fn unsubscribe_message(&self) -> Option<&Message> {
        self.unsubscribe.as_ref()
    }
}

/// Insertion-ordered set of subscriptions keyed by `key`.
///
/// A `Vec` with linear lookup: per-connection lists are short (tens to a few
/// hundred), and replay order must be insertion order.
#[derive(Debug, Default, Clone)]
pub struct Subscriptions {
    items: Vec<Subscription>,
}

/// Result of [`Subscriptions::add`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// New key, appended at the end.
    New,
    /// Known key with a different message: replaced in place (keeps its position).
    Replaced,
    /// Identical subscription already tracked: nothing to do.
    Unchanged,
}

impl Subscriptions {
    /// Adds or replaces a subscription.
    pub fn add(&mut self, sub: Subscription) -> Added {
        match self.items.iter_mut().find(|s| s.key == sub.key) {
            Some(existing) if *existing == sub => Added::Unchanged,
            Some(existing) => {
                *existing = sub;
                Added::Replaced
            }
            None => {
                self.items.push(sub);
                Added::New
            }
        }
    }

    /// Removes the subscription for `key`, returning it.
    pub fn remove(&mut self, key: &str) -> Option<Subscription> {
        let i = self.items.iter().position(|s| s.key == key)?;
        Some(self.items.remove(i))
    }

    /// In insertion order.
    pub fn iter(&self) -> impl Iterator<Item = &Subscription> {
        self.items.iter()
    }

    /// Keys in insertion order.
    pub fn keys(&self) -> Vec<String> {
        self.items.iter().map(|s| s.key.clone()).collect()
    }

    /// Number tracked.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when none are tracked.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_insertion_order_and_replaces_in_place() {
        let mut s = Subscriptions::default();
        assert_eq!(s.add(Subscription::new("a", "sub a")), Added::New);
        assert_eq!(s.add(Subscription::new("b", "sub b")), Added::New);
        assert_eq!(s.add(Subscription::new("c", "sub c")), Added::New);
        assert_eq!(s.add(Subscription::new("b", "sub b")), Added::Unchanged);
        assert_eq!(s.add(Subscription::new("a", "sub a v2")), Added::Replaced);
        assert_eq!(s.keys(), vec!["a", "b", "c"]);
        assert_eq!(
            s.iter().next().unwrap().subscribe_message(),
            &Message::from("sub a v2")
        );
        assert!(s.remove("b").is_some());
        assert!(s.remove("b").is_none());
        assert_eq!(s.keys(), vec!["a", "c"]);
        s.add(Subscription::new("b", "sub b"));
        assert_eq!(s.keys(), vec!["a", "c", "b"]);
    }
}
