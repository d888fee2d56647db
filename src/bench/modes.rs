//! The modes bench compares, as a type, and the rows of its table.

use std::fmt;
use std::str::FromStr;

/// One way of moving the file. `AfxdpKey` is AF_XDP with a pre-shared key on
/// both ends, authenticated only (`--no-encrypt`: the cost of the tags);
/// `AfxdpEnc` encrypts every payload as well, and `SendfileKtls` is
/// sendfile over TLS records, sealed by the kernel where it has kTLS.
/// `AfxdpInline` and `AfxdpThread` pin where the sender reads ahead
/// (`send --reader`). None of those five is in the default list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchMode {
    Afxdp,
    AfxdpKey,
    AfxdpEnc,
    AfxdpInline,
    AfxdpThread,
    Sendfile,
    Readwrite,
    Mmap,
    Splice,
    SendfileKtls,
}

impl BenchMode {
    pub const ALL: [BenchMode; 10] = [
        BenchMode::Afxdp,
        BenchMode::AfxdpKey,
        BenchMode::AfxdpEnc,
        BenchMode::AfxdpInline,
        BenchMode::AfxdpThread,
        BenchMode::Sendfile,
        BenchMode::SendfileKtls,
        BenchMode::Readwrite,
        BenchMode::Mmap,
        BenchMode::Splice,
    ];

    /// The name `--modes` takes.
    pub fn name(self) -> &'static str {
        match self {
            BenchMode::Afxdp => "afxdp",
            BenchMode::AfxdpKey => "afxdp-key",
            BenchMode::AfxdpEnc => "afxdp-enc",
            BenchMode::AfxdpInline => "afxdp-inline",
            BenchMode::AfxdpThread => "afxdp-thread",
            BenchMode::Sendfile => "sendfile",
            BenchMode::Readwrite => "readwrite",
            BenchMode::Mmap => "mmap",
            BenchMode::Splice => "splice",
            BenchMode::SendfileKtls => "sendfile-ktls",
        }
    }

    /// The name its results go by: AF_XDP on a veth runs in copy mode, and
    /// the table says so.
    pub fn result_name(self) -> &'static str {
        match self {
            BenchMode::Afxdp => "afxdp-copy",
            BenchMode::AfxdpKey => "afxdp-copy-key",
            BenchMode::AfxdpEnc => "afxdp-copy-enc",
            BenchMode::AfxdpInline => "afxdp-copy-inline",
            BenchMode::AfxdpThread => "afxdp-copy-thread",
            m => m.name(),
        }
    }

    pub fn is_afxdp(self) -> bool {
        matches!(
            self,
            BenchMode::Afxdp
                | BenchMode::AfxdpKey
                | BenchMode::AfxdpEnc
                | BenchMode::AfxdpInline
                | BenchMode::AfxdpThread
        )
    }

    /// Both ends take the bench's pre-shared key.
    pub fn keyed(self) -> bool {
        matches!(self, BenchMode::AfxdpKey | BenchMode::AfxdpEnc | BenchMode::SendfileKtls)
    }

    /// The file's bytes travel encrypted (a key, without `--no-encrypt`).
    pub fn encrypted(self) -> bool {
        matches!(self, BenchMode::AfxdpEnc | BenchMode::SendfileKtls)
    }

    /// The `send --reader` it pins, if any.
    pub fn reader(self) -> Option<&'static str> {
        match self {
            BenchMode::AfxdpInline => Some("inline"),
            BenchMode::AfxdpThread => Some("thread"),
            _ => None,
        }
    }

    /// `send --mode` for it.
    pub fn send_mode(self) -> &'static str {
        match self {
            m if m.is_afxdp() => "afxdp",
            BenchMode::SendfileKtls => "sendfile",
            m => m.name(),
        }
    }
}

impl fmt::Display for BenchMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BenchMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BenchMode::ALL.into_iter().find(|m| m.name() == s).ok_or_else(|| {
            let names: Vec<&str> = BenchMode::ALL.iter().map(|m| m.name()).collect();
            format!("unknown mode {s:?}; modes are {}", names.join(","))
        })
    }
}

/// One row of the table: a mode, and the queues (AF_XDP) or streams (TCP)
/// it runs with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Row {
    pub mode: BenchMode,
    pub lanes: u32,
}

impl Row {
    /// Each mode with `queues` lanes first (when above 1), then alone.
    pub fn all(modes: &[BenchMode], queues: u32) -> Vec<Row> {
        let mut rows = Vec::new();
        for &mode in modes {
            if queues > 1 {
                rows.push(Row { mode, lanes: queues });
            }
            rows.push(Row { mode, lanes: 1 });
        }
        rows
    }

    /// The table's name for `name`: with `-Nq` (queues) or `-Ns` (streams)
    /// when there are several.
    pub fn label(&self, name: &str) -> String {
        match (self.lanes, self.mode.is_afxdp()) {
            (1, _) => name.to_string(),
            (n, true) => format!("{name}-{n}q"),
            (n, false) => format!("{name}-{n}s"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mode_parses_back_from_its_name() {
        for m in BenchMode::ALL {
            assert_eq!(m.name().parse::<BenchMode>(), Ok(m));
        }
        let e = "afxdp-zc".parse::<BenchMode>().expect_err("not a mode");
        assert!(e.contains("afxdp-zc") && e.contains("sendfile"), "{e}");
        assert_eq!(Row { mode: BenchMode::Afxdp, lanes: 2 }.label("afxdp-copy"), "afxdp-copy-2q");
        assert_eq!(Row { mode: BenchMode::Splice, lanes: 2 }.label("splice"), "splice-2s");
    }
}
