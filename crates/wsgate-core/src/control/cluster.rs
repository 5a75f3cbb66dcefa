//! The whole cluster from any node: listings, one connection's view and a client's
//! disconnect, answered by whichever node holds the connection.
//!
//! Nodes ask each other through the [`Forwarding`] seam (request/reply, bodies are JSON).
//! The calls of this module are [`NodeCall`]s, whose `op` names differ from every
//! [`UpstreamOp`](crate::upstream::UpstreamOp)'s, so one handler per node
//! ([`Control::answer_forwarded`]) tells them apart and hands the upstream operations to the
//! upstream manager unchanged.
//!
//! A listing asks every live node (the leases of [`Ownership::live_nodes`]) at once, with a
//! bounded wait ([`NODE_QUERY_TIMEOUT`]). Each node answers its first `offset + limit`
//! matches in id order and its total, which is all a merge needs to cut the cluster's page
//! exactly. A node that does not answer in time is named in `missing_nodes`, never dropped
//! silently.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::ConnectionView;
use super::listing::page_limit;
use super::{Control, ControlError, ErrorCode, ListConnections, Page};
use crate::seams::{Forwarding, Ownership, RequestHandler};

/// How long a node waits for another node's part of a cluster-wide answer.
pub const NODE_QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Which nodes a listing covers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Scope {
    /// Every live node (a single node lists itself).
    #[default]
    Cluster,
    /// This node only (`?scope=node`).
    Node,
}

named_options!(Scope, "scope is cluster or node", "cluster" => Cluster, "node" => Node);

/// A page of a listing, and the live nodes whose part is missing from it.
#[derive(Debug, Clone)]
pub struct Listing {
    pub page: Page<ConnectionView>,
    /// Live nodes that did not answer in time (sorted); empty when the page is complete.
    pub missing_nodes: Vec<String>,
}

impl Listing {
    /// Whether some live node's connections are missing from the page.
    pub fn is_partial(&self) -> bool {
        !self.missing_nodes.is_empty()
    }
}

/// The cluster seams as the façade uses them.
pub(super) struct ClusterLink {
    pub ownership: Arc<dyn Ownership>,
    pub forwarding: Arc<dyn Forwarding>,
}

/// A question one node asks another about the connections it holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(super) enum NodeCall {
    /// The first `first` matches in id order, and how many match.
    ListConnections {
        user: Option<String>,
        channel: Option<String>,
        kind: Option<String>,
        first: usize,
    },
    GetConnection {
        id: String,
    },
    DisconnectClient {
        id: String,
        reason: Option<String>,
    },
    /// This node's subscriber counts of the channels `name` selects (control/channels.rs).
    Channels {
        name: String,
        how: super::channels::ChannelMatch,
    },
}

/// A node's answer to a [`NodeCall`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum NodeReply {
    Listed {
        total: usize,
        items: Vec<ConnectionView>,
    },
    Connection(Box<ConnectionView>),
    Channels(Vec<(String, usize)>),
    Done,
    Failed {
        code: ErrorCode,
        message: String,
    },
}

impl NodeReply {
    fn of<T>(r: Result<T, ControlError>, ok: impl FnOnce(T) -> Self) -> Self {
        match r {
            Ok(v) => ok(v),
            Err(e) => Self::Failed {
                code: e.code,
                message: e.message,
            },
        }
    }
}

impl Control {
    /// Cluster mode: route through `ownership`, reach other nodes through `forwarding`, and
    /// answer what other nodes forward here (cluster-wide views and upstream operations).
    pub fn attach_cluster(
        self: &Arc<Self>,
        ownership: Arc<dyn Ownership>,
        forwarding: Arc<dyn Forwarding>,
    ) {
        let weak = Arc::downgrade(self);
        let handler: RequestHandler = Arc::new(move |body| {
            let weak = weak.clone();
            Box::pin(async move {
                match weak.upgrade() {
                    Some(c) => c.answer_forwarded(body).await,
                    None => crate::upstream::UpstreamManager::gone_reply(),
                }
            })
        });
        // Served once this node holds its id's lease (the upstream manager takes it).
        self.upstreams
            .attach_cluster(ownership.clone(), forwarding.clone(), handler);
        let _ = self.cluster.set(ClusterLink {
            ownership,
            forwarding,
        });
    }

    /// Answers one call forwarded by another node, from this node's own connections only.
    pub async fn answer_forwarded(&self, body: String) -> String {
        let Ok(call) = serde_json::from_str::<NodeCall>(&body) else {
            return self.upstreams.handle_forwarded(body).await;
        };
        let reply = match call {
            NodeCall::ListConnections {
                user,
                channel,
                kind,
                first,
            } => {
                let kind = kind.as_deref().map(str::parse).transpose();
                NodeReply::of(kind, |kind| {
                    let all = self.local_matches(&ListConnections {
                        user,
                        channel,
                        kind,
                        ..Default::default()
                    });
                    NodeReply::Listed {
                        total: all.len(),
                        items: all.into_iter().take(first).collect(),
                    }
                })
            }
            NodeCall::GetConnection { id } => {
                let view = self.local_view(&id).ok_or_else(not_found);
                NodeReply::of(view, |v| NodeReply::Connection(Box::new(v)))
            }
            NodeCall::DisconnectClient { id, reason } => {
                let kicked = self.kick_local(&id, reason.as_deref());
                NodeReply::of(kicked, |()| NodeReply::Done)
            }
            NodeCall::Channels { name, how } => {
                NodeReply::Channels(self.local_channel_counts(&name, how))
            }
        };
        serde_json::to_string(&reply).unwrap_or_default()
    }

