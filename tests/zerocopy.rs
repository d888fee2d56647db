//! AF_XDP zero-copy on a real driver: virtio-net in a throwaway QEMU guest.
//!
//! `scripts/vm.sh` boots a Debian cloud kernel under QEMU's emulator with two
//! pairs of virtio-net NICs (one pair with VIRTIO_F_ACCESS_PLATFORM, which
//! zero-copy needs, one without) and runs `tests/vm/zerocopy.sh` inside it.
//! That script only runs things and reports; every verdict is here, read
//! from the JSON and the facts it left. One boot serves all the tests in this
//! file. veth, which every other test uses, has copy mode only.
//!
//! Needs root (the harness installs QEMU and fetches the kernel on a bare
//! machine). Without it, or when the guest cannot boot, the tests fail and
//! say why. `XDPBLAST_VM_KERNEL` picks another kernel (`newest`, a version).

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use common::{require_privileges, BIN};
use serde_json::Value;

/// What the guest reported: `@@ KEY VALUE` facts and `@@begin KEY` blocks.
struct Guest {
    kernel: String,
    facts: HashMap<String, String>,
    blocks: HashMap<String, String>,
    /// Everything the guest reported, for a test that finds a fact missing.
    raw: String,
}

static GUEST: OnceLock<Result<Guest, String>> = OnceLock::new();

fn guest() -> &'static Guest {
    match GUEST.get_or_init(boot) {
        Ok(g) => g,
        Err(e) => panic!("{e}"),
    }
}

fn boot() -> Result<Guest, String> {
    require_privileges();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::temp_dir().join(format!("xdpblast-zerocopy-{}", std::process::id()));
    let out = Command::new(repo.join("scripts/vm.sh"))
        .args(["run", "--bin", BIN, "--timeout", "900", "--out"])
        .arg(&dir)
        .arg(repo.join("tests/vm/zerocopy.sh"))
        .output()
        .map_err(|e| format!("cannot run scripts/vm.sh: {e}"))?;
    let results = std::fs::read_to_string(dir.join("results.txt")).unwrap_or_default();
    if !out.status.success() {
        return Err(format!(
            "the zero-copy guest failed (scripts/vm.sh: {}):\n{}\nresults so far:\n{}\n(console: {})",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            results,
            dir.join("console.log").display()
        ));
    }
    // Read in whole: the folder is ours to remove (a failed boot above
    // keeps it, for its console log).
    let _ = std::fs::remove_dir_all(&dir);
    Ok(parse(&results))
}

fn parse(results: &str) -> Guest {
    let mut g =
        Guest { kernel: String::new(), facts: HashMap::new(), blocks: HashMap::new(), raw: results.to_string() };
    let mut open: Option<(String, String)> = None;
    // The guest's serial port ends lines with CR LF.
    for line in results.lines().map(|l| l.trim_end_matches('\r')) {
        if let Some((key, text)) = &mut open {
            if line == "@@end" {
                g.blocks.insert(std::mem::take(key), std::mem::take(text));
                open = None;
            } else {
                text.push_str(line);
                text.push('\n');
            }
        } else if let Some(key) = line.strip_prefix("@@begin ") {
            open = Some((key.to_string(), String::new()));
        } else if let Some(kv) = line.strip_prefix("@@ ") {
            let (k, v) = kv.split_once(' ').unwrap_or((kv, ""));
            g.facts.insert(k.to_string(), v.to_string());
        } else if let Some(k) = line.strip_prefix("@@kernel ") {
            g.kernel = k.to_string();
        }
    }
    g
}

