//! The bytes other nodes send over Redis pub/sub or NATS (`wsgate_core::relay::wire`): any
//! payload must decode to an envelope or an error, never a panic (lengths are checked).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wsgate_core::relay::wire::decode(bytes::Bytes::copy_from_slice(data));
});
