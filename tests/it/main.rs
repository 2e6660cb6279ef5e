//! The integration tests, as one binary: one link of the dependency tree
//! instead of one a file, which was most of CI's test build. A module a
//! behaviour, named as its file, so that `cargo test --test it shared_link::`
//! runs what the file's tests are; the helpers of `tests/common` are
//! compiled once, here.
//!
//! libtest runs the tests of every module on the same threads of one
//! process, so a file that changes what the whole process shares stays a
//! binary of its own:
//! - `faults_fds.rs` raises this process's descriptor limit (setrlimit) and
//!   holds thousands of descriptors while it runs;
//! - `slow_feeder.rs` fills the process-wide pending-bytes budget of the
//!   codec (`protocol::codec::PENDING`) and measures the CPU time of the
//!   whole process, which any in-process daemon of another test would
//!   change;
//! - `log_stall.rs` compares the p99 latency of two rounds of 64
//!   connections, one with the log read and one with it stalled, so it
//!   measures whatever else runs beside it: next to this binary's volume
//!   tests it failed (p99 117 ms against 16 ms). It is a timed test, and
//!   flaky on a loaded machine even alone; its own binary keeps at least
//!   this binary's load off it.
//!
//! What remains is safe to share a process: `umask` is set only in the
//! children `serve_permissions` spawns (`pre_exec`), and the network
//! namespace of `shared_postfix` moves only the thread of its test (libtest
//! gives each test a thread of its own), and the processes it starts.

#[path = "../common/mod.rs"]
mod common;

mod admin;
mod admin_shared;
mod check;
mod chroot;
mod cli;
mod closed_pipe;
mod concurrency;
mod edit_styles;
mod eviction;
mod faults_clients;
mod faults_clock;
mod faults_config;
mod faults_disk;
mod faults_keys;
mod faults_kill;
mod live_reload;
mod log_injection;
mod malformed;
mod master_child;
mod metrics_endpoint;
mod module_layers;
mod os_rng;
mod postconf_agreement;
mod postfix_e2e;
mod postfix_unused;
mod prng_exchange;
mod prng_preopen;
mod prng_quality;
mod prng_sources;
mod protocol_props;
mod requests;
mod restart;
mod same_store;
mod secrets;
mod serve_permissions;
mod shared_faults;
mod shared_link;
mod shared_postfix;
mod shared_sentinel;
mod shared_store;
mod shared_tls;
mod sighup;
mod stats;
mod status_page;
mod stock_interop;
mod store;
mod store_recovery;
mod store_removed;
mod supervisor;
mod tlsmgr_cf;
mod wire_examples;
