//! Facts about the network the driver runs on, read from the kernel over
//! rtnetlink: an interface's index, MAC, MTU, queues, addresses and XDP
//! state, and the neighbour table (the next hop's MAC); and the addresses
//! people type (`endpoint`).

pub mod endpoint;
pub mod iface;
pub mod neigh;
mod netlink;
