//! The client protocol decoder: any text a client sends must decode to a request or an
//! error with a code, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err((_, e)) = wsgate_core::protocol::decode(text) {
            assert!(!e.code.is_empty());
        }
    }
});
