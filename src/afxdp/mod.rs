//! The kernel-facing AF_XDP parts: UMEM memory, XSK rings, our XDP program.
//!
//! All ring and UMEM `unsafe` lives in [`umem`] and [`xsk`] (and the
//! read-ahead's frame writes, under the contract of
//! [`umem::FrameWriter::frames_mut`]);
//! [`program`] wraps the generated libbpf skeleton; [`preload`] plans the frame
//! layout and reads a whole file into frames (raw mode); [`readahead`] streams
//! a file of any size through a bounded ring of frames (transfers).

pub mod preload;
pub mod program;
pub mod readahead;
pub mod umem;
pub mod xsk;
pub mod zerocopy;
