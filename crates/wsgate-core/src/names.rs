//! Short names (`state`, `kind`, `breaker`, …) read back from another node's answer.
//!
//! The connection views keep these as `&'static str`: a node builds them from its own
//! constants, and a listing of ten thousand connections should not allocate a `String` per
//! field. A view forwarded from another node (cluster-wide listings) arrives as JSON, so its
//! names are interned here: each distinct name is leaked once and shared afterwards. The set
//! is closed in practice (the few state, kind and breaker names of the nodes' version); a
//! peer that sends ever new names (a newer version, or a forged answer) gets [`UNKNOWN`]
//! once [`MAX_NAMES`] are known, so the leak stays bounded.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Deserializer};

/// At most this many distinct names are ever kept (a few dozen exist).
pub const MAX_NAMES: usize = 256;
/// What a name beyond [`MAX_NAMES`] reads as.
pub const UNKNOWN: &str = "unknown";

/// The `&'static str` equal to `name`, allocated at most once per distinct name.
pub fn intern(name: &str) -> &'static str {
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    intern_in(&mut names, name)
}

fn intern_in(names: &mut HashSet<&'static str>, name: &str) -> &'static str {
    if let Some(known) = names.get(name) {
        return known;
    }
    if names.len() >= MAX_NAMES {
        return UNKNOWN;
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.insert(leaked);
    leaked
}

/// `#[serde(deserialize_with = "crate::names::interned")]` for a `&'static str` field.
pub fn interned<'de, D: Deserializer<'de>>(d: D) -> Result<&'static str, D::Error> {
    let s = String::deserialize(d)?;
    Ok(intern(&s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_allocation_per_name() {
        let a = intern(&String::from("connected"));
        let b = intern(&String::from("connected"));
        assert!(std::ptr::eq(a, b));
        assert_eq!(a, "connected");
    }

    #[test]
    fn ever_new_names_stop_being_kept() {
        let mut names = HashSet::new();
        assert_eq!(intern_in(&mut names, "connected"), "connected");
        for i in 0..MAX_NAMES + 10 {
            intern_in(&mut names, &format!("name-{i}"));
        }
        assert_eq!(names.len(), MAX_NAMES);
        assert_eq!(intern_in(&mut names, "yet-another-name"), UNKNOWN);
        assert_eq!(intern_in(&mut names, "connected"), "connected");
    }
}