impl Guest {
    fn fact(&self, key: &str) -> &str {
        self.facts
            .get(key)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("the guest ({}) reported no {key}; it reported:\n{}", self.kernel, self.raw))
    }

    fn text(&self, key: &str) -> &str {
        self.blocks.get(key).map(String::as_str).unwrap_or("")
    }

    fn json(&self, key: &str) -> Value {
        let t = self.text(key);
        serde_json::from_str(t).unwrap_or_else(|e| {
            panic!("{key} from the guest ({}) is not JSON ({e}):\n{t}\nlogs: {}", self.kernel, self.logs(key))
        })
    }

    /// Both ends' logs of a transfer, for failure messages.
    fn logs(&self, key: &str) -> String {
        let base = key.split('.').next().unwrap_or(key);
        format!(
            "sender: {}\nreceiver: {}",
            self.text(&format!("{base}.send_log")).trim(),
            self.text(&format!("{base}.recv_log")).trim()
        )
    }

    fn secs(&self, key: &str) -> u64 {
        self.fact(key).parse().unwrap_or(u64::MAX)
    }

    /// A transfer that both ends call verified, with the file identical,
    /// each end in the mode given; returns the sender's and receiver's JSON.
    fn transferred(&self, key: &str, send_mode: &str, recv_mode: &str) -> (Value, Value) {
        let ctx = || format!("{key} on {}:\n{}", self.kernel, self.logs(key));
        assert_eq!(self.fact(&format!("{key}.send_rc")), "0", "the sender failed: {}", ctx());
        assert_eq!(self.fact(&format!("{key}.recv_rc")), "0", "the receiver failed: {}", ctx());
        assert_eq!(self.fact(&format!("{key}.identical")), "true", "the output differs: {}", ctx());
        let (s, r) = (self.json(&format!("{key}.send")), self.json(&format!("{key}.recv")));
        assert_eq!((s["verified"].as_bool(), r["verified"].as_bool()), (Some(true), Some(true)), "{}", ctx());
        assert_eq!(s["mode"], send_mode, "sender's mode: {}", ctx());
        assert_eq!(r["mode"], recv_mode, "receiver's mode: {}", ctx());
        assert_eq!(self.fact(&format!("{key}.rx_xdp_after")), "none", "our XDP program outlived the receiver");
        (s, r)
    }
}

const ZC: &str = "afxdp-zerocopy";
const COPY: &str = "afxdp-copy";

#[test]
fn probe_reports_the_mode_a_real_bind_gets() {
    let g = guest();
    assert_eq!(g.fact("probe_zc.rc"), "0", "{}", g.text("probe_zc.log"));
    let p = g.json("probe_zc");
    assert_eq!(p["af_xdp"]["detail"], "zero-copy mode", "virtio-net with iommu_platform=on binds zero-copy: {p}");
    assert_eq!(p["zero_copy"]["ok"], true, "{p}");
    assert_eq!(p["zero_copy_capable"], true, "{p}");
    assert_eq!(p["zc_max_segs"], 1, "virtio_net takes no chains in zero-copy: {p}");
    assert_eq!(p["multi_buffer"]["ok"], true, "copy mode has chains: {p}");
    let mb = p["multi_buffer"]["detail"].as_str().unwrap_or("");
    assert!(mb.contains("none in zero-copy mode"), "multi-buffer must say zero-copy takes no chains: {p}");
    assert_eq!(p["auto_mode"], "afxdp (zero-copy mode)", "{p}");
    assert_eq!(g.fact("probe_zc.xdp_after"), "none", "probe left an XDP program attached");
}

#[test]
fn probe_says_why_a_device_without_access_platform_has_no_zero_copy() {
    let g = guest();
    assert_eq!(g.fact("probe_nozc.rc"), "0", "{}", g.text("probe_nozc.log"));
    let p = g.json("probe_nozc");
    assert_eq!(p["zero_copy_capable"], true, "the driver advertises xsk_zerocopy all the same: {p}");
    assert_eq!(p["zero_copy"]["ok"], false, "but the bind is refused: {p}");
    let why = p["zero_copy"]["detail"].as_str().unwrap_or("");
    assert!(why.contains("VIRTIO_F_ACCESS_PLATFORM"), "the refusal must name the missing feature: {why}");
    assert_eq!(p["af_xdp"]["detail"], "copy mode", "{p}");
    assert_eq!(p["auto_mode"], "afxdp (copy mode)", "{p}");
}

impl Guest {
    /// Whether a zero-copy socket binds at MTU 9000: on 6.18.15 it does,
    /// 7.3.4's virtio_net refuses it there (EINVAL) as it does without
    /// VIRTIO_F_ACCESS_PLATFORM. The probe's own test checks that it says so.
    fn zero_copy_at_9000(&self) -> bool {
        self.json("probe_zc9000")["zero_copy"]["ok"] == true
    }
}

