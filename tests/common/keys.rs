//! Asking a running daemon for its ticket keys over a [`Client`].
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use tlsmgr::client::Client;
use tlsmgr::protocol::{Reply, Request, Status};
use tlsmgr::tickets::TicketKey;

/// The current encryption key's 88-byte struct (`tktkey` with an empty
/// name); panics on any other answer.
pub fn current_key(c: &mut Client) -> Bytes {
    match c
        .request(&Request::TktKey {
            keyname: Bytes::new(),
        })
        .unwrap()
    {
        Reply::TktKey {
            status: Status::Ok,
            keybuf,
        } => keybuf,
        other => panic!("tktkey: {other:?}"),
    }
}

/// [`current_key`], decoded.
pub fn current_ticket_key(c: &mut Client) -> TicketKey {
    TicketKey::from_bytes(&current_key(c)).unwrap()
}
