//! The xdpblast header and the messages it frames.
//!
//! Every datagram, data or control, starts with the same 32-byte header:
//!
//! ```text
//!  0      4       5      6        8             16             24             32
//!  +------+-------+------+--------+--------------+--------------+--------------+------
//!  |magic |version| kind |body len|  session id  |    cookie    |     seq      | body
//!  +------+-------+------+--------+--------------+--------------+--------------+------
//! ```
//!
//! All integers are big-endian. `seq` is the chunk index for `Data`, the NACK
//! round for `Nack`, and 0 elsewhere. `body len` counts the bytes after the
//! header; trailing bytes beyond it (a seal or a data tag, see
//! [`crate::proto::auth`], or Ethernet padding) are ignored here.
//!
//! `cookie` is the receiver's answer to the first Hello, echoed in every later
//! datagram of the session in both directions (0 before it is known). A
//! sender that cannot see the receiver's replies cannot learn it, so it cannot
//! open a session or inject data under someone else's address.

use super::WireError;

pub const MAGIC: u32 = 0x5842_4c53; // "XBLS"
pub const VERSION: u8 = 5;
pub const HEADER_LEN: usize = 32;
/// Length of a [`SessionInfo`] body.
pub const SESSION_INFO_LEN: usize = 56;
/// The smallest chunk a receiver takes: tiny chunks would make its bitmap
/// and its writes grow for no link's sake (the least IPv4 MTU, 576, carries
/// more).
pub const MIN_CHUNK_SIZE: u32 = 256;
/// Fixed part of a NACK body before its bitmap.
pub const NACK_FIXED_LEN: usize = 40;

/// Where each header field lies.
pub mod field {
    use std::ops::Range;
    pub const MAGIC: Range<usize> = 0..4;
    pub const VERSION: usize = 4;
    pub const KIND: usize = 5;
    pub const BODY_LEN: Range<usize> = 6..8;
    pub const SESSION: Range<usize> = 8..16;
    pub const COOKIE: Range<usize> = 16..24;
    pub const SEQ: Range<usize> = 24..32;
}

/// Message kinds. Data-path kinds are below 16, control kinds from 16 up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Data = 1,
    Meta = 2,
    Hello = 16,
    HelloAck = 17,
    Nack = 18,
    End = 19,
    Done = 20,
    Abort = 21,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Data,
            2 => Kind::Meta,
            16 => Kind::Hello,
            17 => Kind::HelloAck,
            18 => Kind::Nack,
            19 => Kind::End,
            20 => Kind::Done,
            21 => Kind::Abort,
            _ => return None,
        })
    }
}

/// A checked view of the header over untrusted bytes.
///
/// Construction validates the length, magic, version, kind and body length, so
/// the accessors below cannot read out of bounds.
#[derive(Debug, Clone, Copy)]
pub struct Header<'a> {
    buf: &'a [u8],
    kind: Kind,
}

fn be_u16(b: &[u8]) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[..2]);
    u16::from_be_bytes(a)
}
fn be_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_be_bytes(a)
}
fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// Checks the header at `buf`'s start for a datagram of `total` bytes.
fn check_header(buf: &[u8], total: usize) -> Result<Kind, WireError> {
    if buf.len() < HEADER_LEN {
        return Err(WireError::Truncated);
    }
    if be_u32(&buf[field::MAGIC]) != MAGIC {
        return Err(WireError::BadMagic);
    }
    if buf[field::VERSION] != VERSION {
        return Err(WireError::BadVersion);
    }
    let kind = Kind::from_u8(buf[field::KIND]).ok_or(WireError::UnknownKind)?;
    let body_len = usize::from(be_u16(&buf[field::BODY_LEN]));
    if HEADER_LEN + body_len > total {
        return Err(WireError::BadLength);
    }
    Ok(kind)
}

impl<'a> Header<'a> {
    pub fn new_checked(buf: &'a [u8]) -> Result<Header<'a>, WireError> {
        let kind = check_header(buf, buf.len())?;
        Ok(Header { buf, kind })
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }
    pub fn session(&self) -> u64 {
        be_u64(&self.buf[field::SESSION])
    }
    pub fn cookie(&self) -> u64 {
        be_u64(&self.buf[field::COOKIE])
    }
    pub fn seq(&self) -> u64 {
        be_u64(&self.buf[field::SEQ])
    }
    pub fn body(&self) -> &'a [u8] {
        let len = usize::from(be_u16(&self.buf[field::BODY_LEN]));
        &self.buf[HEADER_LEN..HEADER_LEN + len]
    }
}

/// A Data message whose payload goes on past `head`: a datagram that came
/// as a chain of frames, `total` bytes in all. Its header is checked as
/// [`Header::new_checked`] checks a whole datagram's; the payload is the
/// `len` bytes after it, in the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataHead {
    pub session: u64,
    pub cookie: u64,
    pub chunk: u64,
    pub len: usize,
}

impl DataHead {
    /// `Ok(None)`: a sound header of another kind.
    pub fn parse(head: &[u8], total: usize) -> Result<Option<DataHead>, WireError> {
        if check_header(head, total)? != Kind::Data {
            return Ok(None);
        }
        Ok(Some(DataHead {
            session: be_u64(&head[field::SESSION]),
            cookie: be_u64(&head[field::COOKIE]),
            chunk: be_u64(&head[field::SEQ]),
            len: usize::from(be_u16(&head[field::BODY_LEN])),
        }))
    }
}

/// Writes a header into `out[..HEADER_LEN]`.
///
/// # Panics
/// If `out` is shorter than [`HEADER_LEN`]; callers size their buffers from the
/// same constant, so this is a programming error, not an input error.
pub fn emit_header(out: &mut [u8], kind: Kind, body_len: u16, session: u64, cookie: u64, seq: u64) {
    out[field::MAGIC].copy_from_slice(&MAGIC.to_be_bytes());
    out[field::VERSION] = VERSION;
    out[field::KIND] = kind as u8;
    out[field::BODY_LEN].copy_from_slice(&body_len.to_be_bytes());
    out[field::SESSION].copy_from_slice(&session.to_be_bytes());
    out[field::COOKIE].copy_from_slice(&cookie.to_be_bytes());
    out[field::SEQ].copy_from_slice(&seq.to_be_bytes());
}

