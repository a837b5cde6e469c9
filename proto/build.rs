//! Compiles `proto/arca/*.proto` with protox (pure Rust), so no system
//! `protoc` is needed; the gRPC services in `cluster.proto` get tonic code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/arca/store.proto",
        "proto/arca/node.proto",
        "proto/arca/cluster.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    let mut config = prost_build::Config::new();
    config.bytes(["."]);
    tonic_prost_build::configure()
        .build_transport(false)
        .compile_fds_with_config(descriptors, config)?;
    Ok(())
}
