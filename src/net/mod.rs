//! Facts about the network the driver runs on, read from the kernel over
//! rtnetlink: an interface's index, MAC, MTU, queues, IPv4 address and XDP
//! state, and the neighbour table (the next hop's MAC).

pub mod iface;
pub mod neigh;
mod netlink;
