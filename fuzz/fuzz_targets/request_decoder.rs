//! The server's request decoder ([`ServerCodec`]) on arbitrary bytes: fed
//! as one read, in reads cut at points derived from the input, and a byte
//! at a time, under the default limits and two small sets that make every
//! limit easy to reach. It must never panic, must decode and fail the same
//! however the bytes are cut, must search each byte at most once, and must
//! never buffer or charge more than the limits and the budget allow.
//!
//! Run: `scripts/fuzz.sh request_decoder SECONDS` (seeds in seeds/request_decoder,
//! made by scripts/fuzz_seeds.py from the spec; new inputs go to corpus/).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tlsmgr::protocol::codec::{Budget, ServerCodec, PENDING_LIMIT};
use tlsmgr::protocol::{Incoming, Limits};
use tokio_util::codec::Decoder;

/// Large enough never to refuse (the runs compare their results).
static ROOMY: Budget = Budget::new(PENDING_LIMIT);
/// Small enough to refuse often.
static TIGHT: Budget = Budget::new(48);

/// The default limits, and two small sets that make every limit easy to
/// reach.
fn limit_sets() -> [Limits; 3] {
    [
        Limits::default(),
        Limits {
            max_name: 8,
            max_value: 32,
            max_attrs: 4,
            max_list: 100,
        },
        Limits {
            max_name: 3,
            max_value: 5,
            max_attrs: 2,
            max_list: 16,
        },
    ]
}

/// What a run decoded, its error's text, and the bytes it searched.
type Outcome = (Vec<Incoming>, Option<String>, u64);

/// Feeds `data` in reads of the given sizes (cycled), checking the bounds
/// after every decode.
fn run(
    data: &[u8],
    sizes: &mut dyn Iterator<Item = usize>,
    limits: Limits,
    budget: &'static Budget,
) -> Outcome {
    let mut codec = ServerCodec::with_budget(limits, budget);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut rest = data;
    // The most an unfinished list can hold by the per-field limits.
    let field_bound =
        limits.max_attrs * (limits.max_name + limits.max_value + 2) + limits.max_name + 1;
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(item)) => {
                    assert_eq!(codec.charged(), 0, "a complete list stays charged");
                    out.push(item);
                }
                Ok(None) => {
                    assert!(
                        buf.len() < limits.max_list,
                        "buffered {} of max_list {}",
                        buf.len(),
                        limits.max_list
                    );
                    assert!(
                        buf.len() <= field_bound,
                        "buffered {} > {field_bound}",
                        buf.len()
                    );
                    assert_eq!(codec.charged(), buf.len());
                    assert!(budget.used() <= budget.limit());
                    break;
                }
                Err(e) => {
                    assert_eq!(codec.charged(), 0, "a failed list stays charged");
                    return (out, Some(e.to_string()), codec.bytes_scanned());
                }
            }
        }
    }
    (out, None, codec.bytes_scanned())
}

/// Read sizes from the input itself: 1 to 64 bytes, from an FNV-1a hash
/// of the input walked as a xorshift stream.
fn cuts(data: &[u8]) -> impl Iterator<Item = usize> {
    let mut x = data.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    }) | 1;
    std::iter::from_fn(move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        Some((x % 64) as usize + 1)
    })
}

fuzz_target!(|data: &[u8]| {
    for limits in limit_sets() {
        let whole = run(data, &mut std::iter::empty(), limits, &ROOMY);
        let cut = run(data, &mut cuts(data), limits, &ROOMY);
        assert_eq!(cut.0, whole.0, "cut reads decode differently");
        assert_eq!(cut.1, whole.1, "cut reads fail differently");
        assert!(
            cut.2 <= data.len() as u64,
            "searched {} of {} bytes",
            cut.2,
            data.len()
        );
        if data.len() <= 256 {
            let bytewise = run(data, &mut std::iter::repeat(1), limits, &ROOMY);
            assert_eq!(bytewise.0, whole.0, "byte reads decode differently");
            assert_eq!(bytewise.1, whole.1, "byte reads fail differently");
            assert!(bytewise.2 <= data.len() as u64);
        }
        // A tight shared budget: refusals, never more than it allows, and
        // every byte given back when the codec goes.
        run(data, &mut cuts(data), limits, &TIGHT);
        assert_eq!(TIGHT.used(), 0, "a dropped codec kept its charge");
    }
    assert_eq!(ROOMY.used(), 0, "a dropped codec kept its charge");
});
