//! xdpblast: a file preloaded into an AF_XDP UMEM, sent as UDP at wire speed,
//! rebuilt and verified with BLAKE3 on the other side.
//!
//! The folders explain the architecture:
//! - [`wire`]: bytes on the wire, checked views for untrusted input;
//! - [`proto`]: the transfer protocol as pure state machines, time passed in;
//! - [`afxdp`]: the kernel-facing parts (UMEM, XSK rings, our XDP program), the
//!   only place with ring and UMEM `unsafe`;
//! - [`net`]: interface facts and the neighbour table, over netlink;
//! - [`datapath`]: a file into fully built UMEM frames, and the one transmit
//!   engine (post, pace, reap, kick) on any TX ring;
//! - [`io`]: drivers that move the protocol's datagrams (AF_XDP, UDP socket);
//! - [`bench`]: every mode side by side on a veth pair it creates;
//! - [`digest`]: the whole-stream BLAKE3 digest, hashed in pieces where the
//!   bytes already are and merged in the hash's own tree;
//! - [`tree`]: directory trees as one stream, and the receiver's safe making of them;
//! - [`report`]: human and JSON output, in [`units`];
//! - [`os`]: the libc calls outside the rings (errno kept as a value), the
//!   stop signals, this process's figures.

pub mod afxdp;
pub mod bench;
pub mod datapath;
pub mod digest;
pub mod io;
pub mod net;
pub mod os;
pub mod proto;
pub mod report;
pub mod tree;
pub mod units;
pub mod wire;
