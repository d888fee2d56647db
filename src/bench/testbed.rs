//! The bench's own test bed: two network namespaces joined by a veth pair,
//! created with iproute2 and removed on drop (the bench needs nothing but root).
//! Same layout as `scripts/veth.sh`: 10.77.0.1 (tx) <-> 10.77.0.2 (rx).

use std::process::Command;

use anyhow::{bail, Context};
use tracing::{info, warn};

pub const TX_IP: &str = "10.77.0.1";
pub const RX_IP: &str = "10.77.0.2";

pub struct Testbed {
    pub tx_ns: String,
    pub rx_ns: String,
    pub tx_if: String,
    pub rx_if: String,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output().context("running `ip` (install iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl Testbed {
    /// Both ends get `mtu` (above a page, our XDP program takes packets as
    /// fragments and the sockets as descriptor chains).
    pub fn create(threaded_napi: bool, mtu: u32, queues: u32) -> anyhow::Result<Testbed> {
        let name = format!("xbb{}", std::process::id() % 100_000);
        let bed = Testbed {
            tx_ns: format!("{name}-tx"),
            rx_ns: format!("{name}-rx"),
            tx_if: format!("{name}-a"),
            rx_if: format!("{name}-b"),
        };
        bed.remove();
        // From here on, Drop cleans up whatever part was made.
        bed.build(threaded_napi, mtu, queues).context("creating the bench's namespaces and veth pair (run as root)")?;
        info!(tx = %bed.tx_ns, rx = %bed.rx_ns, "test bed up");
        Ok(bed)
    }

    fn build(&self, threaded_napi: bool, mtu: u32, queues: u32) -> anyhow::Result<()> {
        let q = queues.to_string();
        for ns in [&self.tx_ns, &self.rx_ns] {
            ip(&["netns", "add", ns])?;
            // IPv4 only: no autoconfiguration chatter.
            ip(&["netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        ip(&[
            "link",
            "add",
            &self.tx_if,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
            "netns",
            &self.tx_ns,
            "type",
            "veth",
            "peer",
            "name",
            &self.rx_if,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
            "netns",
            &self.rx_ns,
        ])?;
        ip(&["-n", &self.tx_ns, "addr", "add", &format!("{TX_IP}/24"), "dev", &self.tx_if])?;
        ip(&["-n", &self.rx_ns, "addr", "add", &format!("{RX_IP}/24"), "dev", &self.rx_if])?;
        let mtu = mtu.to_string();
        ip(&["-n", &self.tx_ns, "link", "set", &self.tx_if, "mtu", &mtu, "up"])?;
        ip(&["-n", &self.rx_ns, "link", "set", &self.rx_if, "mtu", &mtu, "up"])?;
        // GRO gives the receiving veth a NAPI instance (TCP coalesces, and
        // threaded NAPI needs one to exist).
        let gro = ip(&["netns", "exec", &self.rx_ns, "ethtool", "-K", &self.rx_if, "gro", "on"]);
        if let Err(e) = &gro {
            warn!("GRO unavailable on {}: {e:#}", self.rx_if);
        }
        // Threaded NAPI moves the receiver's kernel work to a kthread the
        // scheduler can put on the other core.
        if threaded_napi {
            let threaded = format!("echo 1 > /sys/class/net/{}/threaded", self.rx_if);
            if let Err(e) = gro.and_then(|_| ip(&["netns", "exec", &self.rx_ns, "sh", "-c", &threaded])) {
                warn!("threaded NAPI unavailable on {}: {e:#}", self.rx_if);
            }
        }
        Ok(())
    }

    fn remove(&self) {
        for ns in [&self.tx_ns, &self.rx_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }

    /// The transmit interface's MTU, as the kernel reports it.
    pub fn mtu(&self) -> anyhow::Result<u32> {
        let out = Command::new("ip").args(["-n", &self.tx_ns, "-j", "link", "show", "dev", &self.tx_if]).output()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("`ip -j link show` output")?;
        v[0]["mtu"].as_u64().and_then(|m| u32::try_from(m).ok()).context("no MTU in `ip -j link show`")
    }

    /// `ip netns exec NS` prefix for a command.
    pub fn exec(&self, ns: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]);
        c
    }

    /// TCP segments retransmitted in the transmit namespace so far.
    pub fn tcp_retrans(&self) -> u64 {
        let out = self.exec(&self.tx_ns).args(["cat", "/proc/net/snmp"]).output();
        let Ok(out) = out else { return 0 };
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines().filter(|l| l.starts_with("Tcp:"));
        let (Some(names), Some(values)) = (lines.next(), lines.next()) else { return 0 };
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == "RetransSegs")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        self.remove();
        info!("test bed removed");
    }
}
