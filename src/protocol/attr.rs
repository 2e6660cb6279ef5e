//! Framing of one attribute list, `*(name NUL value NUL) NUL`, out of a byte
//! buffer (spec §1.2), the primitive value codecs, and the size limits.
//!
//! Postfix enforces no limit on names or values; we do, so that a peer can
//! never make us buffer without bound. Past a limit the framing fails at
//! once, even before the terminating NUL has arrived, and the connection is
//! closed.

use bytes::{BufMut, Bytes, BytesMut};

/// One attribute: name and raw (still encoded) value.
pub type Attr = (Bytes, Bytes);

/// Size limits of one attribute list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest attribute name. The longest real one, `cache_type`, has 10
    /// bytes.
    pub max_name: usize,
    /// Longest attribute value (the encoded text). Real sessions are 1–4 KiB
    /// of DER, about 5.5 KiB of base64 (spec §1.2); 192 KiB leaves room for
    /// sessions of up to 144 KiB, over 30 times a large real one, and still
    /// fits a list of [`Limits::max_list`] with a long cache id.
    pub max_value: usize,
    /// Most attributes in one list. Requests have at most 4.
    pub max_attrs: usize,
    /// Longest list, every name, value and NUL up to and including the
    /// terminator. The largest real request, an `update`, is a session of a
    /// few KiB of base64 plus a cache id well under 1 KiB; 256 KiB holds a
    /// maximal value with 64 KiB to spare for the id. Without a cap on the
    /// whole list, `max_attrs` values of `max_value` bytes each let one
    /// connection make us buffer (and scan) megabytes for nothing: no real
    /// request comes near this.
    pub max_list: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_name: 64,
            max_value: 192 << 10,
            max_attrs: 16,
            max_list: 256 << 10,
        }
    }
}

/// A list that breaks a limit; the connection must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// An attribute name is longer than [`Limits::max_name`].
    #[error("attribute name longer than {limit} bytes")]
    NameTooLong {
        /// The limit.
        limit: usize,
    },
    /// A value is longer than [`Limits::max_value`].
    #[error("value of attribute {name} longer than {limit} bytes")]
    ValueTooLong {
        /// The attribute's name (lossy UTF-8).
        name: String,
        /// The limit.
        limit: usize,
    },
    /// More attributes than [`Limits::max_attrs`].
    #[error("more than {limit} attributes in one list")]
    TooManyAttributes {
        /// The limit.
        limit: usize,
    },
    /// A list longer than [`Limits::max_list`].
    #[error("attribute list longer than {limit} bytes")]
    ListTooLong {
        /// The limit.
        limit: usize,
    },
    /// The unfinished requests of all connections together would hold more
    /// than the process-wide budget (see [`super::codec::Budget`]).
    #[error("unfinished requests of all connections would hold more than {limit} bytes")]
    BudgetExceeded {
        /// The budget.
        limit: usize,
    },
}

/// Where one attribute lies in a list: name `start..name_end`, value
/// `name_end + 1..value_end`.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: usize,
    name_end: usize,
    value_end: usize,
}

impl Span {
    fn name(&self) -> std::ops::Range<usize> {
        self.start..self.name_end
    }
    fn value(&self) -> std::ops::Range<usize> {
        self.name_end + 1..self.value_end
    }
}

/// Decodes one complete list from the start of `buf`, copying each name and
/// value.
///
/// `Ok(None)`: incomplete, read more. `Ok(Some((attrs, used)))`: a list of
/// `used` bytes. `Err`: a limit was broken (possibly before the list is
/// complete).
///
/// Stateless: each call scans `buf` from its start. Fine for the client,
/// which reads replies of a server it trusts; a server reading from
/// strangers frames with [`split_list`], which resumes.
pub fn decode_list(buf: &[u8], limits: &Limits) -> Result<Option<(Vec<Attr>, usize)>, FrameError> {
    let mut scan = Scratch::default();
    let Some(used) = scan_list(buf, limits, &mut scan)? else {
        return Ok(None);
    };
    let attrs = scan
        .spans
        .iter()
        .map(|s| {
            (
                Bytes::copy_from_slice(&buf[s.name()]),
                Bytes::copy_from_slice(&buf[s.value()]),
            )
        })
        .collect();
    Ok(Some((attrs, used)))
}

