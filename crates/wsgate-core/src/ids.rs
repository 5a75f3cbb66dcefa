//! Connection ids that name their node.
//!
//! A connection id is `<16 hex digits>-<node id>`. Because the node is part of the id, a
//! send to one connection can go to that node's own topic instead of every node, and an
//! operator reading a log line knows where to look. Hex digits contain no `-`, so the split
//! at the first `-` is unambiguous even for node ids like `wsgate-7d9f-0`.

use std::sync::Arc;

pub fn new_connection_id(node: &str) -> Arc<str> {
    let raw = uuid::Uuid::new_v4().as_u128() as u64;
    format!("{raw:016x}-{node}").into()
}

/// The node that holds `id`, if the id is well formed.
pub fn node_of(id: &str) -> Option<&str> {
    let (hex, node) = id.split_once('-')?;
    (hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()) && !node.is_empty())
        .then_some(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_their_node() {
        let id = new_connection_id("wsgate-7d9f-0");
        assert_eq!(node_of(&id), Some("wsgate-7d9f-0"));
        assert_ne!(new_connection_id("n"), new_connection_id("n"));
        assert_eq!(node_of("nonsense"), None);
        assert_eq!(node_of("xyz-node"), None);
    }
}
