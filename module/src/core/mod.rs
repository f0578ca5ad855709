//! The queue core: task life cycle over an abstract store. No FFI types here,
//! no clock and no randomness, so plain `cargo test` covers all of it.

pub mod error;
pub mod holders;
pub mod keys;
pub mod native;
pub mod periodic;
pub mod queue;
pub mod record;
pub mod schedule;
pub mod store;

#[cfg(test)]
mod tests;