/// The scan state of one read buffer, kept by its reader between reads:
/// the positions found so far and where the search for the next NUL
/// stopped. With it every byte of a list is looked at once however the
/// list is cut into reads; rescanning the whole unfinished list on each
/// read made a peer that sends one byte at a time cost time quadratic in
/// the list's length. The spans' room is reused between lists, so framing
/// allocates nothing for them.
///
/// A `Scratch` belongs to one buffer: between calls the buffer may only
/// grow at its end, or lose the complete list [`split_list`] took off its
/// front.
#[derive(Debug, Default)]
pub struct Scratch {
    /// The attributes complete so far.
    spans: Vec<Span>,
    /// Where the attribute being scanned starts (its name).
    attr_start: usize,
    /// The end of its name, once the name's NUL has been seen.
    name_end: Option<usize>,
    /// `buf[field start..searched]` holds no NUL: the next search starts
    /// here.
    searched: usize,
    /// Bytes searched over this scratch's life (tests and the fuzz target
    /// check that no byte is searched twice).
    scanned: u64,
    /// The spans are those of a list already split off (a [`Frame`] may
    /// still be reading them): the next scan starts afresh.
    complete: bool,
}

impl Scratch {
    /// Forgets the list being scanned (the next byte starts a new one).
    pub fn reset(&mut self) {
        self.complete = false;
        self.spans.clear();
        self.attr_start = 0;
        self.name_end = None;
        self.searched = 0;
    }

    /// Bytes of the buffer searched for NULs since this scratch was made.
    pub fn bytes_scanned(&self) -> u64 {
        self.scanned
    }
}

/// An attribute list read by position: names and values as bytes, and a
/// value as a [`Bytes`] that shares the buffer it came from. Requests are
/// decoded from this ([`super::request::decode`]), so the server needs no
/// list of pairs per request; a slice of decoded pairs is one too.
pub trait AttrList {
    /// How many attributes.
    fn count(&self) -> usize;
    /// The name of attribute `i` (`i < count()`).
    fn name(&self, i: usize) -> &[u8];
    /// The raw value of attribute `i`.
    fn value(&self, i: usize) -> &[u8];
    /// The raw value of attribute `i`, as a handle on the same memory.
    fn value_bytes(&self, i: usize) -> Bytes;
}

impl AttrList for [Attr] {
    fn count(&self) -> usize {
        self.len()
    }
    fn name(&self, i: usize) -> &[u8] {
        &self[i].0
    }
    fn value(&self, i: usize) -> &[u8] {
        &self[i].1
    }
    fn value_bytes(&self, i: usize) -> Bytes {
        self[i].1.clone()
    }
}

impl AttrList for Vec<Attr> {
    fn count(&self) -> usize {
        self.len()
    }
    fn name(&self, i: usize) -> &[u8] {
        self.as_slice().name(i)
    }
    fn value(&self, i: usize) -> &[u8] {
        self.as_slice().value(i)
    }
    fn value_bytes(&self, i: usize) -> Bytes {
        self.as_slice().value_bytes(i)
    }
}

/// One complete list split off a read buffer: its bytes, and where each
/// attribute lies in them (borrowed from the reader's [`Scratch`], whose
/// room is reused, so framing allocates nothing per list).
#[derive(Debug)]
pub struct Frame<'a> {
    list: Bytes,
    spans: &'a [Span],
}

impl AttrList for Frame<'_> {
    fn count(&self) -> usize {
        self.spans.len()
    }
    fn name(&self, i: usize) -> &[u8] {
        &self.list[self.spans[i].name()]
    }
    fn value(&self, i: usize) -> &[u8] {
        &self.list[self.spans[i].value()]
    }
    fn value_bytes(&self, i: usize) -> Bytes {
        self.list.slice(self.spans[i].value())
    }
}

/// [`decode_list`] for a read buffer: a complete list is split off the
/// front of `buf` and returned as a [`Frame`] over its bytes (no copies).
/// `scratch` keeps the scan between calls (see [`Scratch`]); after an
/// error it is reset, and after a complete list the next call starts a
/// new one.
pub fn split_frame<'a>(
    buf: &mut BytesMut,
    limits: &Limits,
    scratch: &'a mut Scratch,
) -> Result<Option<Frame<'a>>, FrameError> {
    if scratch.complete {
        scratch.reset();
    }
    let used = match scan_list(buf, limits, scratch) {
        Ok(Some(used)) => used,
        Ok(None) => return Ok(None),
        Err(e) => {
            scratch.reset();
            return Err(e);
        }
    };
    let list = buf.split_to(used).freeze();
    scratch.complete = true;
    Ok(Some(Frame {
        list,
        spans: &scratch.spans,
    }))
}

/// [`split_frame`], with the attributes as name/value pairs.
pub fn split_list(
    buf: &mut BytesMut,
    limits: &Limits,
    scratch: &mut Scratch,
) -> Result<Option<Vec<Attr>>, FrameError> {
    Ok(split_frame(buf, limits, scratch)?.map(|frame| {
        (0..frame.count())
            .map(|i| {
                (
                    frame.list.slice(frame.spans[i].name()),
                    frame.value_bytes(i),
                )
            })
            .collect()
    }))
}

