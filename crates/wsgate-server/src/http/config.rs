//! The control API's settings: the API key and the body limit.

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// Default of `api_body_limit`: 1 MiB, room for any publication a client could receive
/// (`max_message_size` is far smaller) without buffering arbitrary uploads.
pub const DEFAULT_API_BODY_LIMIT: usize = 1024 * 1024;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct ApiConfig {
    /// When set, `/api/*` and `/connections*` (and the gRPC API) require
    /// `Authorization: Bearer <api_key>`. Default none, for a laptop run.
    pub api_key: Option<Secret>,
    /// Largest HTTP API request body. Default [`DEFAULT_API_BODY_LIMIT`].
    pub api_body_limit: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            api_key: None,
            api_body_limit: DEFAULT_API_BODY_LIMIT,
        }
    }
}