/// What a transfer is: carried by Hello, by the first and last data-path
/// packets (Meta), and by the end-of-transfer probe (End).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionInfo {
    pub file_size: u64,
    pub chunk_size: u32,
    pub n_chunks: u64,
    /// BLAKE3 of the whole file. A Hello may go out before the sender has
    /// read the file (it says Hello first, then preloads); Meta and End always
    /// carry it.
    pub digest: Option<[u8; 32]>,
}

/// Who the sender's input file is: a hash of the host's boot id with the
/// file's device and inode. Equal on both ends only when the receiver would
/// write over the very file being sent (same host, same inode).
pub type SourceId = [u8; 16];

/// Length of a Hello body's fixed part: session info, source id, flags.
/// The input file's name follows (UTF-8, at most
/// [`MAX_NAME_LEN`] bytes; receivers that ignore it still parse the rest).
pub const HELLO_LEN: usize = SESSION_INFO_LEN + 16 + 4;
/// Longest file name a Hello carries, in bytes (NAME_MAX).
pub const MAX_NAME_LEN: usize = 255;
/// Hello flag: send the file over TCP, not the data path.
const HELLO_VIA_TCP: u32 = 1;
/// Hello flag: the sender seals its datagrams with a pre-shared key.
const HELLO_KEYED: u32 = 2;
/// Hello flag: data also comes from the ports listed after the fixed part
/// (a count byte, then the ports), one per transmit queue.
const HELLO_DATA_PORTS: u32 = 4;
/// Hello flag: the file's permission bits and modification time follow the
/// data ports ([`FileAttrs`]).
const HELLO_ATTRS: u32 = 8;
/// Bytes of [`FileAttrs`] in a Hello: the mode, then the mtime.
const ATTRS_LEN: usize = 4 + 8;
/// Hello flag (with [`HELLO_ATTRS`]): the file has holes, and the bytes its
/// data occupies follow the attributes (8 bytes).
const HELLO_SPARSE: u32 = 16;
/// Hello flag: the session carries a directory tree, and its shape
/// ([`TreeShape`], 12 bytes) follows the attributes.
const HELLO_TREE: u32 = 32;
const TREE_SHAPE_LEN: usize = 8 + 4;
/// Hello flag: the sender's answer to the receiver's [`Resume::Offer`]
/// (8 bytes after the tree shape): where the stream resumes, 0 to start
/// over.
const HELLO_RESUME: u32 = 64;
/// Hello flags (with [`HELLO_KEYED`]): every data frame's payload is
/// encrypted, not only tagged, under the AEAD [`HELLO_CHACHA`] names
/// (AES-256-GCM when it is clear).
const HELLO_ENCRYPTED: u32 = 128;
const HELLO_CHACHA: u32 = 256;
/// HelloAck flags: a [`Resume`] follows the largest datagram: an offer (its
/// offset and hash), or the settled offset.
const HELLO_ACK_RESUME_OFFER: u8 = 4;
const HELLO_ACK_RESUME_SETTLED: u8 = 8;

/// The AEAD that seals an encrypted session's payloads (a Hello's
/// `encrypted`): AES-256-GCM where the sender's CPU has AES instructions,
/// ChaCha20-Poly1305 where it does not. The receiver takes either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cipher {
    Aes256Gcm,
    ChaCha20Poly1305,
}

impl Cipher {
    pub fn name(self) -> &'static str {
        match self {
            Cipher::Aes256Gcm => "AES-256-GCM",
            Cipher::ChaCha20Poly1305 => "ChaCha20-Poly1305",
        }
    }
}

/// What a receiver holding a partial from an interrupted transfer says in
/// its HelloAck (see [`crate::proto`]'s resume rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// The stream's first `from` bytes are here already, and their digest
    /// (keyed as the session's is) is `hash`. The sender hashes its own
    /// first `from` bytes and answers with a Hello's `resume_from`.
    Offer { from: u64, hash: [u8; 32] },
    /// The sender's answer was taken: the stream resumes at `from` (0:
    /// from the start).
    Settled { from: u64 },
}

/// A session that carries a tree (see [`super::manifest`]): its stream is
/// the manifest, `manifest_len` bytes, then every file's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeShape {
    pub manifest_len: u64,
    /// Files and directories the manifest lists, so that a receiver can
    /// refuse a tree over its `--max-files` before anything arrives.
    pub entries: u32,
}

/// What the receiver keeps of the sender's file besides its bytes, as cp
/// and scp do: the permission bits (masked by the receiver's umask) and the
/// modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileAttrs {
    /// `st_mode`'s permission bits (`0o777`; set-id and sticky bits are
    /// never carried).
    pub mode: u32,
    /// Nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Some when the file has holes: the bytes its data occupies. The
    /// receiver then reserves that much, not the whole length, and keeps
    /// the holes (blocks of zeros are not written), as `cp --sparse` does.
    pub data_bytes: Option<u64>,
}

/// Most source ports a Hello lists (one per transmit queue of the sender).
/// HelloAck flags (body byte 8): the session is open; the receiver takes
/// files over TCP only.
const HELLO_ACK_OPENED: u8 = 1;
const HELLO_ACK_TCP_ONLY: u8 = 2;

pub const MAX_DATA_PORTS: usize = 64;

/// Chunks in a row that one transmit queue carries, with its source port,
/// when a sender has several (a Hello's [`DataPorts`]): chunk `c` belongs
/// to lane [`lane_of`]`(c, lanes)`. Each lane's first pass is then an
/// ordered stream on its own receive queue, so the receiver can tell a
/// gap in a lane from a lane that lags another. The runs are long enough
/// that a receive queue writes them with few `pwritev` calls.
pub const LANE_RUN: u64 = 64;

