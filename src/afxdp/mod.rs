//! The kernel-facing AF_XDP parts: UMEM memory, XSK rings, our XDP program.
//!
//! All ring and UMEM `unsafe` lives in [`umem`] and [`xsk`]; [`program`] wraps
//! the generated libbpf skeleton; [`preload`] turns a file into frames.

pub mod preload;
pub mod program;
pub mod umem;
pub mod xsk;
