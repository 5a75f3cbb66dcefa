//! Generates the `wsgate.v1` messages, server and client from `proto/` with protox (a
//! protobuf compiler in Rust): no system `protoc` needed. Also writes the encoded file
//! descriptor set that server reflection serves.
use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let proto = root.join("wsgate/v1/wsgate.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let fds = protox::compile([&proto], [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("wsgate_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // The client's `connect` constructor would clash with the Connect RPC: build a
        // client with `WsGateClient::new(channel)`.
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