#[test]
fn probe_at_mtu_9000_says_auto_takes_copy_mode_and_which_size_allows_zero_copy() {
    let g = guest();
    let p = g.json("probe_zc9000");
    let auto = p["auto_mode"].as_str().unwrap_or("");
    assert_eq!(p["largest_packet"], 9000, "{p}");
    if !g.zero_copy_at_9000() {
        let why = p["zero_copy"]["detail"].as_str().unwrap_or("");
        assert!(why.contains("jumbo MTU"), "{}: the refusal must say why: {why}", g.kernel);
        assert_eq!(auto, "afxdp (copy mode)", "{}: no zero-copy to promise: {p}", g.kernel);
        return;
    }
    assert!(auto.contains("copy mode because 9000-byte packets span 3 UMEM frames"), "{p}");
    assert!(auto.contains("--packet-size 4082"), "{p}");
}

#[test]
fn zero_copy_to_zero_copy() {
    guest().transferred("zc_zc", ZC, ZC);
}

#[test]
fn zero_copy_to_copy() {
    guest().transferred("zc_copy", ZC, COPY);
}

#[test]
fn copy_to_zero_copy() {
    guest().transferred("copy_zc", COPY, ZC);
}

#[test]
fn zero_copy_with_5_percent_loss_is_repaired() {
    let g = guest();
    let (s, r) = g.transferred("loss", ZC, ZC);
    let dropped = r["path_stats"]["xdp"]["loss_dropped"].as_u64().unwrap_or(0);
    assert!(dropped > 0, "our XDP program dropped nothing: {r}");
    assert!(s["retransmits"].as_u64().unwrap_or(0) > 0, "nothing was repaired: {s}");
}

/// A key encrypts by default: each payload sealed in its UMEM frame by the
/// sender and opened in place, in the zero-copy receive frame, by the
/// receiver; with either AEAD.
#[test]
fn zero_copy_encrypted_with_either_aead() {
    let g = guest();
    for (key, want) in [("keyed", None), ("keyed_chacha", Some("ChaCha20-Poly1305"))] {
        let (s, r) = g.transferred(key, ZC, ZC);
        // Every frame carries its 16-byte tag (at MTU 1500), and each held.
        assert_eq!(s["chunk_size"], 1500 - 28 - 32 - 16, "{key}: {s}");
        assert_eq!(r["dropped"]["bad_seal"].as_u64().unwrap_or(0), 0, "{key}: {r}");
        let cipher = s["encrypted"].as_str().unwrap_or_else(|| panic!("{key}: the sender did not encrypt: {s}"));
        assert!(want.is_none_or(|w| w == cipher), "{key}: {cipher}");
        assert_eq!(r["encrypted"], s["encrypted"], "{key}: the receiver opened what was sealed: {r}");
    }
}

/// The TCP modes' TLS records: with the guest kernel's TLS, sendfile runs
/// with both ends sealing and opening in the kernel; a sender sealing in
/// user space (as on a kernel without TLS) is understood by a receiver
/// opening in the kernel, the records being the same.
#[test]
fn tcp_streams_encrypted_by_kernel_tls_and_in_user_space_understand_each_other() {
    let g = guest();
    assert_eq!(g.fact("tls_module"), "1", "the guest kernel ({}) loaded no tls module", g.kernel);
    let (s, r) = g.transferred("ktls", "sendfile", "tcp");
    let kernel = |v: &Value| (v["encryption"]["kernel_tx"].as_bool(), v["encryption"]["kernel_rx"].as_bool());
    assert_eq!(s["encryption"]["cipher"], "AES-256-GCM", "{s}");
    assert_eq!(kernel(&s), (Some(true), Some(true)), "the sender's kTLS: {s}");
    assert_eq!(kernel(&r), (Some(true), Some(true)), "the receiver's kTLS: {r}");
    let (s, r) = g.transferred("ktls_mixed", "sendfile", "tcp");
    assert_eq!(kernel(&s), (Some(false), Some(false)), "XDPBLAST_NO_KTLS keeps the sender in user space: {s}");
    assert!(s["encryption"]["kernel_tls_missing"].is_string(), "and says why: {s}");
    assert_eq!(kernel(&r), (Some(true), Some(true)), "{r}");
}

#[test]
fn zero_copy_raw_send_reaches_the_sink_and_leaves_the_stack_its_queue() {
    let g = guest();
    assert_eq!(g.fact("raw.rc"), "0", "{}", g.text("raw_log"));
    assert_eq!(g.fact("sink.rc"), "0");
    let raw = g.json("raw");
    let sink = g.json("sink");
    assert_eq!(raw["mode"], ZC, "{raw}");
    let (sent, sunk) = (raw["packets"].as_u64().unwrap_or(0), sink["packets"].as_u64().unwrap_or(0));
    assert!(sent > 0 && sunk > 0, "sent {sent}, the sink counted {sunk}");
    assert!(sunk <= sent, "the sink counted more than was sent: {sunk} > {sent}");
    let answered: u32 = g.fact("raw.pings_answered_of_20").parse().unwrap_or(0);
    assert!(answered >= 18, "the sender's stack answered {answered} of 20 pings on the queue it sends from");
}

