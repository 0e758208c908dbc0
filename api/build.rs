//! Compiles the `.proto` contract with protox (pure Rust, no system `protoc`) into prost
//! messages.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/warden/policy/v1/policy.proto",
        "proto/warden/discovery/v1/discovery.proto",
    ];
    let descriptors = protox::compile(protos, ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
