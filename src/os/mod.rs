//! The operating system under everything else: every libc call outside the
//! ring and UMEM modules, errno kept as a value ([`sys`]); the stop signals;
//! this process's figures ([`process`]); and the data-path syscall count.

pub mod ktls;
pub mod process;
pub mod signals;
pub mod sys;
pub mod syscount;
