//! A file far larger than the sender's UMEM streams through it: 8 GiB through
//! 64 MiB, clean and with 5 % loss. The sender's peak memory is read from
//! /proc by the test while it runs, not only taken from its report.

mod common;

use common::*;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

#[test]
fn eight_gib_through_a_64_mib_umem_arrives_identical_in_bounded_memory() {
    let veth = Veth::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = random_file_streamed(dir.path(), "in.bin", 8 * GIB, 81);
    let out = dir.path().join("out.bin");
    for loss in ["0", "0.05"] {
        let rx = veth.start_receiver(&out, &["--inject-loss", loss, "--timeout", "20"]);
        let tx = veth.start_sender(&file, &dir.path().join("send.log"), &["--umem", "64M", "--timeout", "20"]);
        let (tx_ok, tx_out, tx_log, hwm) = tx.wait_exit_sampling_memory(900);
        let (rx_ok, recv, rx_log) = rx.finish();
        assert!(tx_ok, "loss {loss}: {tx_log}");
        assert!(rx_ok, "loss {loss}: {recv}\n{rx_log}");
        let sent: serde_json::Value = serde_json::from_str(&tx_out).expect("sender JSON");
        println!(
            "loss {loss}: sender VmHWM {} MiB (reported {} MiB), umem {} MiB, e2e {:.1} s, retransmits {}, receiver peak RSS {} MiB",
            hwm / MIB,
            sent["peak_rss_bytes"].as_u64().unwrap_or(0) / MIB,
            sent["umem_bytes"].as_u64().unwrap_or(0) / MIB,
            sent["e2e_s"].as_f64().unwrap_or(0.0),
            sent["retransmits"],
            recv["peak_rss_bytes"].as_u64().unwrap_or(0) / MIB,
        );
        assert!(hwm > 0 && hwm <= 128 * MIB, "loss {loss}: the sender held {} MiB at its peak", hwm / MIB);
        assert!(sent["umem_bytes"].as_u64().unwrap_or(u64::MAX) <= 64 * MIB);
        for key in ["read_s", "tx_stall_s", "reader_stall_s"] {
            assert!(sent[key].as_f64().is_some_and(|v| v >= 0.0), "{key}: {sent}");
        }
        // Frames are reused only below the receiver's prefix: no NACK may
        // name a chunk whose frame was already refilled.
        assert_eq!(sent["stats"]["repairs_unavailable"], 0, "{sent}");
        assert_eq!(sent["digest"], recv["digest"]);
        if loss != "0" {
            assert!(sent["retransmits"].as_u64().unwrap_or(0) > 0, "loss must be repaired: {sent}");
        }
        assert!(same_file_streamed(&file, &out), "loss {loss}: the output differs");
        std::fs::remove_file(&out).expect("removing the output");
    }
}
