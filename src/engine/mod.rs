//! The transmit engine, shared by every AF_XDP sender: [`tx::TxEngine`]
//! posts what a frame source chooses, paces, reaps and kicks, on any
//! [`tx::TxRing`]; [`reader::Reader`] feeds it the file, read ahead inline
//! or on a thread of its own; with several queues, [`kicker`] kicks each
//! queue's ring from a thread of its own.

pub mod kicker;
pub mod reader;
pub mod tx;
