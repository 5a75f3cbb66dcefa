//! A view of the node handed to one edge as its axum state: only the parts that edge uses,
//! behind one `Arc`, so a request clones a single pointer.

use std::ops::Deref;
use std::sync::Arc;

pub struct View<T>(Arc<T>);

impl<T> View<T> {
    pub fn new(parts: T) -> Self {
        Self(Arc::new(parts))
    }
}

impl<T> Clone for View<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> Deref for View<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}