/// The lane (transmit queue, and index in [`DataPorts`]) of chunk `c`.
pub fn lane_of(c: u64, lanes: usize) -> usize {
    ((c / LANE_RUN) % lanes.max(1) as u64) as usize
}

/// The UDP source ports a sender's data comes from besides its control
/// port: one per transmit queue, so that RSS on the receiver's NIC spreads
/// the queues' flows over its receive queues.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DataPorts {
    len: u8,
    ports: [u16; MAX_DATA_PORTS],
}

impl DataPorts {
    pub const NONE: DataPorts = DataPorts { len: 0, ports: [0; MAX_DATA_PORTS] };

    /// `None` when there are more than [`MAX_DATA_PORTS`].
    pub fn new(ports: &[u16]) -> Option<DataPorts> {
        let mut d = DataPorts::NONE;
        d.ports.get_mut(..ports.len())?.copy_from_slice(ports);
        d.len = ports.len() as u8;
        Some(d)
    }

    pub fn as_slice(&self) -> &[u16] {
        &self.ports[..usize::from(self.len)]
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl std::fmt::Debug for DataPorts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

impl Default for DataPorts {
    fn default() -> Self {
        DataPorts::NONE
    }
}

/// `SessionInfo` flag: the digest field is valid.
const FLAG_DIGEST: u32 = 1;

impl SessionInfo {
    pub fn parse(body: &[u8]) -> Result<SessionInfo, WireError> {
        if body.len() < SESSION_INFO_LEN {
            return Err(WireError::BadBody);
        }
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&body[24..56]);
        let flags = be_u32(&body[12..16]);
        let info = SessionInfo {
            file_size: be_u64(&body[0..8]),
            chunk_size: be_u32(&body[8..12]),
            n_chunks: be_u64(&body[16..24]),
            digest: (flags & FLAG_DIGEST != 0).then_some(digest),
        };
        // The three sizes must agree; otherwise a hostile Hello could make the
        // receiver size its bitmap and its file inconsistently.
        if info.chunk_size == 0 || info.n_chunks != info.file_size.div_ceil(u64::from(info.chunk_size)) {
            return Err(WireError::BadBody);
        }
        Ok(info)
    }

    pub fn emit(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&self.file_size.to_be_bytes());
        out[8..12].copy_from_slice(&self.chunk_size.to_be_bytes());
        let flags = if self.digest.is_some() { FLAG_DIGEST } else { 0 };
        out[12..16].copy_from_slice(&flags.to_be_bytes());
        out[16..24].copy_from_slice(&self.n_chunks.to_be_bytes());
        out[24..56].copy_from_slice(&self.digest.unwrap_or([0; 32]));
    }

    /// Same transfer: sizes agree, and digests agree where both are known.
    pub fn same_transfer(&self, other: &SessionInfo) -> bool {
        self.file_size == other.file_size
            && self.chunk_size == other.chunk_size
            && self.n_chunks == other.n_chunks
            && (self.digest.is_none() || other.digest.is_none() || self.digest == other.digest)
    }

    /// Byte length of chunk `idx`, or `None` past the end.
    pub fn chunk_len(&self, idx: u64) -> Option<usize> {
        if idx >= self.n_chunks {
            return None;
        }
        let start = idx * u64::from(self.chunk_size);
        Some((self.file_size - start).min(u64::from(self.chunk_size)) as usize)
    }
}

/// A NACK: the receiver's view of one window of chunks, plus progress figures
/// the sender can use for its rate. An empty bitmap is a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nack<'a> {
    /// Round number; all parts of one round share it.
    pub round: u64,
    /// Part index within the round.
    pub part: u16,
    /// Distinct chunks the receiver holds.
    pub received: u64,
    /// Highest chunk index the receiver has taken in, plus one: how far the
    /// first pass has got through. The sender keeps a bounded window ahead of it.
    pub high: u64,
    /// Every chunk below this is held (the cumulative ack): a sender may reuse
    /// the memory of those chunks.
    pub prefix: u64,
    /// First chunk the bitmap describes.
    pub base: u64,
    /// Number of chunks the bitmap describes.
    pub nbits: u32,
    /// Bit i (LSB first within each byte) set = chunk `base + i` is missing.
    pub bitmap: &'a [u8],
    /// Loss the receiver saw since its previous report, in basis points
    /// (1/100 of a percent) of the first-pass chunks that report covers;
    /// `None` when no new chunks were covered. Drives the sender's rate.
    pub loss_bp: Option<u16>,
}

/// `loss_bp` on the wire when there is no sample.
const NO_LOSS_SAMPLE: u16 = u16::MAX;

impl<'a> Nack<'a> {
    pub fn missing(&self) -> impl Iterator<Item = u64> + '_ {
        let base = self.base;
        (0..self.nbits as usize).filter(move |i| self.bitmap[i / 8] & (1 << (i % 8)) != 0).map(move |i| base + i as u64)
    }
}

