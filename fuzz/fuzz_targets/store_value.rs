//! The fjall store's record decoder: whatever bytes a damaged or planted
//! store holds, decoding gives an entry or `Malformed`, never a panic, and
//! a decoded entry encodes back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tlsmgr::store::fjall::{decode_record, encode_record};
use tlsmgr::store::StoreError;

fuzz_target!(|data: &[u8]| {
    match decode_record(data) {
        Ok(entry) => {
            assert!(data.len() >= 8);
            assert_eq!(encode_record(&entry), data);
        }
        Err(StoreError::Malformed(_)) => assert!(data.len() < 8),
        Err(e) => panic!("unexpected error {e}"),
    }
});
