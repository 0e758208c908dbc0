//! Warden's control-plane contract (DESIGN section 9): the messages of `warden.policy.v1`,
//! generated from `proto/` at build time (protox, no system `protoc`), and their conversion
//! to and from warden-core's policy model. The gRPC service code lives with its server (the
//! controller) and its client (the proxy), which share only these messages.

pub mod convert;
pub mod grpc;

/// `warden.discovery.v1`: who must answer at the destinations a proxy's app uses.
pub mod discovery {
    /// Messages and enums of `warden.discovery.v1` (documented in the `.proto`).
    #[allow(missing_docs, clippy::doc_lazy_continuation)]
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/warden.discovery.v1.rs"));
    }
}

/// `warden.policy.v1`: inbound policy, the first version of the contract.
pub mod policy {
    /// Messages and enums of `warden.policy.v1` (documented in the `.proto`).
    #[allow(missing_docs, clippy::doc_lazy_continuation)]
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/warden.policy.v1.rs"));
    }
}
