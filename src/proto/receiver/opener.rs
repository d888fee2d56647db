//! Opening a keyed session's data frames away from the receiver's state:
//! the AEAD is the dearest step of taking a frame, and a receive queue's
//! thread can run it without holding the receiver, so several queues open
//! their frames at once. The verdict travels with the frame's bytes
//! ([`Opened`]), and only a [`DataOpener`] makes one.

use std::sync::Arc;

use crate::proto::auth::{DataKey, DATA_TAG_LEN};
use crate::wire::message::{Header, Kind, HEADER_LEN};

/// What a queue thread needs to check (and, encrypted, open) one session's
/// data frames on its own ([`super::Receiver::data_opener`]).
#[derive(Clone)]
pub struct DataOpener {
    pub(super) session: u64,
    pub(super) cookie: u64,
    pub(super) key: Arc<DataKey>,
    pub(super) encrypted: bool,
}

impl std::fmt::Debug for DataOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataOpener(session {:x}, encrypted {})", self.session, self.encrypted)
    }
}

/// A data frame a [`DataOpener`] checked, its payload opened in place if
/// the session is encrypted, with the verdict; for
/// [`super::Receiver::on_data_opened`].
#[derive(Debug)]
pub struct Opened<'a> {
    pub(super) bytes: &'a mut [u8],
    pub(super) verdict: Verdict,
}

/// Which frame a verdict is for, and whether its tag held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Verdict {
    pub(super) session: u64,
    pub(super) cookie: u64,
    pub(super) chunk: u64,
    pub(super) authentic: bool,
}

impl DataOpener {
    /// Checks `bytes` if it is a data frame of this session (and opens its
    /// payload in place, encrypted); hands back anything else untouched,
    /// for the receiver to check.
    pub fn open<'a>(&self, bytes: &'a mut [u8]) -> Result<Opened<'a>, &'a mut [u8]> {
        let Ok(h) = Header::new_checked(bytes) else { return Err(bytes) };
        if h.kind() != Kind::Data || h.session() != self.session || h.cookie() != self.cookie {
            return Err(bytes);
        }
        let (chunk, len) = (h.seq(), h.body().len());
        let authentic = open_data(&self.key, self.encrypted, chunk, len, bytes);
        let verdict = Verdict { session: self.session, cookie: self.cookie, chunk, authentic };
        Ok(Opened { bytes, verdict })
    }
}

/// The tag check of chunk `chunk`'s frame `bytes` (header, a `len`-byte
/// payload, the tag); encrypted, the payload is opened in place.
pub(super) fn open_data(key: &DataKey, encrypted: bool, chunk: u64, len: usize, bytes: &mut [u8]) -> bool {
    let Some(framed) = bytes.get_mut(..HEADER_LEN + len + DATA_TAG_LEN) else { return false };
    let (message, tag) = framed.split_at_mut(HEADER_LEN + len);
    if encrypted {
        let (header, payload) = message.split_at_mut(HEADER_LEN);
        key.open(chunk, header, payload, tag)
    } else {
        key.tag_matches(chunk, message, tag)
    }
}