/// A parsed datagram. Borrowed bodies point into the checked buffer.
///
/// Hello is the large variant (its port list); a message lives on the
/// stack for one datagram's handling, so boxing it would cost an
/// allocation per Hello to save a copy of ~200 bytes nobody makes.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    Data {
        session: u64,
        chunk: u64,
        payload: &'a [u8],
    },
    /// `last` is false on the first data-path packet and true on the one that
    /// ends a pass (carried in `seq`: 0 or 1).
    Meta {
        session: u64,
        last: bool,
        info: SessionInfo,
    },
    /// Opens a session. The first Hello carries cookie 0 and opens nothing:
    /// the receiver answers with a cookie, and only a Hello that echoes it
    /// opens the session. `source` names the sender's input file (see
    /// [`SourceId`]); `via_tcp` asks for the file over TCP instead of the data
    /// path (the sender's fallback); `keyed`: the sender authenticates with a
    /// pre-shared key and tags its data frames (so a receiver without one
    /// can say so). `name`: the input file's name without its directory (may be empty),
    /// for a receiver whose `--out` is a directory. `data_ports`: further
    /// source ports the data comes from (one per transmit queue). `attrs`:
    /// the file's mode and mtime, for the receiver's copy. `tree`: the
    /// session carries a directory tree, not one file. `resume_from`: the
    /// sender's answer to the receiver's [`Resume::Offer`]. `encrypted`: with
    /// `keyed`, the payloads are encrypted with this AEAD, not only tagged.
    Hello {
        session: u64,
        info: SessionInfo,
        source: SourceId,
        via_tcp: bool,
        keyed: bool,
        encrypted: Option<Cipher>,
        name: &'a str,
        data_ports: DataPorts,
        attrs: Option<FileAttrs>,
        tree: Option<TreeShape>,
        resume_from: Option<u64>,
    },
    /// The receiver's answer, its cookie in the header. `opened` is false for
    /// the answer to a Hello without the cookie, true once the session is
    /// open. `tcp_only`: instead of a cookie, this receiver takes files over
    /// TCP only (`recv --mode tcp`), so a datagram sender in `--mode auto`
    /// switches to TCP. `delay_us`: how long the receiver held the Hello before answering
    /// (preparing its output), so the sender can take it out of its RTT sample.
    HelloAck {
        session: u64,
        delay_us: u64,
        opened: bool,
        tcp_only: bool,
        /// The largest UDP payload the receiver's data path takes (its MTU
        /// less IP and UDP headers); 0 when it does not know. A sender whose
        /// datagrams are larger sends smaller ones (older receivers send
        /// nine bytes of body, read as 0).
        max_datagram: u32,
        /// In an opened session's ack: the receiver holds a verified prefix
        /// of the stream, or has settled where the stream resumes.
        resume: Option<Resume>,
    },
    Nack {
        session: u64,
        nack: Nack<'a>,
    },
    /// End-of-transfer probe; `retransmits` is the sender's count so far.
    End {
        session: u64,
        info: SessionInfo,
        retransmits: u64,
    },
    Done {
        session: u64,
        ok: bool,
        digest: [u8; 32],
    },
    Abort {
        session: u64,
        reason: &'a str,
    },
}

impl Message<'static> {
    /// Session `session`'s Hello with every optional part left out: no
    /// source identity, datagrams not TCP, no key, no name, one port, no
    /// file attributes. Tests and tools start from it.
    pub fn plain_hello(session: u64, info: SessionInfo) -> Message<'static> {
        Message::Hello {
            session,
            info,
            source: [0; 16],
            via_tcp: false,
            keyed: false,
            encrypted: None,
            name: "",
            data_ports: DataPorts::NONE,
            attrs: None,
            tree: None,
            resume_from: None,
        }
    }
}

