//! The `xdpblast` binary's commands, over the library: [`args`] is the
//! command line; [`send`], [`recv`], [`probe`] and [`tools`] run them.

pub mod args;
pub mod probe;
pub mod recv;
pub mod send;
pub mod tools;
