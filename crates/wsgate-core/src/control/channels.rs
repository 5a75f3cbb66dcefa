//! Channel info: which channels have subscribers, and how many, across the cluster.
//!
//! Counts are scatter-gather: each live node (the leases of [`Ownership::live_nodes`])
//! answers from its own registry, the asking node adds them up. Nothing is counted in a
//! shared store, so nothing goes stale: a node that dies stops holding a lease and drops out
//! of the next answer (after one lease TTL), and a node that is alive but slow is named in
//! `missing_nodes` rather than silently counted as zero. A count kept in Redis would need
//! every subscribe and disconnect to write it and a crash to be cleaned up after; the
//! registry is already the truth, so it is asked.
//!
//! [`Ownership::live_nodes`]: crate::seams::Ownership::live_nodes

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::cluster::{ClusterLink, NodeCall, NodeReply};
use super::{Control, ControlError, rules};

/// The most channels one listing holds (and one node reports): beyond, `truncated`.
pub const MAX_CHANNELS_LISTED: usize = 10_000;

/// A channel with subscribers, and how many connections subscribe to it cluster-wide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelCount {
    pub channel: String,
    pub subscribers: usize,
}

/// What `GET /api/v1/channels` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelList {
    /// Sorted by name.
    pub channels: Vec<ChannelCount>,
    /// More channels matched than [`MAX_CHANNELS_LISTED`].
    pub truncated: bool,
    /// Live nodes that did not answer in time: their subscribers are not counted.
    pub missing_nodes: Vec<String>,
}

/// What `GET /api/v1/channels/{channel}` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelInfo {
    pub channel: String,
    /// Connections subscribed, on every live node.
    pub subscribers: usize,
    /// Where the channel's stream stands.
    pub offset: u64,
    pub epoch: Arc<str>,
    pub missing_nodes: Vec<String>,
}

/// Which channels a node reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum ChannelMatch {
    Prefix,
    Exact,
}

impl Control {
    /// ListChannels: the channels with subscribers whose names start with `prefix`, with
    /// their subscriber counts, cluster-wide.
    pub async fn list_channels(&self, prefix: &str) -> Result<ChannelList, ControlError> {
        let (counts, missing_nodes) = self.count_channels(prefix, ChannelMatch::Prefix).await?;
        let truncated = counts.len() > MAX_CHANNELS_LISTED;
        let channels = counts
            .into_iter()
            .take(MAX_CHANNELS_LISTED)
            .map(|(channel, subscribers)| ChannelCount {
                channel,
                subscribers,
            })
            .collect();
        Ok(ChannelList {
            channels,
            truncated,
            missing_nodes,
        })
    }

    /// GetChannel: one channel's subscribers (cluster-wide) and stream position. A channel
    /// nobody subscribes to is answered too (0 subscribers, its position).
    pub async fn channel_info(&self, channel: &str) -> Result<ChannelInfo, ControlError> {
        rules::check_channel(channel)?;
        self.gateway
            .namespace_of(channel)
            .map_err(|e| ControlError::invalid(e.to_string()))?;
        let (counts, position) = tokio::join!(
            self.count_channels(channel, ChannelMatch::Exact),
            self.gateway.broker.position(channel)
        );
        let (counts, missing_nodes) = counts?;
        let position = position.map_err(crate::gateway::GatewayError::from)?;
        Ok(ChannelInfo {
            channel: channel.to_string(),
            subscribers: counts.get(channel).copied().unwrap_or(0),
            offset: position.offset,
            epoch: position.epoch,
            missing_nodes,
        })
    }

    /// This node's counts for a [`NodeCall::Channels`].
    pub(super) fn local_channel_counts(
        &self,
        name: &str,
        how: ChannelMatch,
    ) -> Vec<(String, usize)> {
        let registry = &self.gateway.registry;
        match how {
            ChannelMatch::Exact => match registry.subscriber_count(name) {
                0 => Vec::new(),
                n => vec![(name.to_string(), n)],
            },
            // One more than listed, so the merge knows a node had more.
            ChannelMatch::Prefix => registry
                .channel_counts(name, MAX_CHANNELS_LISTED + 1)
                .into_iter()
                .map(|(c, n)| (c.to_string(), n))
                .collect(),
        }
    }

    /// Every live node's counts, added up by channel; and the live nodes that did not
    /// answer in time.
    async fn count_channels(
        &self,
        name: &str,
        how: ChannelMatch,
    ) -> Result<(BTreeMap<String, usize>, Vec<String>), ControlError> {
        let mut total: BTreeMap<String, usize> = BTreeMap::new();
        let mut add = |counts: Vec<(String, usize)>| {
            for (channel, n) in counts {
                *total.entry(channel).or_default() += n;
            }
        };
        add(self.local_channel_counts(name, how));
        let Some(link) = self.cluster.get() else {
            return Ok((total, Vec::new()));
        };
        let (answers, others) = self.ask_others(link, name, how).await?;
        let mut missing = Vec::new();
        for (node, answer) in others.into_iter().zip(answers) {
            match answer {
                Ok(NodeReply::Channels(counts)) => add(counts),
                other => {
                    info!(node = %node, answer = ?other.err(), "channel counts: node did not answer in time");
                    missing.push(node);
                }
            }
        }
        missing.sort();
        Ok((total, missing))
    }

    async fn ask_others(
        &self,
        link: &ClusterLink,
        name: &str,
        how: ChannelMatch,
    ) -> Result<(Vec<Result<NodeReply, ControlError>>, Vec<String>), ControlError> {
        let live = link.ownership.live_nodes().await.map_err(|e| {
            warn!(error = %e, "channel counts: live nodes unknown");
            ControlError::store_unavailable()
        })?;
        let me = self.gateway.node().to_string();
        let others: Vec<String> = live.into_iter().filter(|n| *n != me).collect();
        let call = NodeCall::Channels {
            name: name.to_string(),
            how,
        };
        let answers = join_all(others.iter().map(|n| self.ask(link, n, &call))).await;
        Ok((answers, others))
    }
}
