//! Listings: which connections a filter selects, and how they are paged.
//!
//! Gateway (client) and upstream connections are listed together, sorted by id, so a page
//! boundary is stable while nothing connects or leaves. Upstream connections have no user
//! and no channels: a user or channel filter excludes them.

use std::str::FromStr;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};

use super::ControlError;
use super::cluster::Scope;
use super::rules::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
use crate::gateway::ConnectionInfo;
use crate::upstream::UpstreamView;

/// Which side of the node a connection is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionKind {
    /// A client connected to the gateway's `/ws`.
    Gateway,
    /// A Socket.IO client connected to the gateway's `/socket.io/`.
    SocketIo,
    /// An outbound connection held for a backend.
    Upstream,
}

impl FromStr for ConnectionKind {
    type Err = ControlError;

    fn from_str(s: &str) -> Result<Self, ControlError> {
        match s {
            "gateway" => Ok(Self::Gateway),
            "socketio" => Ok(Self::SocketIo),
            "upstream" => Ok(Self::Upstream),
            _ => Err(ControlError::invalid(
                "kind is gateway, socketio or upstream",
            )),
        }
    }
}

impl ConnectionKind {
    /// The name in `kind=` and in a connection's view.
    pub fn name(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::SocketIo => "socketio",
            Self::Upstream => "upstream",
        }
    }
}

/// ListConnections: filters (all optional) and the page wanted.
#[derive(Debug, Clone, Default)]
pub struct ListConnections {
    pub user: Option<String>,
    pub channel: Option<String>,
    pub kind: Option<ConnectionKind>,
    /// How many of the sorted connections to skip.
    pub offset: usize,
    /// Page size: [`DEFAULT_PAGE_SIZE`] when not given, 1 to [`MAX_PAGE_SIZE`].
    pub limit: Option<usize>,
    /// Every live node (default) or this node only.
    pub scope: Scope,
}

/// The page size `limit` asks for: [`DEFAULT_PAGE_SIZE`] when not given, 1 to
/// [`MAX_PAGE_SIZE`].
pub(super) fn page_limit(limit: Option<usize>) -> usize {
    limit.unwrap_or(DEFAULT_PAGE_SIZE).clamp(1, MAX_PAGE_SIZE)
}

impl ListConnections {
    /// Whether client connections of `kind` (`gateway` or `socketio`) are selected.
    pub(super) fn wants_clients(&self, kind: &str) -> bool {
        self.kind.is_none_or(|k| k.name() == kind)
    }

    pub(super) fn wants_gateway(&self) -> bool {
        self.kind != Some(ConnectionKind::Upstream)
    }

    pub(super) fn wants_upstreams(&self) -> bool {
        self.kind.is_none_or(|k| k == ConnectionKind::Upstream)
            && self.user.is_none()
            && self.channel.is_none()
    }
}

/// One connection of either kind, as listings and GetConnection show it. Both views carry
/// `kind` (`gateway` or `upstream`) and `node` (the node that holds the connection).
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum ConnectionView {
    Gateway(ConnectionInfo),
    Upstream(UpstreamView),
}

/// Read back by its `kind` (another node's answer), not by trying each shape.
impl<'de> Deserialize<'de> for ConnectionView {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        // The views' names are `&'static str` (interned), so they read from an owned value.
        let view = match v.get("kind").and_then(|k| k.as_str()) {
            Some("upstream") => UpstreamView::deserialize(v).map(Self::Upstream),
            _ => ConnectionInfo::deserialize(v).map(Self::Gateway),
        };
        view.map_err(D::Error::custom)
    }
}

impl ConnectionView {
    pub fn id(&self) -> &str {
        match self {
            Self::Gateway(i) => &i.id,
            Self::Upstream(u) => &u.id,
        }
    }

    /// The node that holds the connection.
    pub fn node(&self) -> &str {
        match self {
            Self::Gateway(i) => &i.node,
            Self::Upstream(u) => &u.node,
        }
    }
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// How many matched in all.
    pub total: usize,
    pub offset: usize,
    /// Where the next page starts; `None` on the last page.
    pub next_offset: Option<usize>,
    pub items: Vec<T>,
}

impl<T> Page<T> {
    /// Items `offset..offset + limit` of `all` (`limit` as [`ListConnections::limit`]).
    pub fn of(all: Vec<T>, offset: usize, limit: Option<usize>) -> Self {
        let limit = page_limit(limit);
        let total = all.len();
        let items: Vec<T> = all.into_iter().skip(offset).take(limit).collect();
        let end = offset + items.len();
        Self {
            total,
            offset,
            next_offset: (end < total).then_some(end),
            items,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages() {
        let all: Vec<u32> = (0..250).collect();
        let first = Page::of(all.clone(), 0, None);
        assert_eq!((first.total, first.items.len()), (250, 100));
        assert_eq!(first.next_offset, Some(100));
        let last = Page::of(all.clone(), 200, Some(100));
        assert_eq!(
            (last.items[0], last.items.len(), last.next_offset),
            (200, 50, None)
        );
        // Limits are clamped to 1..=MAX_PAGE_SIZE.
        assert_eq!(Page::of(all.clone(), 0, Some(0)).items, [0]);
        let big: Vec<u32> = (0..5000).collect();
        assert_eq!(Page::of(big, 0, Some(1_000_000)).items.len(), MAX_PAGE_SIZE);
        // Past the end: empty, no next page.
        let past = Page::of(all, 400, None);
        assert!(past.items.is_empty() && past.next_offset.is_none() && past.total == 250);
    }

    #[test]
    fn kinds_and_filters() {
        assert_eq!(
            "gateway".parse::<ConnectionKind>().unwrap(),
            ConnectionKind::Gateway
        );
        assert_eq!(
            "".parse::<ConnectionKind>().unwrap_err().message,
            "kind is gateway, socketio or upstream"
        );
        let sio = ListConnections {
            kind: Some("socketio".parse().unwrap()),
            ..Default::default()
        };
        assert!(sio.wants_clients("socketio") && !sio.wants_clients("gateway"));
        assert!(sio.wants_gateway() && !sio.wants_upstreams());
        let mut q = ListConnections::default();
        assert!(q.wants_gateway() && q.wants_upstreams());
        q.channel = Some("c".into());
        assert!(q.wants_gateway() && !q.wants_upstreams());
        let q = ListConnections {
            kind: Some(ConnectionKind::Upstream),
            ..Default::default()
        };
        assert!(!q.wants_gateway() && q.wants_upstreams());
    }
}
