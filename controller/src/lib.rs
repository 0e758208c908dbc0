//! Warden's control plane (DESIGN section 9): the policy CRDs, the in-memory index that
//! computes each workload's effective policies, and (in the `warden controller` command) the
//! watches that feed it and the API proxies subscribe to.

pub mod codec;
pub mod crd;
pub mod destinations;
pub mod discovery_api;
pub mod index;
pub mod lease;
pub mod open_streams;
pub mod policy_api;
pub mod serve;
pub mod status;
pub mod watch;