#[test]
fn sigkill_of_the_sender_leaves_no_program_and_no_complete_file() {
    let g = guest();
    let k = "kill_sender";
    assert!(
        g.fact(&format!("{k}.rx_xdp_during")).starts_with("prog/xdp"),
        "the check must see the program while it runs"
    );
    assert_eq!(g.fact(&format!("{k}.send_rc")), "137", "{}", g.logs(k));
    assert_ne!(g.fact(&format!("{k}.recv_rc")), "0", "a receiver whose sender died must fail: {}", g.logs(k));
    assert_eq!(g.fact(&format!("{k}.rx_xdp_after")), "none");
    assert_eq!(g.fact(&format!("{k}.tx_xdp_after")), "none");
    assert_eq!(g.fact(&format!("{k}.output_complete")), "false", "a partial file must not look complete");
}

#[test]
fn sigkill_of_the_receiver_detaches_its_program_and_fails_the_sender() {
    let g = guest();
    let k = "kill_receiver";
    assert!(g.fact(&format!("{k}.rx_xdp_during")).starts_with("prog/xdp"));
    assert_eq!(g.fact(&format!("{k}.recv_rc")), "137", "{}", g.logs(k));
    assert_ne!(g.fact(&format!("{k}.send_rc")), "0", "a sender whose receiver died must fail: {}", g.logs(k));
    assert_eq!(g.fact(&format!("{k}.rx_xdp_after")), "none", "the bpf_link must go with the process");
    assert_eq!(g.fact(&format!("{k}.output_complete")), "false");
}

#[test]
fn zero_copy_works_again_after_both_kills() {
    guest().transferred("after_kill", ZC, ZC);
}

#[test]
fn zero_copy_by_name_on_a_device_without_it_fails_at_once_naming_why() {
    let g = guest();
    for end in ["force_send", "force_recv"] {
        let log = g.text(&format!("{end}_log"));
        assert_ne!(g.fact(&format!("{end}.rc")), "0", "{end} must fail: {log}");
        assert!(g.secs(&format!("{end}.secs")) <= 5, "{end} must fail at once, not after its timeout: {log}");
        assert!(log.contains("VIRTIO_F_ACCESS_PLATFORM"), "{end} must say why: {log}");
    }
    assert_eq!(g.fact("force_recv.xdp_after"), "none", "a receiver that failed must not leave its program");
}

#[test]
fn mtu_9000_auto_sends_chains_in_copy_mode() {
    let g = guest();
    let (s, _) = g.transferred("mtu9000", COPY, COPY);
    assert_eq!(s["packet_size"], 9000, "{s}");
}

#[test]
fn zero_copy_by_name_with_packets_above_one_frame_fails_up_front_naming_the_size_that_fits() {
    let g = guest();
    let log = g.text("zc9000_log");
    assert_ne!(g.fact("zc9000.rc"), "0", "{log}");
    assert!(g.secs("zc9000.secs") <= 5, "must fail before the handshake: {log}");
    assert!(log.contains("--packet-size 4082"), "must name the size that fits: {log}");
}

#[test]
fn zero_copy_by_name_at_mtu_9000_with_packets_that_fit_one_frame() {
    let g = guest();
    if !g.zero_copy_at_9000() {
        let said = g.text("mtu9000_fit.send_log");
        assert_ne!(g.fact("mtu9000_fit.send_rc"), "0", "{said}");
        assert!(said.contains("refused zero-copy"), "{}: the sender must say the driver refused: {said}", g.kernel);
        return;
    }
    let (s, _) = g.transferred("mtu9000_fit", ZC, ZC);
    // The sender's 4,082 bytes fill one 4 KiB TX frame; a receive frame keeps
    // 256 bytes of headroom, so the receiver asks for 3,826 and gets them.
    assert_eq!(s["packet_size"], 3826, "{s}");
    let said = g.text("mtu9000_fit.recv_log");
    assert!(said.contains("packets up to 3826 B"), "{said}");
}
