//! Warden proxy.
