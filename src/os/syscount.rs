//! Data-path syscalls this process issued, counted at each call site (kicks,
//! polls, control datagrams, recvmmsg, read/write/sendfile/splice, pwritev,
//! read-back). The bench divides them by the bytes moved. Setup calls (socket,
//! bind, mmap, BPF loading) are not counted: they do not scale with the file.

use std::sync::atomic::{AtomicU64, Ordering};

static SYSCALLS: AtomicU64 = AtomicU64::new(0);

pub fn count(n: u64) {
    SYSCALLS.fetch_add(n, Ordering::Relaxed);
}

pub fn total() -> u64 {
    SYSCALLS.load(Ordering::Relaxed)
}
