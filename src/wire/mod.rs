//! Bytes on the wire.
//!
//! Untrusted bytes only ever meet a checked view ([`message::Header::new_checked`],
//! [`frame::parse_udp`]) that validates lengths before any field is read, so
//! parsing never panics. The parsed meaning ([`message::Message`]) is kept apart
//! from those views, in the style of smoltcp's `wire` module.

pub mod checksum;
pub mod frame;
pub mod manifest;
pub mod message;
pub mod stream;

/// Text that came from the network (an Abort's reason), made safe to print:
/// control characters, escape sequences and newlines are shown escaped
/// (`\u{1b}`, `\n`), so a peer cannot paint fake lines on a terminal or in
/// a log. At most `MAX_UNTRUSTED_TEXT` characters are kept.
pub fn untrusted_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_UNTRUSTED_TEXT));
    for (i, c) in s.chars().enumerate() {
        if i == MAX_UNTRUSTED_TEXT {
            out.push_str("...");
            break;
        }
        // Bidirectional overrides and other format characters can reorder
        // what a terminal shows; escape them with the controls.
        let format_char = matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if c.is_control() || format_char || c == '\\' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A file name from the network, if it is safe to join to a directory
/// ([`file_name_problem`] finds nothing wrong with it).
pub fn safe_file_name(name: &str) -> Option<&str> {
    file_name_problem(name).is_none().then_some(name)
}

/// What keeps `name` from being joined to a directory, in words, if
/// anything: it must be one path component (no `/`), not `.` or `..`, and
/// hold nothing that would fool a terminal or a shell later (control or
/// bidirectional format characters, a backslash, a leading `-`).
pub fn file_name_problem(name: &str) -> Option<&'static str> {
    let format_char =
        |c: char| matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if name.is_empty() {
        Some("is empty")
    } else if name.len() > message::MAX_NAME_LEN {
        Some("is longer than 255 bytes")
    } else if name == "." || name == ".." {
        Some("names a directory")
    } else if name.starts_with('-') {
        Some("starts with '-', which a shell command would take for an option")
    } else if name.chars().any(|c| c == '/' || c == '\\') {
        Some("holds a '/' or '\\'")
    } else if name.chars().any(|c| c.is_control() || format_char(c)) {
        Some("holds a control or text-direction character, which could fool a terminal")
    } else {
        None
    }
}

/// Most characters of network text kept by [`untrusted_text`].
pub const MAX_UNTRUSTED_TEXT: usize = 200;

/// Why a datagram was refused. Every variant is a drop reason the receiver counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WireError {
    /// Shorter than the header it claims to carry.
    Truncated,
    /// Not an xdpblast datagram.
    BadMagic,
    /// An xdpblast datagram of a version we do not speak.
    BadVersion,
    /// The length field disagrees with the bytes present.
    BadLength,
    /// A kind this version does not define.
    UnknownKind,
    /// The body of a known kind is malformed.
    BadBody,
    /// Not Ethernet / IP / UDP, or a header was inconsistent.
    NotUdp,
    /// The IPv4 header or UDP checksum does not match: damaged on the way.
    BadChecksum,
}

impl WireError {
    pub fn as_str(self) -> &'static str {
        match self {
            WireError::Truncated => "truncated",
            WireError::BadMagic => "bad_magic",
            WireError::BadVersion => "bad_version",
            WireError::BadLength => "bad_length",
            WireError::UnknownKind => "unknown_kind",
            WireError::BadBody => "bad_body",
            WireError::NotUdp => "not_udp",
            WireError::BadChecksum => "bad_checksum",
        }
    }
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for WireError {}

#[cfg(test)]
mod tests {
    use super::{safe_file_name, untrusted_text};

    #[test]
    fn only_plain_file_names_are_taken() {
        assert_eq!(safe_file_name("big.iso"), Some("big.iso"));
        assert_eq!(safe_file_name(".bashrc"), Some(".bashrc"));
        for bad in ["", ".", "..", "../etc/passwd", "a/b", "/etc/passwd", "x\ny", "-rf", "a\\b", "tab\tname"] {
            assert_eq!(safe_file_name(bad), None, "{bad:?}");
        }
        assert_eq!(safe_file_name(&"a".repeat(256)), None);
    }

    #[test]
    fn a_refused_name_is_told_the_rule_it_breaks() {
        use super::file_name_problem;
        assert_eq!(file_name_problem("big.iso"), None);
        assert!(file_name_problem("-dash.bin").is_some_and(|p| p.contains("starts with '-'")));
        assert!(file_name_problem("a\u{1b}[31mb").is_some_and(|p| p.contains("control")));
        assert!(file_name_problem("a/b").is_some_and(|p| p.contains('/')));
        assert!(file_name_problem("..").is_some_and(|p| p.contains("directory")));
    }

    #[test]
    fn network_text_cannot_paint_the_terminal() {
        let forged = "x\n\u{1b}[32mdigest verified; output committed\u{1b}[0m\r\u{202e}";
        let shown = untrusted_text(forged);
        assert!(!shown.chars().any(|c| c.is_control()), "{shown:?}");
        assert_eq!(shown, "x\\n\\u{1b}[32mdigest verified; output committed\\u{1b}[0m\\r\\u{202e}");
        assert_eq!(untrusted_text("disk full"), "disk full");
        assert_eq!(untrusted_text(&"a".repeat(1000)).len(), super::MAX_UNTRUSTED_TEXT + 3);
    }
}
