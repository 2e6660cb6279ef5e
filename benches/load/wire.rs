//! Just enough of the wire format for the load generator and the ceiling:
//! framing of one list (to find where it ends and read its first two
//! values) and the requests of the Postfix handshake mix, pre-encoded.
//! The crate's own codec is measured by `benches/codec.rs`; here the
//! generator must stay cheap so that it is not the bottleneck.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// One framed list: its length and its first two values.
pub struct List<'a> {
    /// Bytes of the list, terminator included.
    pub len: usize,
    /// The first attribute's value (`request` name, or reply `status`).
    pub first: &'a [u8],
    /// The second attribute's value (e.g. a reply's `session`), if any.
    pub second: Option<&'a [u8]>,
}

/// Frames the first complete list in `buf`; `None` while it is incomplete.
pub fn frame(buf: &[u8]) -> Option<List<'_>> {
    let mut pos = 0;
    let mut values: [Option<&[u8]>; 2] = [None, None];
    let mut n = 0;
    loop {
        let name_end = pos + memchr::memchr(0, buf.get(pos..)?)?;
        if name_end == pos {
            return Some(List {
                len: pos + 1,
                first: values[0].unwrap_or_default(),
                second: values[1],
            });
        }
        let value_start = name_end + 1;
        let value_end = value_start + memchr::memchr(0, buf.get(value_start..)?)?;
        if n < 2 {
            values[n] = Some(&buf[value_start..value_end]);
        }
        n += 1;
        pos = value_end + 1;
    }
}

fn list(parts: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum::<usize>() + 1);
    for p in parts {
        v.extend_from_slice(p);
        v.push(0);
    }
    v.push(0);
    v
}

/// `seed` of 32 bytes (`tls_daemon_random_bytes`' default).
pub fn seed() -> Vec<u8> {
    list(&[b"request", b"seed", b"size", b"32"])
}

/// `tktkey` for the current key, as smtpd asks when issuing a ticket.
pub fn tktkey() -> Vec<u8> {
    list(&[b"request", b"tktkey", b"keyname", b""])
}

pub fn policy(cache_type: &str) -> Vec<u8> {
    list(&[b"request", b"policy", b"cache_type", cache_type.as_bytes()])
}

pub fn lookup(cache_type: &str, id: &[u8]) -> Vec<u8> {
    list(&[
        b"request",
        b"lookup",
        b"cache_type",
        cache_type.as_bytes(),
        b"cache_id",
        id,
    ])
}

/// `update` with a session already in base64.
pub fn update(cache_type: &str, id: &[u8], session_b64: &[u8]) -> Vec<u8> {
    list(&[
        b"request",
        b"update",
        b"cache_type",
        cache_type.as_bytes(),
        b"cache_id",
        id,
        b"session",
        session_b64,
    ])
}

/// A pool of `n` pseudo-random session blobs of `min..=max` bytes, in
/// base64 as they travel (DER sessions look random to base64).
pub fn session_pool(n: usize, min: usize, max: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let len = min + rng.below((max - min + 1) as u64) as usize;
            let raw: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            STANDARD.encode(raw).into_bytes()
        })
        .collect()
}

/// The reply status as a C int (`4294967295` is -1), if well-formed.
pub fn status(value: &[u8]) -> Option<i32> {
    std::str::from_utf8(value)
        .ok()?
        .parse::<u32>()
        .ok()
        .map(|v| v as i32)
}

/// xorshift64*: cheap, deterministic per connection.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n` (n > 0; the modulo bias is irrelevant here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / ((1u64 << 53) as f64) < p
    }
}
