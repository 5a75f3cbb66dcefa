//! wsgate-core
