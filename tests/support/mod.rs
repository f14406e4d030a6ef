//! Shared helpers for the integration tests: each test binary that needs them declares
//! `mod support;` and uses the modules it wants.

#![allow(dead_code)]

pub mod fake_kommo;
pub mod fake_n8n;
pub mod index;
pub mod kommo_client;
pub mod metrics;
pub mod recorder;
pub mod redis_cluster;
pub mod redis_sentinel;
pub mod redis_server;
pub mod service;
