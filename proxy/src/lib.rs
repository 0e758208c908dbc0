//! warden-proxy: the per-pod data plane.
//!
//! - [`outbound`]: the app's connections to other workloads, originating mTLS;
//! - [`inbound`]: mTLS from peer proxies, terminated and forwarded to the app;
//! - [`cli`]: the `proxy` and `init` commands (of the slim `warden-proxy` binary and of
//!   `warden`), [`logging`]: the process's logs, [`access_log`]: its access logs;
//! - [`proxy`]: wiring it all together, [`config`]: the one configuration module;
//! - [`policy_dir`], [`control_plane`]: where policies come from (files, or the controller);
//!   [`discovery`]: who must answer at each destination; [`grpc_client`]: gRPC without tonic;
//! - [`authz`]: the authorization hook; [`detect`], [`io`], [`http`], [`mesh`],
//!   [`listener`], [`metrics`], [`shared`]: the parts both directions share; [`workers`]:
//!   one single-threaded runtime per worker thread, each connection on one of them.

#![warn(missing_docs)]

pub mod access_log;
pub mod alloc;
pub mod app_probe;
pub mod audit;
pub mod authz;
pub mod cli;
pub mod config;
pub mod control_plane;
pub mod detect;
pub mod discovery;
pub mod drain;
pub mod grpc_client;
pub mod h2_client;
pub mod h2_server;
pub mod h2_stream;
#[cfg(feature = "hop-timing")]
pub mod hop_timing;
pub mod http;
pub mod http1;
pub mod inbound;
pub mod interception;
pub mod io;
pub mod listener;
pub mod log_writer;
pub mod logging;
pub mod mesh;
pub mod metrics;
pub mod original_dst;
pub mod outbound;
pub mod policy_dir;
pub mod proxy;
pub mod shared;
pub mod stall;
pub mod workers;
