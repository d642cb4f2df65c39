//! Integration tests of the keyhaven facade: configuration, fallback, key resolution and
//! operations through the manager on every compiled backend.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod config;
#[cfg(feature = "file")]
mod fallback;
#[cfg(feature = "memory")]
mod ops;
#[cfg(feature = "memory")]
mod resolve;
