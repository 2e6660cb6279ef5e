//! Property tests of the sans-I/O protocol: arbitrary bytes, fed in
//! arbitrary chunks, never panic the server codec and never make it buffer
//! past its limits; every request and reply survives encode → decode.
#![allow(clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use tlsmgr::protocol::attr::{decode_list, Limits};
use tlsmgr::protocol::codec::ServerCodec;
use tlsmgr::protocol::{Incoming, Reply, Request, RequestKind, Status};
use tokio_util::codec::Decoder;

/// Bytes that are not NUL (what a `str` attribute value can carry).
fn nul_free(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(1u8..=255, 0..max).prop_map(Bytes::from)
}

fn any_bytes(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        any::<i32>().prop_map(|size| Request::Seed { size }),
        nul_free(16).prop_map(|cache_type| Request::Policy { cache_type }),
        (nul_free(16), nul_free(300)).prop_map(|(cache_type, cache_id)| Request::Lookup {
            cache_type,
            cache_id
        }),
        (nul_free(16), nul_free(300), any_bytes(4096)).prop_map(
            |(cache_type, cache_id, session)| Request::Update {
                cache_type,
                cache_id,
                session
            }
        ),
        (nul_free(16), nul_free(300)).prop_map(|(cache_type, cache_id)| Request::Delete {
            cache_type,
            cache_id
        }),
        any_bytes(32).prop_map(|keyname| Request::TktKey { keyname }),
    ]
}

fn status() -> impl Strategy<Value = Status> {
    prop_oneof![Just(Status::Ok), Just(Status::Err), Just(Status::Fail)]
}

fn reply() -> impl Strategy<Value = (RequestKind, Reply)> {
    prop_oneof![
        status().prop_map(|s| (RequestKind::Update, Reply::Status(s))),
        status().prop_map(|s| (RequestKind::Delete, Reply::Status(s))),
        (status(), any_bytes(255))
            .prop_map(|(status, seed)| (RequestKind::Seed, Reply::Seed { status, seed })),
        (status(), any::<bool>(), any::<u32>()).prop_map(|(status, cachable, timeout)| (
            RequestKind::Policy,
            Reply::Policy {
                status,
                cachable,
                timeout
            }
        )),
        (status(), any_bytes(4096))
            .prop_map(|(status, session)| (RequestKind::Lookup, Reply::Lookup { status, session })),
        (status(), any_bytes(88))
            .prop_map(|(status, keybuf)| (RequestKind::TktKey, Reply::TktKey { status, keybuf })),
    ]
}

/// Feeds `input` to a fresh server codec in the given chunk sizes, the way
/// a socket delivers it; returns what was decoded and the first error.
fn feed(input: &[u8], chunks: &[usize], limits: Limits) -> (Vec<Incoming>, bool) {
    let mut codec = ServerCodec::new(limits);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut rest = input;
    let mut sizes = chunks.iter().cycle();
    while !rest.is_empty() {
        let n = (*sizes.next().unwrap()).clamp(1, rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(item)) => out.push(item),
                Ok(None) => break,
                Err(_) => return (out, true),
            }
        }
        // Whatever is left is an incomplete list, which the limits bound:
        // at most max_attrs names and values plus their NULs.
        let bound =
            (limits.max_attrs * (limits.max_name + limits.max_value + 2) + limits.max_name + 1)
                .min(limits.max_list);
        assert!(buf.len() <= bound, "buffered {} > {}", buf.len(), bound);
    }
    (out, false)
}

/// Like [`feed`], also returning the first error's text and how many bytes
/// the codec searched for NULs.
fn feed_counted(
    input: &[u8],
    chunks: &[usize],
    limits: Limits,
) -> (Vec<Incoming>, Option<String>, u64) {
    let mut codec = ServerCodec::new(limits);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut rest = input;
    let mut sizes = chunks.iter().cycle();
    while !rest.is_empty() {
        let n = (*sizes.next().unwrap()).clamp(1, rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(item)) => out.push(item),
                Ok(None) => break,
                Err(e) => return (out, Some(e.to_string()), codec.bytes_scanned()),
            }
        }
    }
    (out, None, codec.bytes_scanned())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic_the_codec(
        input in proptest::collection::vec(any::<u8>(), 0..2048),
        chunks in proptest::collection::vec(1usize..64, 1..8),
    ) {
        // Small limits so that the limit paths are hit often.
        let limits = Limits { max_name: 8, max_value: 32, max_attrs: 4, max_list: 100 };
        feed(&input, &chunks, limits);
        feed(&input, &chunks, Limits::default());
    }

    #[test]
    fn request_shaped_noise_never_panics(
        fields in proptest::collection::vec(
            prop_oneof![
                Just(b"request".to_vec()), Just(b"seed".to_vec()), Just(b"size".to_vec()),
                Just(b"lookup".to_vec()), Just(b"update".to_vec()), Just(b"cache_type".to_vec()),
                Just(b"cache_id".to_vec()), Just(b"session".to_vec()), Just(b"tktkey".to_vec()),
                Just(b"keyname".to_vec()), Just(b"4294967295".to_vec()), Just(b"QQ==".to_vec()),
                Just(b"W".to_vec()), Just(Vec::new()),
                proptest::collection::vec(any::<u8>(), 0..8),
            ],
            0..24,
        ),
        chunks in proptest::collection::vec(1usize..16, 1..4),
    ) {
        let mut input = Vec::new();
        for f in fields {
            input.extend_from_slice(&f);
            input.push(0);
        }
        feed(&input, &chunks, Limits::default());
    }

    #[test]
    fn request_roundtrip(r in request(), chunks in proptest::collection::vec(1usize..512, 1..4)) {
        let mut wire = BytesMut::new();
        r.encode(&mut wire);
        // Two copies back to back: the codec must split them exactly.
        let mut twice = wire.to_vec();
        twice.extend_from_slice(&wire);
        let (got, failed) = feed(&twice, &chunks, Limits::default());
        prop_assert!(!failed);
        prop_assert_eq!(got, vec![Incoming::Request(r.clone()), Incoming::Request(r)]);
    }

    #[test]
    fn reply_roundtrip((kind, r) in reply()) {
        let mut wire = BytesMut::new();
        r.encode(&mut wire);
        let (list, used) = decode_list(&wire, &Limits::default()).unwrap().unwrap();
        prop_assert_eq!(used, wire.len());
        prop_assert_eq!(Reply::decode(kind, &list).unwrap(), r);
    }

    /// The codec resumes its scan between reads: however the bytes are cut,
    /// it decodes what one read of them decodes, fails at the same point
    /// with the same error, and searches each byte at most once.
    #[test]
    fn chunked_reads_decode_as_one_read_and_scan_each_byte_once(
        input in proptest::collection::vec(
            prop_oneof![Just(0u8), Just(b'W'), any::<u8>()], 0..2048),
        chunks in proptest::collection::vec(1usize..64, 1..8),
    ) {
        let small = Limits { max_name: 8, max_value: 32, max_attrs: 4, max_list: 100 };
        for limits in [small, Limits::default()] {
            let whole = feed_counted(&input, &[input.len().max(1)], limits);
            let cut = feed_counted(&input, &chunks, limits);
            prop_assert_eq!(&cut.0, &whole.0);
            prop_assert_eq!(&cut.1, &whole.1);
            prop_assert!(cut.2 <= input.len() as u64, "scanned {} of {}", cut.2, input.len());
        }
    }
}
