//! Warden proxy.

#![warn(missing_docs)]
