//! The kernel-facing AF_XDP parts: UMEM memory, XSK rings, our XDP program.
//! They know nothing of the protocol: they move frames, not chunks.
//!
//! All ring and UMEM `unsafe` lives in [`umem`] and [`xsk`] (and the
//! read-ahead's frame writes, under the contract of
//! [`umem::FrameWriter::frames_mut`]); [`program`] wraps the generated
//! libbpf skeleton; [`zerocopy`] says what the driver can do.

pub mod program;
pub mod umem;
pub mod xsk;
pub mod zerocopy;
