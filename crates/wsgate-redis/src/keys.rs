//! Key and pub/sub channel names (see the module docs for the layout).

/// Names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    pub publications: String,
    pub users: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
            publications: format!("{prefix}:pub"),
            users: format!("{prefix}:user"),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn meta(&self, channel: &str) -> String {
        format!("{}:{{{channel}}}:meta", self.prefix)
    }

    pub fn stream(&self, channel: &str) -> String {
        format!("{}:{{{channel}}}:stream", self.prefix)
    }

    pub fn presence(&self, channel: &str) -> String {
        format!("{}:presence:{channel}", self.prefix)
    }

    pub fn alive_prefix(&self) -> String {
        format!("{}:alive:", self.prefix)
    }

    pub fn alive(&self, node: &str) -> String {
        format!("{}:alive:{node}", self.prefix)
    }

    pub fn node(&self, node: &str) -> String {
        format!("{}:node:{node}", self.prefix)
    }

    /// Every instance that registered (lease holders and the dead not yet reclaimed).
    pub fn instances(&self) -> String {
        format!("{}:instances", self.prefix)
    }

    /// Request/reply channel of one node (forwarded upstream API calls).
    pub fn rpc(&self, node: &str) -> String {
        format!("{}:rpc:{node}", self.prefix)
    }

    /// Seed 000's layout: one `websocket-<id>` key per upstream connection record...
    pub fn record(&self, id: &str) -> String {
        format!("{}:websocket-{id}", self.prefix)
    }

    /// ...and the `websocket-index` set of every record's id.
    pub fn record_index(&self) -> String {
        format!("{}:websocket-index", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let k = Keys::new("wsgate");
        assert_eq!(k.meta("team:1"), "wsgate:{team:1}:meta");
        assert_eq!(k.stream("team:1"), "wsgate:{team:1}:stream");
        assert_eq!(k.presence("team:1"), "wsgate:presence:team:1");
        assert_eq!(k.alive("n1"), "wsgate:alive:n1");
        assert_eq!(k.node("n1"), "wsgate:node:n1");
        assert_eq!(k.record("ab-n1"), "wsgate:websocket-ab-n1");
        assert_eq!(k.record_index(), "wsgate:websocket-index");
        assert_eq!(k.publications, "wsgate:pub");
    }
}