impl<'a> Message<'a> {
    pub fn parse(buf: &'a [u8]) -> Result<Message<'a>, WireError> {
        Message::parse_with_cookie(buf).map(|(m, _)| m)
    }

    /// Parses a datagram and returns its message with the header's cookie.
    pub fn parse_with_cookie(buf: &'a [u8]) -> Result<(Message<'a>, u64), WireError> {
        let h = Header::new_checked(buf)?;
        let session = h.session();
        let body = h.body();
        let msg = match h.kind() {
            Kind::Data => Message::Data { session, chunk: h.seq(), payload: body },
            Kind::Meta => Message::Meta { session, last: h.seq() == 1, info: SessionInfo::parse(body)? },
            Kind::Hello => {
                if body.len() < HELLO_LEN {
                    return Err(WireError::BadBody);
                }
                let info = SessionInfo::parse(body)?;
                let mut source = [0u8; 16];
                source.copy_from_slice(&body[SESSION_INFO_LEN..SESSION_INFO_LEN + 16]);
                let flags = be_u32(&body[SESSION_INFO_LEN + 16..SESSION_INFO_LEN + 20]);
                let mut name = &body[HELLO_LEN..];
                let mut data_ports = DataPorts::NONE;
                if flags & HELLO_DATA_PORTS != 0 {
                    let (&n, rest) = name.split_first().ok_or(WireError::BadBody)?;
                    let list = rest.get(..usize::from(n) * 2).ok_or(WireError::BadBody)?;
                    let ports: Vec<u16> = list.chunks_exact(2).map(|p| u16::from_be_bytes([p[0], p[1]])).collect();
                    if n == 0 || ports.contains(&0) {
                        return Err(WireError::BadBody);
                    }
                    data_ports = DataPorts::new(&ports).ok_or(WireError::BadBody)?;
                    name = &rest[list.len()..];
                }
                let mut attrs = None;
                if flags & HELLO_ATTRS != 0 {
                    let a = name.get(..ATTRS_LEN).ok_or(WireError::BadBody)?;
                    let mtime_ns = i64::from_be_bytes(a[4..].try_into().map_err(|_| WireError::BadBody)?);
                    name = &name[ATTRS_LEN..];
                    let mut data_bytes = None;
                    if flags & HELLO_SPARSE != 0 {
                        let d = name.get(..8).ok_or(WireError::BadBody)?;
                        data_bytes = Some(u64::from_be_bytes(d.try_into().map_err(|_| WireError::BadBody)?));
                        name = &name[8..];
                    }
                    attrs = Some(FileAttrs { mode: be_u32(&a[..4]) & 0o777, mtime_ns, data_bytes });
                } else if flags & HELLO_SPARSE != 0 {
                    return Err(WireError::BadBody);
                }
                let mut tree = None;
                if flags & HELLO_TREE != 0 {
                    let t = name.get(..TREE_SHAPE_LEN).ok_or(WireError::BadBody)?;
                    let manifest_len = be_u64(&t[..8]);
                    // The manifest is part of the stream the session info sizes.
                    if manifest_len == 0 || manifest_len > info.file_size {
                        return Err(WireError::BadBody);
                    }
                    tree = Some(TreeShape { manifest_len, entries: be_u32(&t[8..12]) });
                    name = &name[TREE_SHAPE_LEN..];
                }
                let mut resume_from = None;
                if flags & HELLO_RESUME != 0 {
                    let r = name.get(..8).ok_or(WireError::BadBody)?;
                    let from = be_u64(r);
                    if from > info.file_size {
                        return Err(WireError::BadBody);
                    }
                    resume_from = Some(from);
                    name = &name[8..];
                }
                if name.len() > MAX_NAME_LEN {
                    return Err(WireError::BadBody);
                }
                let encrypted = match (flags & HELLO_ENCRYPTED != 0, flags & HELLO_CHACHA != 0) {
                    (true, false) => Some(Cipher::Aes256Gcm),
                    (true, true) => Some(Cipher::ChaCha20Poly1305),
                    (false, false) => None,
                    (false, true) => return Err(WireError::BadBody),
                };
                if encrypted.is_some() && flags & HELLO_KEYED == 0 {
                    // Encryption needs the pre-shared key's session keys.
                    return Err(WireError::BadBody);
                }
                Message::Hello {
                    session,
                    info,
                    source,
                    via_tcp: flags & HELLO_VIA_TCP != 0,
                    keyed: flags & HELLO_KEYED != 0,
                    encrypted,
                    name: std::str::from_utf8(name).map_err(|_| WireError::BadBody)?,
                    data_ports,
                    attrs,
                    tree,
                    resume_from,
                }
            }
            Kind::End => {
                let info = SessionInfo::parse(body)?;
                let retransmits = body.get(SESSION_INFO_LEN..SESSION_INFO_LEN + 8).map_or(0, be_u64);
                Message::End { session, info, retransmits }
            }
            Kind::HelloAck => {
                if body.len() < 9 {
                    return Err(WireError::BadBody);
                }
                let max_datagram = body.get(9..13).map_or(0, be_u32);
                let flags = body[8];
                let resume = match flags & (HELLO_ACK_RESUME_OFFER | HELLO_ACK_RESUME_SETTLED) {
                    0 => None,
                    HELLO_ACK_RESUME_OFFER => {
                        let r = body.get(13..13 + 8 + 32).ok_or(WireError::BadBody)?;
                        let mut hash = [0u8; 32];
                        hash.copy_from_slice(&r[8..]);
                        Some(Resume::Offer { from: be_u64(r), hash })
                    }
                    HELLO_ACK_RESUME_SETTLED => {
                        Some(Resume::Settled { from: body.get(13..21).map(be_u64).ok_or(WireError::BadBody)? })
                    }
                    _ => return Err(WireError::BadBody),
                };
                Message::HelloAck {
                    session,
                    delay_us: be_u64(&body[..8]),
                    opened: flags & HELLO_ACK_OPENED != 0,
                    tcp_only: flags & HELLO_ACK_TCP_ONLY != 0,
                    max_datagram,
                    resume,
                }
            }
            Kind::Nack => {
                if body.len() < NACK_FIXED_LEN {
                    return Err(WireError::BadBody);
                }
                let part = be_u16(&body[0..2]);
                let loss_bp = match be_u16(&body[2..4]) {
                    NO_LOSS_SAMPLE => None,
                    l if l <= 10_000 => Some(l),
                    _ => return Err(WireError::BadBody),
                };
                let nbits = be_u32(&body[4..8]);
                let received = be_u64(&body[8..16]);
                let base = be_u64(&body[16..24]);
                let high = be_u64(&body[24..32]);
                let prefix = be_u64(&body[32..40]);
                let bitmap = &body[NACK_FIXED_LEN..];
                // The bitmap's length must match, and its chunk indexes fit a u64.
                if (nbits as usize).div_ceil(8) != bitmap.len() || base.checked_add(u64::from(nbits)).is_none() {
                    return Err(WireError::BadBody);
                }
                Message::Nack {
                    session,
                    nack: Nack { round: h.seq(), part, received, high, prefix, base, nbits, bitmap, loss_bp },
                }
            }
            Kind::Done => {
                if body.len() < 40 {
                    return Err(WireError::BadBody);
                }
                let mut digest = [0u8; 32];
                digest.copy_from_slice(&body[8..40]);
                Message::Done { session, ok: body[0] == 1, digest }
            }
            Kind::Abort => {
                let reason = std::str::from_utf8(body).map_err(|_| WireError::BadBody)?;
                Message::Abort { session, reason }
            }
        };
        Ok((msg, h.cookie()))
    }

    /// Serialises the message with cookie 0 (a first Hello, or a test).
    pub fn to_vec(&self) -> Vec<u8> {
        self.encode(0)
    }

    /// Serialises the message into a new buffer, `cookie` in its header.
    pub fn encode(&self, cookie: u64) -> Vec<u8> {
        let mut out = vec![0u8; HEADER_LEN];
        let (kind, session, seq) = match self {
            Message::Data { session, chunk, payload } => {
                out.extend_from_slice(payload);
                (Kind::Data, *session, *chunk)
            }
            Message::End { session, info, retransmits } => {
                out.resize(HEADER_LEN + SESSION_INFO_LEN, 0);
                info.emit(&mut out[HEADER_LEN..]);
                out.extend_from_slice(&retransmits.to_be_bytes());
                (Kind::End, *session, 0)
            }
            Message::Meta { session, info, last } => {
                out.resize(HEADER_LEN + SESSION_INFO_LEN, 0);
                info.emit(&mut out[HEADER_LEN..]);
                (Kind::Meta, *session, u64::from(*last))
            }
            Message::Hello {
                session,
                info,
                source,
                via_tcp,
                keyed,
                encrypted,
                name,
                data_ports,
                attrs,
                tree,
                resume_from,
            } => {
                out.resize(HEADER_LEN + SESSION_INFO_LEN, 0);
                info.emit(&mut out[HEADER_LEN..]);
                out.extend_from_slice(source);
                let flags = (u32::from(*via_tcp) * HELLO_VIA_TCP)
                    | (u32::from(*keyed) * HELLO_KEYED)
                    | (u32::from(!data_ports.is_empty()) * HELLO_DATA_PORTS)
                    | (u32::from(attrs.is_some()) * HELLO_ATTRS)
                    | (u32::from(attrs.is_some_and(|a| a.data_bytes.is_some())) * HELLO_SPARSE)
                    | (u32::from(tree.is_some()) * HELLO_TREE)
                    | (u32::from(resume_from.is_some()) * HELLO_RESUME)
                    | (u32::from(encrypted.is_some()) * HELLO_ENCRYPTED)
                    | (u32::from(*encrypted == Some(Cipher::ChaCha20Poly1305)) * HELLO_CHACHA);
                out.extend_from_slice(&flags.to_be_bytes());
                if !data_ports.is_empty() {
                    out.push(data_ports.len);
                    for p in data_ports.as_slice() {
                        out.extend_from_slice(&p.to_be_bytes());
                    }
                }
                if let Some(a) = attrs {
                    out.extend_from_slice(&(a.mode & 0o777).to_be_bytes());
                    out.extend_from_slice(&a.mtime_ns.to_be_bytes());
                    if let Some(d) = a.data_bytes {
                        out.extend_from_slice(&d.to_be_bytes());
                    }
                }
                if let Some(t) = tree {
                    out.extend_from_slice(&t.manifest_len.to_be_bytes());
                    out.extend_from_slice(&t.entries.to_be_bytes());
                }
                if let Some(r) = resume_from {
                    out.extend_from_slice(&r.to_be_bytes());
                }
                // A longer name is cut on a char boundary (it names, it
                // does not identify: `source` does).
                let mut end = name.len().min(MAX_NAME_LEN);
                while !name.is_char_boundary(end) {
                    end -= 1;
                }
                out.extend_from_slice(&name.as_bytes()[..end]);
                (Kind::Hello, *session, 0)
            }
            Message::HelloAck { session, delay_us, opened, tcp_only, max_datagram, resume } => {
                out.extend_from_slice(&delay_us.to_be_bytes());
                let resume_flag = match resume {
                    None => 0,
                    Some(Resume::Offer { .. }) => HELLO_ACK_RESUME_OFFER,
                    Some(Resume::Settled { .. }) => HELLO_ACK_RESUME_SETTLED,
                };
                out.push(
                    if *opened { HELLO_ACK_OPENED } else { 0 }
                        | if *tcp_only { HELLO_ACK_TCP_ONLY } else { 0 }
                        | resume_flag,
                );
                out.extend_from_slice(&max_datagram.to_be_bytes());
                match resume {
                    Some(Resume::Offer { from, hash }) => {
                        out.extend_from_slice(&from.to_be_bytes());
                        out.extend_from_slice(hash);
                    }
                    Some(Resume::Settled { from }) => out.extend_from_slice(&from.to_be_bytes()),
                    None => {}
                }
                (Kind::HelloAck, *session, 0)
            }
            Message::Nack { session, nack } => {
                out.extend_from_slice(&nack.part.to_be_bytes());
                out.extend_from_slice(&nack.loss_bp.map_or(NO_LOSS_SAMPLE, |l| l.min(10_000)).to_be_bytes());
                out.extend_from_slice(&nack.nbits.to_be_bytes());
                out.extend_from_slice(&nack.received.to_be_bytes());
                out.extend_from_slice(&nack.base.to_be_bytes());
                out.extend_from_slice(&nack.high.to_be_bytes());
                out.extend_from_slice(&nack.prefix.to_be_bytes());
                out.extend_from_slice(nack.bitmap);
                (Kind::Nack, *session, nack.round)
            }
            Message::Done { session, ok, digest } => {
                out.push(u8::from(*ok));
                out.extend_from_slice(&[0; 7]);
                out.extend_from_slice(digest);
                (Kind::Done, *session, 0)
            }
            Message::Abort { session, reason } => {
                // Keep the reason within one small datagram, cut on a char boundary.
                let mut end = reason.len().min(512);
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                out.extend_from_slice(&reason.as_bytes()[..end]);
                (Kind::Abort, *session, 0)
            }
        };
        let body_len = (out.len() - HEADER_LEN) as u16;
        emit_header(&mut out, kind, body_len, session, cookie, seq);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Session 1's Hello for `info`, naming the input `name`.
    fn hello(info: SessionInfo, name: &str) -> Message<'_> {
        Message::Hello {
            session: 1,
            info,
            source: [0; 16],
            via_tcp: false,
            keyed: false,
            encrypted: None,
            name,
            data_ports: DataPorts::NONE,
            attrs: None,
            tree: None,
            resume_from: None,
        }
    }

    fn info() -> SessionInfo {
        SessionInfo { file_size: 10_000, chunk_size: 1000, n_chunks: 10, digest: Some([7; 32]) }
    }

    #[test]
    fn every_kind_round_trips() {
        let bitmap = [0b1010_0001u8, 0b1];
        let msgs = [
            Message::Data { session: 9, chunk: 3, payload: b"hello" },
            Message::Meta { session: 9, last: false, info: info() },
            Message::Meta { session: 9, last: true, info: info() },
            Message::Hello {
                session: 9,
                info: info(),
                source: [5; 16],
                via_tcp: false,
                keyed: false,
                encrypted: None,
                name: "",
                data_ports: DataPorts::NONE,
                attrs: None,
                tree: None,
                resume_from: None,
            },
            Message::Hello {
                session: 9,
                info: SessionInfo { digest: None, ..info() },
                source: [0; 16],
                via_tcp: true,
                keyed: true,
                encrypted: None,
                name: "big.iso",
                data_ports: DataPorts::NONE,
                attrs: None,
                tree: None,
                resume_from: None,
            },
            Message::Hello {
                session: 9,
                info: info(),
                source: [1; 16],
                via_tcp: false,
                keyed: false,
                encrypted: None,
                name: "two-queues.bin",
                data_ports: DataPorts::new(&[40000, 40001, 9]).unwrap(),
                attrs: None,
                tree: None,
                resume_from: None,
            },
            Message::HelloAck {
                session: 9,
                delay_us: 1234,
                opened: false,
                tcp_only: false,
                max_datagram: 0,
                resume: None,
            },
            Message::HelloAck { session: 9, delay_us: 0, opened: true, tcp_only: false, max_datagram: 0, resume: None },
            Message::HelloAck {
                session: 9,
                delay_us: 3,
                opened: true,
                tcp_only: false,
                max_datagram: 1472,
                resume: Some(Resume::Offer { from: 4096, hash: [5; 32] }),
            },
            Message::HelloAck {
                session: 9,
                delay_us: 3,
                opened: true,
                tcp_only: false,
                max_datagram: 0,
                resume: Some(Resume::Settled { from: 0 }),
            },
            Message::Hello {
                session: 9,
                info: info(),
                source: [5; 16],
                via_tcp: false,
                keyed: false,
                encrypted: None,
                name: "resumed.bin",
                data_ports: DataPorts::NONE,
                attrs: None,
                tree: None,
                resume_from: Some(4096),
            },
            Message::Hello {
                session: 9,
                info: info(),
                source: [6; 16],
                via_tcp: false,
                keyed: true,
                encrypted: Some(Cipher::Aes256Gcm),
                name: "sealed.bin",
                data_ports: DataPorts::NONE,
                attrs: None,
                tree: None,
                resume_from: None,
            },
            Message::Hello {
                session: 9,
                info: info(),
                source: [7; 16],
                via_tcp: true,
                keyed: true,
                encrypted: Some(Cipher::ChaCha20Poly1305),
                name: "sealed.bin",
                data_ports: DataPorts::NONE,
                attrs: None,
                tree: None,
                resume_from: Some(0),
            },
            Message::Nack {
                session: 9,
                nack: Nack {
                    round: 4,
                    part: 1,
                    received: 77,
                    high: 120,
                    prefix: 90,
                    base: 100,
                    nbits: 9,
                    bitmap: &bitmap,
                    loss_bp: Some(250),
                },
            },
            Message::End { session: 9, info: info(), retransmits: 12 },
            Message::Done { session: 9, ok: true, digest: [3; 32] },
            Message::Abort { session: 9, reason: "disk full" },
        ];
        for m in msgs {
            let bytes = m.encode(0xc0ffee);
            assert_eq!(Message::parse_with_cookie(&bytes).unwrap(), (m, 0xc0ffee));
        }
    }

    #[test]
    fn hello_carries_the_files_mode_and_mtime_and_parses_without_them() {
        let hello = |attrs| Message::Hello {
            session: 1,
            info: info(),
            source: [0; 16],
            via_tcp: false,
            keyed: false,
            encrypted: None,
            name: "secret.key",
            data_ports: DataPorts::new(&[7000, 7001]).unwrap(),
            attrs,
            tree: None,
            resume_from: None,
        };
        let attrs = FileAttrs { mode: 0o600, mtime_ns: -1_500_000_001, data_bytes: None };
        let bytes = hello(Some(attrs)).to_vec();
        let Ok(Message::Hello { attrs: got, name, data_ports, .. }) = Message::parse(&bytes) else { panic!("a Hello") };
        assert_eq!((got, name, data_ports.len), (Some(attrs), "secret.key", 2));
        let bytes = hello(None).to_vec();
        assert!(matches!(Message::parse(&bytes), Ok(Message::Hello { attrs: None, name: "secret.key", .. })));
        // Set-id and sticky bits are never carried.
        let suid = hello(Some(FileAttrs { mode: 0o4755, mtime_ns: 0, data_bytes: None })).to_vec();
        assert!(matches!(Message::parse(&suid), Ok(Message::Hello { attrs: Some(FileAttrs { mode: 0o755, .. }), .. })));
        // The flag without the bytes is refused.
        let mut cut = hello(Some(attrs)).to_vec();
        cut.truncate(cut.len() - "secret.key".len() - 5);
        assert!(Message::parse(&cut).is_err());
        // A sparse file's data size rides behind them.
        let sparse = FileAttrs { data_bytes: Some(4096), ..attrs };
        let bytes = hello(Some(sparse)).to_vec();
        assert!(
            matches!(Message::parse(&bytes), Ok(Message::Hello { attrs: Some(a), name: "secret.key", .. }) if a == sparse)
        );
        let mut cut = bytes.clone();
        cut.truncate(cut.len() - "secret.key".len() - 5);
        assert!(Message::parse(&cut).is_err());
    }

    /// The list of transmit-queue ports: at least one, none of them 0, at
    /// most MAX_DATA_PORTS, wholly inside the body; the name follows it.
    #[test]
    fn hello_data_ports_are_checked() {
        let ports = DataPorts::new(&[7000, 7001]).unwrap();
        // A long name, so that a count of 65 still lies inside the body.
        let name = "a".repeat(140);
        let good = Message::Hello {
            session: 1,
            info: info(),
            source: [0; 16],
            via_tcp: false,
            keyed: false,
            encrypted: None,
            name: &name,
            data_ports: ports,
            attrs: None,
            tree: None,
            resume_from: None,
        }
        .to_vec();
        let Ok(Message::Hello { data_ports, name: got, .. }) = Message::parse(&good) else { panic!("a Hello") };
        assert_eq!((data_ports.as_slice(), got), (&[7000u16, 7001][..], name.as_str()));
        assert!(DataPorts::new(&[1; MAX_DATA_PORTS + 1]).is_none());
        let at = HEADER_LEN + HELLO_LEN;
        let patch = |count: u8, first: [u8; 2], cut: usize| {
            let mut raw = good.clone();
            raw[at] = count;
            raw[at + 1..at + 3].copy_from_slice(&first);
            raw.truncate(raw.len() - cut);
            let body = (raw.len() - HEADER_LEN) as u16;
            raw[field::BODY_LEN].copy_from_slice(&body.to_be_bytes());
            Message::parse(&raw).map(|_| ())
        };
        assert!(patch(2, [0x1b, 0x58], 0).is_ok(), "the fixture itself parses");
        assert_eq!(patch(0, [0x1b, 0x58], 0), Err(WireError::BadBody), "an empty list");
        assert_eq!(patch(2, [0, 0], 0), Err(WireError::BadBody), "port 0");
        assert_eq!(patch(2, [0x1b, 0x58], 141), Err(WireError::BadBody), "a list past the body");
        assert_eq!(patch(65, [0x1b, 0x58], 0), Err(WireError::BadBody), "more than MAX_DATA_PORTS");
    }

    /// The Hello's file name: cut to 255 bytes on a char boundary when
    /// sent; refused when longer or not UTF-8 on receipt.
    #[test]
    fn hello_names_are_bounded_utf8() {
        let long = "é".repeat(200);
        let b = hello(info(), &long).to_vec();
        let Ok(Message::Hello { name, .. }) = Message::parse(&b) else { panic!("a Hello") };
        assert_eq!((name.len(), name.chars().count()), (254, 127), "cut on a char boundary");
        let mut raw = hello(info(), "").to_vec();
        raw.extend_from_slice(&[b'a'; 256]);
        let body = (raw.len() - HEADER_LEN) as u16;
        raw[field::BODY_LEN].copy_from_slice(&body.to_be_bytes());
        assert_eq!(Message::parse(&raw), Err(WireError::BadBody), "256 bytes");
        raw.truncate(raw.len() - 254);
        raw[field::BODY_LEN].copy_from_slice(&(body - 254).to_be_bytes());
        raw[HEADER_LEN + HELLO_LEN] = 0xff;
        assert_eq!(Message::parse(&raw), Err(WireError::BadBody), "not UTF-8");
    }

    #[test]
    fn nack_bitmap_lists_missing_chunks() {
        let bitmap = [0b1010_0001u8, 0b1];
        let n = Nack {
            round: 0,
            part: 0,
            received: 0,
            high: 0,
            prefix: 0,
            base: 100,
            nbits: 9,
            bitmap: &bitmap,
            loss_bp: None,
        };
        assert_eq!(n.missing().collect::<Vec<_>>(), vec![100, 105, 107, 108]);
    }

    /// Found by the `wire` fuzz target: a base near u64::MAX made `missing()`
    /// overflow.
    #[test]
    fn nack_whose_indexes_overflow_is_refused() {
        let bitmap = [0xffu8];
        let nack = Nack {
            round: 1,
            part: 0,
            received: 0,
            high: 0,
            prefix: 0,
            base: u64::MAX - 3,
            nbits: 8,
            bitmap: &bitmap,
            loss_bp: None,
        };
        let bytes = Message::Nack { session: 1, nack }.to_vec();
        assert_eq!(Message::parse(&bytes), Err(WireError::BadBody));
    }

    /// Encryption needs the key's session keys; ChaCha's flag alone names
    /// nothing.
    #[test]
    fn an_encrypted_hello_without_a_key_or_with_a_lone_cipher_flag_is_refused() {
        let flags_at = HEADER_LEN + SESSION_INFO_LEN + 16;
        let set_flags = |m: Message<'_>, f: u32| {
            let mut b = m.to_vec();
            b[flags_at..flags_at + 4].copy_from_slice(&f.to_be_bytes());
            b
        };
        let plain = Message::plain_hello(1, SessionInfo { file_size: 10, chunk_size: 10, n_chunks: 1, digest: None });
        assert_eq!(Message::parse(&set_flags(plain.clone(), HELLO_ENCRYPTED)), Err(WireError::BadBody));
        assert_eq!(Message::parse(&set_flags(plain.clone(), HELLO_KEYED | HELLO_CHACHA)), Err(WireError::BadBody));
        let both = set_flags(plain, HELLO_KEYED | HELLO_ENCRYPTED | HELLO_CHACHA);
        let ok = Message::parse(&both);
        assert!(matches!(ok, Ok(Message::Hello { keyed: true, encrypted: Some(Cipher::ChaCha20Poly1305), .. })));
    }

