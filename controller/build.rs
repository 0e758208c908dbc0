//! Generates the server side of the gRPC services from `api/proto` (protox, no system
//! `protoc`); the messages themselves come from warden-api, which proxies share.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "../api/proto/warden/policy/v1/policy.proto",
        "../api/proto/warden/discovery/v1/discovery.proto",
    ];
    let descriptors = protox::compile(protos, ["../api/proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_transport(false)
        .codec_path("crate::codec::SmallBufferCodec")
        .extern_path(".warden.policy.v1", "::warden_api::policy::v1")
        .extern_path(".warden.discovery.v1", "::warden_api::discovery::v1")
        .compile_fds(descriptors)?;
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
