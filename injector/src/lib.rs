//! Warden injector.