/// Goes on finding the attributes of the list at the start of `buf` from
/// where `scan` stopped; returns the list's length once it is complete
/// (see [`decode_list`]). Limits fail as soon as they are broken, before
/// the terminator has arrived.
fn scan_list(buf: &[u8], limits: &Limits, scan: &mut Scratch) -> Result<Option<usize>, FrameError> {
    loop {
        let (field, max) = match scan.name_end {
            None => (scan.attr_start, limits.max_name),
            Some(e) => (e + 1, limits.max_value),
        };
        // The field's NUL must come within max + 1 bytes of its start, and
        // the list's terminator within max_list bytes of the list's start.
        let field_window = field.saturating_add(max).saturating_add(1);
        let end = field_window.min(limits.max_list).min(buf.len());
        let from = scan.searched.max(field);
        let window = buf.get(from..end).unwrap_or_default();
        let Some(i) = memchr::memchr(0, window) else {
            scan.scanned += window.len() as u64;
            scan.searched = from + window.len();
            if end == field_window {
                return Err(match scan.name_end {
                    None => FrameError::NameTooLong {
                        limit: limits.max_name,
                    },
                    Some(name_end) => FrameError::ValueTooLong {
                        name: String::from_utf8_lossy(
                            buf.get(scan.attr_start..name_end).unwrap_or_default(),
                        )
                        .into_owned(),
                        limit: limits.max_value,
                    },
                });
            }
            if end == limits.max_list && !buf.is_empty() {
                return Err(FrameError::ListTooLong {
                    limit: limits.max_list,
                });
            }
            return Ok(None);
        };
        scan.scanned += i as u64 + 1;
        let nul = from + i;
        scan.searched = nul + 1;
        match scan.name_end {
            None if nul == scan.attr_start => return Ok(Some(nul + 1)),
            None => {
                if scan.spans.len() == limits.max_attrs {
                    return Err(FrameError::TooManyAttributes {
                        limit: limits.max_attrs,
                    });
                }
                scan.name_end = Some(nul);
            }
            Some(name_end) => {
                scan.spans.push(Span {
                    start: scan.attr_start,
                    name_end,
                    value_end: nul,
                });
                scan.attr_start = nul + 1;
                scan.name_end = None;
            }
        }
    }
}

/// Appends a string attribute.
pub fn put_str(buf: &mut BytesMut, name: &str, value: &[u8]) {
    buf.reserve(name.len() + value.len() + 2);
    buf.put_slice(name.as_bytes());
    buf.put_u8(0);
    buf.put_slice(value);
    buf.put_u8(0);
}

/// Appends an int attribute: the C int printed as unsigned (`-1` is
/// `4294967295`), as Postfix's `%u` does.
pub fn put_int(buf: &mut BytesMut, name: &str, value: i32) {
    buf.reserve(name.len() + 12);
    buf.put_slice(name.as_bytes());
    buf.put_u8(0);
    // Digits by hand, from the right: every reply carries a status, and
    // `write!` costs a few hundred instructions per call.
    let mut n = value as u32;
    let mut digits = [0u8; 10];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.put_slice(&digits[at..]);
    buf.put_u8(0);
}

/// Appends a data attribute: padded standard base64, no line breaks,
/// encoded straight into `buf`.
pub fn put_data(buf: &mut BytesMut, name: &str, value: &[u8]) {
    let engine = base64_simd::STANDARD;
    let encoded_len = engine.encoded_length(value.len());
    buf.reserve(name.len() + encoded_len.saturating_add(2));
    buf.put_slice(name.as_bytes());
    buf.put_u8(0);
    let start = buf.len();
    buf.resize(start + encoded_len, 0);
    let written = engine
        .encode(value, base64_simd::Out::from_slice(&mut buf[start..]))
        .len();
    buf.truncate(start + written);
    buf.put_u8(0);
}

/// Ends a list.
pub fn end_list(buf: &mut BytesMut) {
    buf.put_u8(0);
}

/// Decodes an int value: ASCII digits only, fitting 32 bits unsigned, read
/// back as the C int (`4294967295` is -1).
pub fn int_value(value: &[u8]) -> Option<i32> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value)
        .ok()?
        .parse::<u32>()
        .ok()
        .map(|v| v as i32)
}

