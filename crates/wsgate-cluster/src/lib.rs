//! wsgate-cluster
