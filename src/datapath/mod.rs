//! The datapath between a file and a TX ring, shared by every AF_XDP
//! sender. [`plan`] lays a file out in UMEM frames; [`preload`] fills them
//! all at once (`send --raw`) and [`readahead`] streams a file of any size
//! through a bounded ring of them, each frame built once, in full;
//! [`reader::Reader`] runs the read-ahead inline or on a thread of its own.
//! [`tx::TxEngine`] posts what a frame source chooses, paces, reaps and
//! kicks, on any [`tx::TxRing`]; with several queues, [`kicker`] kicks each
//! queue's ring from a thread of its own.

pub mod kicker;
pub mod plan;
pub mod preload;
pub mod readahead;
pub mod reader;
pub mod scheduler;
pub mod tx;
