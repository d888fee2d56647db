//! The transmit engine, shared by every AF_XDP sender: [`tx::TxEngine`]
//! posts what a frame source chooses, paces, reaps and kicks, on any
//! [`tx::TxRing`].

pub mod tx;