/// Decodes a data value: strict padded standard base64; empty is empty data.
pub fn data_value(value: &[u8]) -> Option<Bytes> {
    base64_simd::STANDARD
        .decode_to_vec(value)
        .ok()
        .map(Bytes::from)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn complete_incomplete_and_limits() {
        let l = Limits::default();
        let (attrs, used) = decode_list(b"a\0b\0\0rest", &l).unwrap().unwrap();
        assert_eq!(used, 5);
        assert_eq!(
            attrs,
            vec![(Bytes::from_static(b"a"), Bytes::from_static(b"b"))]
        );
        for cut in 0..5 {
            assert_eq!(decode_list(&b"a\0b\0\0"[..cut], &l).unwrap(), None);
        }
        assert_eq!(decode_list(b"\0", &l).unwrap(), Some((vec![], 1)));
        assert!(matches!(
            decode_list(&[b'n'; 65], &l),
            Err(FrameError::NameTooLong { .. })
        ));
        assert_eq!(decode_list(&[b'n'; 64], &l).unwrap(), None);
        let mut big = b"n\0".to_vec();
        big.extend(std::iter::repeat_n(b'v', (1 << 20) + 1));
        assert!(matches!(
            decode_list(&big, &l),
            Err(FrameError::ValueTooLong { .. })
        ));
        let many: Vec<u8> = b"a\0b\0".repeat(17);
        assert!(matches!(
            decode_list(&many, &l),
            Err(FrameError::TooManyAttributes { .. })
        ));
    }

    #[test]
    fn split_list_matches_decode_list_and_leaves_the_rest() {
        let l = Limits::default();
        let wire = b"request\0update\0session\0QUJD\0\0next\0".to_vec();
        let (copied, used) = decode_list(&wire, &l).unwrap().unwrap();
        let mut buf = BytesMut::from(&wire[..]);
        let split = split_list(&mut buf, &l, &mut Scratch::default())
            .unwrap()
            .unwrap();
        assert_eq!(split, copied);
        assert_eq!(&buf[..], &wire[used..]);
        // Incomplete: nothing is taken.
        let mut part = BytesMut::from(&wire[..used - 1]);
        assert_eq!(
            split_list(&mut part, &l, &mut Scratch::default()).unwrap(),
            None
        );
        assert_eq!(part.len(), used - 1);
        let mut long = BytesMut::from(&[b'n'; 65][..]);
        assert!(matches!(
            split_list(&mut long, &l, &mut Scratch::default()),
            Err(FrameError::NameTooLong { .. })
        ));
    }

    #[test]
    fn values() {
        assert_eq!(int_value(b"32"), Some(32));
        assert_eq!(int_value(b"4294967295"), Some(-1));
        assert_eq!(int_value(b"4294967296"), None);
        for bad in [&b""[..], b"-1", b"+1", b" 1", b"1x", b"abc"] {
            assert_eq!(int_value(bad), None, "{bad:?}");
        }
        assert_eq!(data_value(b"").unwrap(), Bytes::new());
        assert_eq!(data_value(b"QQ==").unwrap(), Bytes::from_static(b"A"));
        // The SIMD decoder accepts exactly what the reference one does,
        // non-canonical trailing bits included.
        let reference = base64::engine::general_purpose::STANDARD;
        for text in [
            &b"QR=="[..],
            b"QUI=",
            b"QUJ=",
            b"QUJD",
            b"QQ=",
            b"Q",
            b"QUJDRA==",
            b"QUJD RA==",
            b"QUJD\nRA==",
            b"QUJD-A==",
            b"////",
            b"____",
        ] {
            assert_eq!(
                data_value(text),
                base64::Engine::decode(&reference, text)
                    .ok()
                    .map(Bytes::from),
                "{text:?}"
            );
        }
        for bad in [&b"QQ"[..], b"Q===", b"!!!!", b"QQ==QQ=="] {
            assert_eq!(data_value(bad), None, "{bad:?}");
        }
        let mut buf = BytesMut::new();
        put_int(&mut buf, "status", -2);
        put_data(&mut buf, "seed", b"");
        end_list(&mut buf);
        assert_eq!(&buf[..], b"status\x004294967294\x00seed\x00\x00\x00");
        for (n, data) in (0..70u8).map(|n| (n, (0..n).collect::<Vec<u8>>())) {
            let mut buf = BytesMut::new();
            put_int(&mut buf, "n", i32::from(n));
            put_data(&mut buf, "d", &data);
            let mut want = format!("n\0{n}\0d\0").into_bytes();
            let reference = base64::engine::general_purpose::STANDARD;
            want.extend_from_slice(base64::Engine::encode(&reference, &data).as_bytes());
            want.push(0);
            assert_eq!(&buf[..], &want[..]);
        }
    }
}
