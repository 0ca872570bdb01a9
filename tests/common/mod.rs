#![allow(dead_code)]

pub mod client;
pub mod proxy;
pub mod servers;
