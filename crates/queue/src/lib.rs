//! Queue backends for GreenScale. Each keeps the promises of [`greenscale_core::Queue`].

pub mod redis;

pub use crate::redis::RedisQueue;
