//! Queue backends for GreenScale. Each keeps the promises of [`greenscale_core::Queue`].

pub mod redis;
pub mod sqlite;

pub use crate::redis::RedisQueue;
pub use crate::sqlite::SqliteQueue;