    /// This node's connection `id` of either kind (never asks anybody).
    pub(super) fn local_view(&self, id: &str) -> Option<ConnectionView> {
        let gw = &self.gateway;
        if let Some(conn) = gw.registry.get(id) {
            return Some(ConnectionView::Gateway(
                conn.info(gw.node(), gw.clock.now_ms()),
            ));
        }
        self.upstreams.local_view(id).map(ConnectionView::Upstream)
    }

    /// The cluster-wide listing: every live node's first matches, merged by id and paged.
    pub(super) async fn list_cluster(
        &self,
        link: &ClusterLink,
        q: &ListConnections,
    ) -> Result<Listing, ControlError> {
        let live = link.ownership.live_nodes().await.map_err(|e| {
            warn!(error = %e, "listing: live nodes unknown");
            ControlError::store_unavailable()
        })?;
        let limit = page_limit(q.limit);
        let first = q.offset.saturating_add(limit);
        let me = self.gateway.node().to_string();
        let call = NodeCall::ListConnections {
            user: q.user.clone(),
            channel: q.channel.clone(),
            kind: q.kind.map(|k| k.name().to_string()),
            first,
        };
        let others: Vec<&String> = live.iter().filter(|n| **n != me).collect();
        let answers = join_all(others.iter().map(|n| self.ask(link, n, &call))).await;
        let local = self.local_matches(q);
        let mut total = local.len();
        let mut items: Vec<ConnectionView> = local.into_iter().take(first).collect();
        let mut missing_nodes = Vec::new();
        for (node, answer) in others.into_iter().zip(answers) {
            match answer {
                Ok(NodeReply::Listed {
                    total: n,
                    items: more,
                }) => {
                    total += n;
                    items.extend(more);
                }
                other => {
                    info!(node = %node, answer = ?other.err(), "listing: node did not answer in time");
                    missing_nodes.push(node.clone());
                }
            }
        }
        items.sort_by(|a, b| a.id().cmp(b.id()));
        let items: Vec<ConnectionView> = items.into_iter().skip(q.offset).take(limit).collect();
        let end = q.offset + items.len();
        Ok(Listing {
            page: Page {
                total,
                offset: q.offset,
                next_offset: (end < total).then_some(end),
                items,
            },
            missing_nodes,
        })
    }

    /// Connection `id` as `node` (another node, named by the id or by the record) sees it.
    pub(super) async fn view_elsewhere(
        &self,
        node: &str,
        id: &str,
    ) -> Result<ConnectionView, ControlError> {
        let Some(link) = self.cluster.get() else {
            return Err(not_found());
        };
        match self
            .ask(link, node, &NodeCall::GetConnection { id: id.into() })
            .await?
        {
            NodeReply::Connection(v) => Ok(*v),
            _ => Err(not_found()),
        }
    }

    /// Closes client connection `id` held by `node` (another node).
    pub(super) async fn kick_elsewhere(
        &self,
        node: &str,
        id: &str,
        reason: Option<&str>,
    ) -> Result<(), ControlError> {
        let Some(link) = self.cluster.get() else {
            return Err(not_found());
        };
        let call = NodeCall::DisconnectClient {
            id: id.into(),
            reason: reason.map(str::to_string),
        };
        self.ask(link, node, &call).await.map(drop)
    }

    /// Sends `call` to `node` and reads its answer: a node that nobody serves has no such
    /// connection; a store that does not carry the call is `Store unavailable`, a node that
    /// does not answer in time is named.
    pub(super) async fn ask(
        &self,
        link: &ClusterLink,
        node: &str,
        call: &NodeCall,
    ) -> Result<NodeReply, ControlError> {
        let body = serde_json::to_string(call).map_err(|e| ControlError::invalid(e.to_string()))?;
        match link
            .forwarding
            .request(node, body, NODE_QUERY_TIMEOUT)
            .await
        {
            Ok(Some(reply)) => match serde_json::from_str::<NodeReply>(&reply) {
                Ok(NodeReply::Failed { code, message }) => Err(ControlError::new(code, message)),
                Ok(r) => Ok(r),
                Err(e) => Err(ControlError::new(
                    ErrorCode::BadGateway,
                    format!("bad answer from {node}: {e}"),
                )),
            },
            Ok(None) => Err(not_found()),
            Err(e) => {
                warn!(node = %node, error = %e, "call to another node failed");
                Err(ControlError::from(crate::upstream::UpstreamError::Store(e)))
            }
        }
    }
}

fn not_found() -> ControlError {
    ControlError::from(crate::gateway::GatewayError::ConnectionNotFound)
}
