//! Micro-benchmarks of the session stores (issue 7, part 1): `get`, `put`
//! and `sweep_before` for the fjall and memory backends, with sessions of
//! 1, 2 and 4 KiB in a store already holding 10 000 entries; and, for
//! 2 KiB, the sweep again after 1 000 earlier sweeps (expiry cost must not
//! grow with what was removed before).
//!
//! Run: `cargo bench --bench store`. The fjall store lives in a temporary
//! directory on the same file system as `$TMPDIR`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use std::time::{Duration, Instant};
use tlsmgr::store::fjall::FjallStore;
use tlsmgr::store::memory::MemoryStore;
use tlsmgr::store::OpenOptions;
use tlsmgr::store::{Entry, Store};

/// Entries in the store before measuring (few under `cargo test`, which
/// runs each benchmark once without `--bench`).
fn prefill() -> u64 {
    if std::env::args().any(|a| a == "--bench") {
        10_000
    } else {
        500
    }
}
/// Sweeps run (untimed) before the `sweep…_after…` case.
fn aged_sweeps() -> usize {
    if std::env::args().any(|a| a == "--bench") {
        1_000
    } else {
        5
    }
}
/// Entries removed per measured sweep step.
const SWEEP_BATCH: usize = 100;
/// Timestamp of the live entries; stale ones are stored at 1.
const NOW: u64 = 1_700_000_000;

fn blob(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn id(n: u64) -> Vec<u8> {
    format!("smtpd&{n:064X}&0x30000b0&").into_bytes()
}

struct Backend {
    name: &'static str,
    open: fn(&std::path::Path) -> Box<dyn Store>,
}

fn backends() -> [Backend; 2] {
    [
        Backend {
            name: "memory",
            open: |_| Box::new(MemoryStore::new()),
        },
        Backend {
            name: "fjall",
            open: |dir| {
                Box::new(FjallStore::open(&dir.join("db"), OpenOptions::default()).unwrap())
            },
        },
    ]
}

fn bench_store(c: &mut Criterion) {
    for be in backends() {
        for kib in [1usize, 2, 4] {
            let tmp = tempfile::tempdir().unwrap();
            let store = (be.open)(tmp.path());
            let session = bytes::Bytes::from(blob(kib * 1024, kib as u64));
            let prefill = prefill();
            for n in 0..prefill {
                let entry = Entry {
                    stored_at: NOW,
                    session: session.clone(),
                };
                store.put(&id(n), &entry, 0).unwrap();
            }
            let mut g = c.benchmark_group(format!("store/{}", be.name));
            g.throughput(Throughput::Bytes(session.len() as u64));
            g.measurement_time(Duration::from_secs(3));
            let mut n = 0u64;
            g.bench_function(format!("get/{kib}KiB"), |bch| {
                bch.iter(|| {
                    n = (n + 7919) % prefill;
                    black_box(store.get(&id(n)).unwrap())
                })
            });
            // Replacing existing entries keeps the store size steady.
            let entry = Entry {
                stored_at: NOW,
                session: session.clone(),
            };
            g.bench_function(format!("put/{kib}KiB"), |bch| {
                bch.iter(|| {
                    n = (n + 7919) % prefill;
                    store.put(&id(n), black_box(&entry), 0).unwrap()
                })
            });
            // Each step: insert SWEEP_BATCH stale entries (not timed), then
            // time the sweep that removes them among the live ones.
            g.throughput(Throughput::Elements(SWEEP_BATCH as u64));
            let stale = Entry {
                stored_at: 1,
                session: session.clone(),
            };
            let mut next = prefill;
            g.bench_function(format!("sweep{SWEEP_BATCH}/{kib}KiB"), |bch| {
                bch.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        for _ in 0..SWEEP_BATCH {
                            store.put(&id(next), &stale, 0).unwrap();
                            next += 1;
                        }
                        let t = Instant::now();
                        let step = store.sweep_before(NOW, SWEEP_BATCH).unwrap();
                        total += t.elapsed();
                        assert_eq!(step.removed, SWEEP_BATCH);
                    }
                    total
                })
            });
            // The same after many earlier sweeps have left their removals
            // behind in the age index (tombstones until compaction): a sweep
            // must not have to walk over them, so this should match the case
            // above.
            if kib == 2 {
                for _ in 0..aged_sweeps() {
                    for _ in 0..SWEEP_BATCH {
                        store.put(&id(next), &stale, 0).unwrap();
                        next += 1;
                    }
                    store.sweep_before(NOW, SWEEP_BATCH).unwrap();
                }
                g.bench_function(
                    format!("sweep{SWEEP_BATCH}_after{}/{kib}KiB", aged_sweeps()),
                    |bch| {
                        bch.iter_custom(|iters| {
                            let mut total = Duration::ZERO;
                            for _ in 0..iters {
                                for _ in 0..SWEEP_BATCH {
                                    store.put(&id(next), &stale, 0).unwrap();
                                    next += 1;
                                }
                                let t = Instant::now();
                                let step = store.sweep_before(NOW, SWEEP_BATCH).unwrap();
                                total += t.elapsed();
                                assert_eq!(step.removed, SWEEP_BATCH);
                            }
                            total
                        })
                    },
                );
            }
            g.finish();
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).warm_up_time(Duration::from_secs(1));
    targets = bench_store
}
criterion_main!(benches);
