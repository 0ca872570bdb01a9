#![allow(dead_code, unused_imports, unused_macros)]

pub mod binary;
pub mod client;
pub mod proxy;
pub mod raw;
pub mod servers;
pub mod world;
