//! The descriptors master(8) passes (spec §4.1): 5 = status channel,
//! 6.. = listening sockets; 3/4 (flow control) stay open and unused.

use std::os::fd::{FromRawFd, OwnedFd};

/// Takes ownership of a descriptor master passed us, if it is an open
/// socket (a listening one when `listening`).
pub(super) fn inherited_fd(fd: i32, listening: bool) -> Option<OwnedFd> {
    // SAFETY: borrowing a raw fd for two queries; an unopened fd yields
    // EBADF and no side effects.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let st = nix::sys::stat::fstat(borrowed).ok()?;
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return None;
    }
    if listening
        && !nix::sys::socket::getsockopt(&borrowed, nix::sys::socket::sockopt::AcceptConn)
            .unwrap_or(false)
    {
        return None;
    }
    // SAFETY: master(8) opened this descriptor for us and nothing else in
    // this process owns it; we take it over exactly once.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(super) fn set_cloexec(fd: &OwnedFd) {
    let _ = nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
}
