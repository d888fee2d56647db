//! Drivers that move the protocol's datagrams between [`crate::proto`]'s state
//! machines and the kernel.
//!
//! - [`afxdp_send`]: the sender, preloaded UMEM frames posted on the TX ring;
//! - [`receive`]: the receiver loop shared by both receive paths, with
//!   [`afxdp_recv`] (our XDP program + an XSK) and [`udp_recv`] (recvmmsg);
//! - [`control`] and [`output`]: the control socket and the output file.

pub mod afxdp_recv;
pub mod afxdp_send;
pub mod control;
pub mod journal;
pub mod output;
pub mod raw_send;
pub mod receive;
pub mod resume;
pub mod sink;
pub mod stream_accept;
pub mod tcp;
pub mod udp_recv;

/// The name a Hello gives the input: its last path component, as UTF-8
/// (lossy), for a receiver whose `--out` is a directory.
pub fn file_name(path: &std::path::Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// `--queues N|auto`: how many queues a transfer uses on each side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueCount {
    /// Chosen from the interface's queues and the CPUs (see each side).
    Auto,
    Fixed(u32),
}

impl std::str::FromStr for QueueCount {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(QueueCount::Auto);
        }
        match s.parse::<u32>() {
            Ok(0) | Err(_) => Err(format!("{s:?} is neither a number of queues (1 or more) nor auto")),
            Ok(n) => Ok(QueueCount::Fixed(n)),
        }
    }
}
