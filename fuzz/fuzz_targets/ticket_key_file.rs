//! The ticket key file loader: any file content is a key ring or "not a
//! key file", never a panic; a ring read back writes the same three-slot
//! bytes; and a loaded ring, rotated at any time, holds no key that would
//! encrypt beyond the lifetime the timeout allows (a file from a clock
//! that ran ahead cannot pin a key).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tlsmgr::tickets::file::{from_bytes, to_bytes};

fuzz_target!(|input: (u64, u32, &[u8])| {
    let (now, timeout, data) = input;
    let Some(mut ring) = from_bytes(data) else {
        return;
    };
    let again = to_bytes(&ring);
    assert_eq!(from_bytes(&again).as_ref(), Some(&ring));
    // Postfix's timeouts: 0 (tickets off) or 120 s to 100 days.
    let timeout = if timeout == 0 { 0 } else { 120 + timeout % 8_640_000 };
    let now = now % (1 << 40);
    let mut counter = 0u8;
    ring.rotate(now, timeout, &mut |b| {
        for x in b.iter_mut() {
            counter = counter.wrapping_add(1);
            *x = counter;
        }
    });
    if timeout > 0 {
        let t = i64::from(timeout / 2);
        let now = now as i64;
        for k in [ring.previous, ring.current, ring.next].into_iter().flatten() {
            assert!(
                k.tout_secs() <= now + 2 * t,
                "key expires at {} > now {now} + 2t",
                k.tout_secs()
            );
        }
    }
});
