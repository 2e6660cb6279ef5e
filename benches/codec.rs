//! Micro-benchmarks of the sans-I/O protocol (issue 7, part 1): encoding and
//! decoding of every request and every reply, with session blobs of the
//! sizes Postfix sends (1 and 2.5 KiB of DER; 4 KiB for the upper end).
//!
//! Run: `cargo bench --bench codec`. Decoding is measured the way the server
//! (requests) and the client (replies) do it: framing of one attribute list
//! from a buffer, then the typed decode.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::hint::black_box;
use tlsmgr::protocol::attr::{self, Limits};
use tlsmgr::protocol::codec::ServerCodec;
use tlsmgr::protocol::{request, Reply, Request, Status};
use tokio_util::codec::Decoder;

/// Deterministic pseudo-random bytes (DER sessions look random).
fn blob(len: usize, seed: u64) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

const SMTPD_ID: &str =
    "smtpd&0D9A3C6E2F8B4A1D7E5C9B3A2F1E0D4C6B8A9F7E5D3C1B2A4F6E8D0C9B7A5E3D&0x30000b0&";

/// Every request, with a name for the report.
fn requests() -> Vec<(String, Request)> {
    let mut v = vec![
        ("seed".to_string(), Request::Seed { size: 32 }),
        (
            "policy".into(),
            Request::Policy {
                cache_type: b("smtpd"),
            },
        ),
        (
            "lookup".into(),
            Request::Lookup {
                cache_type: b("smtpd"),
                cache_id: b(SMTPD_ID),
            },
        ),
        (
            "delete".into(),
            Request::Delete {
                cache_type: b("smtpd"),
                cache_id: b(SMTPD_ID),
            },
        ),
        (
            "tktkey/current".into(),
            Request::TktKey {
                keyname: Bytes::new(),
            },
        ),
        (
            "tktkey/named".into(),
            Request::TktKey {
                keyname: blob(16, 7),
            },
        ),
    ];
    for kib in [1usize, 2, 4] {
        v.push((
            format!("update/{kib}KiB"),
            Request::Update {
                cache_type: b("smtpd"),
                cache_id: b(SMTPD_ID),
                session: blob(kib * 1024, kib as u64),
            },
        ));
    }
    v
}

/// Every reply shape, with a name for the report.
fn replies() -> Vec<(String, Request, Reply)> {
    let lookup = Request::Lookup {
        cache_type: b("smtpd"),
        cache_id: b(SMTPD_ID),
    };
    let mut v = vec![
        (
            "seed".to_string(),
            Request::Seed { size: 32 },
            Reply::Seed {
                status: Status::Ok,
                seed: blob(32, 1),
            },
        ),
        (
            "policy".into(),
            Request::Policy {
                cache_type: b("smtpd"),
            },
            Reply::Policy {
                status: Status::Ok,
                cachable: true,
                timeout: 3600,
            },
        ),
        (
            "lookup/miss".into(),
            lookup.clone(),
            Reply::Lookup {
                status: Status::Err,
                session: Bytes::new(),
            },
        ),
        (
            "update".into(),
            Request::Update {
                cache_type: b("smtpd"),
                cache_id: b(SMTPD_ID),
                session: blob(1024, 1),
            },
            Reply::Status(Status::Ok),
        ),
        (
            "tktkey".into(),
            Request::TktKey {
                keyname: Bytes::new(),
            },
            Reply::TktKey {
                status: Status::Ok,
                keybuf: blob(88, 3),
            },
        ),
    ];
    for kib in [1usize, 2, 4] {
        v.push((
            format!("lookup/hit/{kib}KiB"),
            lookup.clone(),
            Reply::Lookup {
                status: Status::Ok,
                session: blob(kib * 1024, kib as u64),
            },
        ));
    }
    v
}

fn encoded<T>(item: &T, enc: impl Fn(&T, &mut BytesMut)) -> BytesMut {
    let mut buf = BytesMut::new();
    enc(item, &mut buf);
    buf
}

fn bench_requests(c: &mut Criterion) {
    let mut g = c.benchmark_group("request");
    for (name, req) in requests() {
        let wire = encoded(&req, Request::encode);
        g.throughput(Throughput::Bytes(wire.len() as u64));
        g.bench_function(format!("encode/{name}"), |bch| {
            let mut buf = BytesMut::with_capacity(wire.len());
            bch.iter(|| {
                buf.clear();
                black_box(&req).encode(&mut buf);
                black_box(buf.len())
            })
        });
        // What the server does per request: frame, then typed decode.
        g.bench_function(format!("decode/{name}"), |bch| {
            let mut codec = ServerCodec::default();
            bch.iter_batched_ref(
                || wire.clone(),
                |buf| black_box(codec.decode(buf).unwrap()),
                BatchSize::SmallInput,
            )
        });
        // The same from one long-lived read buffer, as `Framed` feeds the
        // codec: the bytes arrive in the buffer, the codec takes the list.
        g.bench_function(format!("decode_stream/{name}"), |bch| {
            let mut codec = ServerCodec::default();
            let mut buf = BytesMut::with_capacity(8192);
            bch.iter(|| {
                buf.extend_from_slice(black_box(&wire));
                black_box(codec.decode(&mut buf).unwrap())
            })
        });
        // Framing alone, to split the decode cost.
        let limits = Limits::default();
        g.bench_function(format!("frame/{name}"), |bch| {
            bch.iter(|| black_box(attr::decode_list(black_box(&wire), &limits).unwrap()))
        });
        let list = attr::decode_list(&wire, &limits).unwrap().unwrap().0;
        g.bench_function(format!("typed/{name}"), |bch| {
            bch.iter(|| black_box(request::decode(black_box(&list))))
        });
    }
    g.finish();
}

fn bench_replies(c: &mut Criterion) {
    let mut g = c.benchmark_group("reply");
    let limits = Limits::default();
    for (name, req, reply) in replies() {
        let wire = encoded(&reply, Reply::encode);
        g.throughput(Throughput::Bytes(wire.len() as u64));
        g.bench_function(format!("encode/{name}"), |bch| {
            let mut buf = BytesMut::with_capacity(wire.len());
            bch.iter(|| {
                buf.clear();
                black_box(&reply).encode(&mut buf);
                black_box(buf.len())
            })
        });
        // What a client does per reply: frame, then typed decode.
        let kind = req.kind();
        g.bench_function(format!("decode/{name}"), |bch| {
            bch.iter(|| {
                let (list, _) = attr::decode_list(black_box(&wire), &limits)
                    .unwrap()
                    .unwrap();
                black_box(Reply::decode(kind, &list).unwrap())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_requests, bench_replies);
criterion_main!(benches);
