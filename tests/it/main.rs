//! The integration tests, one binary for all of them: each test binary links the whole
//! dependency tree, so one binary instead of nine saves minutes of linking and gigabytes of
//! disk on a fresh build. The modules are the former `tests/*.rs` files; nextest still runs
//! every test in its own process.

mod arbiters;
mod backup;
mod backup_stores;
mod common;
mod config_cli;
mod daemon;
mod docs;
mod http;
mod layering;
mod metrics;
mod mongo_service;
mod redis_service;
mod redis_supervision;
mod roles;
mod scheduler;
mod search_service;
mod systemd_unit;
mod volumes;