    #[test]
    fn trailing_padding_is_ignored() {
        let mut bytes = Message::Data { session: 1, chunk: 0, payload: b"ab" }.to_vec();
        bytes.extend_from_slice(&[0; 30]);
        assert_eq!(Message::parse(&bytes).unwrap(), Message::Data { session: 1, chunk: 0, payload: b"ab" });
    }

    #[test]
    fn refuses_bad_headers() {
        let good = Message::Data { session: 1, chunk: 0, payload: b"abcd" }.to_vec();
        assert_eq!(Message::parse(&good[..10]), Err(WireError::Truncated));
        let mut b = good.clone();
        b[0] ^= 1;
        assert_eq!(Message::parse(&b), Err(WireError::BadMagic));
        let mut b = good.clone();
        b[4] = VERSION + 1;
        assert_eq!(Message::parse(&b), Err(WireError::BadVersion));
        let mut b = good.clone();
        b[5] = 99;
        assert_eq!(Message::parse(&b), Err(WireError::UnknownKind));
        let mut b = good.clone();
        b[7] = 200;
        assert_eq!(Message::parse(&b), Err(WireError::BadLength));
    }

    #[test]
    fn refuses_inconsistent_session_info() {
        let bad = SessionInfo { n_chunks: 11, ..info() };
        assert_eq!(Message::parse(&hello(bad, "").to_vec()), Err(WireError::BadBody));
        let zero = SessionInfo { chunk_size: 0, ..info() };
        assert_eq!(Message::parse(&hello(zero, "").to_vec()), Err(WireError::BadBody));
    }

    #[test]
    fn chunk_len_covers_short_tail() {
        let i = SessionInfo { file_size: 2500, chunk_size: 1000, n_chunks: 3, digest: None };
        assert_eq!(i.chunk_len(0), Some(1000));
        assert_eq!(i.chunk_len(2), Some(500));
        assert_eq!(i.chunk_len(3), None);
    }

    #[test]
    fn parse_never_panics_on_arbitrary_bytes() {
        // Deterministic pseudo-random inputs plus every prefix of a valid message.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..200 {
            let mut buf = vec![0u8; len];
            for b in buf.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            if len >= 6 {
                buf[..4].copy_from_slice(&MAGIC.to_be_bytes());
                buf[4] = VERSION;
            }
            let _ = Message::parse(&buf);
        }
        let good = hello(info(), "").to_vec();
        for end in 0..good.len() {
            assert!(Message::parse(&good[..end]).is_err());
        }
    }
}
