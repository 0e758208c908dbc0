//! Warden injector.

#![warn(missing_docs)]
