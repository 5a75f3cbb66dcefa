//! wsgate-server
