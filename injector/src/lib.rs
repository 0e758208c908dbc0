//! warden-injector: the mutating admission webhook that adds Warden to pods.
//!
//! - [`patch`]: the pure pod patch (pod + settings -> JSON patch, or why not);
//! - [`webhook`]: AdmissionReview handling and the HTTPS handler;
//! - [`server`]: the HTTPS server and its serving certificate;
//! - [`config`]: what gets injected, with defaults;
//! - [`grants`]: which weakening annotations MeshPolicies allow in each namespace;
//! - [`cni`]: what the CNI plugin does with a pod (CNI mode), as a pure function.

#![warn(missing_docs)]

pub mod cni;
pub mod config;
pub mod grants;
pub mod patch;
pub mod server;
pub mod webhook;
