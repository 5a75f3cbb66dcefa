//! wsgate-client
