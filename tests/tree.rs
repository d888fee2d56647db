//! Directory trees end to end, over a veth pair between two namespaces the
//! test creates: one session carries every file, and `diff -r` finds
//! nothing between what was sent and what arrived.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;

/// Nested directories, an empty directory and an empty file, 2,000 small
/// files, names with spaces and UTF-8, a file larger than a chunk, and a
/// 0640 file that must stay 0640.
fn make_tree(root: &Path) {
    let data = root.join("data");
    for d in ["sub/deep", "with space", "empty dir"] {
        std::fs::create_dir_all(data.join(d)).expect("mkdir");
    }
    for i in 0..2000u64 {
        random_file(&data.join("sub"), &format!("f{i:04}"), (i as usize * 37) % 900 + 1, i);
    }
    random_file(&data, "big.bin", 3 << 20, 7);
    std::fs::write(data.join("empty"), b"").expect("write");
    std::fs::write(data.join("with space/ünïcödé ✓.txt"), b"hi\n").expect("write");
    let private = random_file(&data.join("sub/deep"), "private", 5000, 9);
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    // A link inside the tree is skipped, never followed.
    std::os::unix::fs::symlink("/etc", data.join("link")).expect("symlink");
}

fn assert_tree_arrives(mode: &str) {
    require_privileges();
    let veth = Veth::new();
    let dir = tempfile::tempdir().expect("tempdir");
    make_tree(dir.path());
    let out = dir.path().join("out");
    let rx = veth.start_receiver(&out, &[]);
    let sent = veth.send(&dir.path().join("data"), &["--mode", mode]);
    let (rx_ok, recv, log) = rx.finish();
    let send = json(&sent);
    assert!(sent.status.success(), "sender failed: {}", String::from_utf8_lossy(&sent.stderr));
    assert!(rx_ok, "receiver failed: {recv}\n{log}");
    assert_eq!(send["verified"], true);
    assert_eq!(send["digest"], recv["digest"]);
    // The link is the one difference: skipped on purpose.
    std::fs::remove_file(dir.path().join("data/link")).expect("rm link");
    let diff = std::process::Command::new("diff").arg("-r").arg(dir.path().join("data")).arg(out.join("data")).output();
    let diff = diff.expect("running diff");
    assert!(diff.status.success(), "diff -r found: {}", String::from_utf8_lossy(&diff.stdout));
    let mode_of = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode_of(&out.join("data/sub/deep/private")), 0o640);
    assert!(out.join("data/empty dir").is_dir());
    let partials = std::process::Command::new("find").arg(&out).args(["-name", "*.partial"]).output().expect("find");
    assert!(partials.stdout.is_empty(), "partials left: {}", String::from_utf8_lossy(&partials.stdout));
    assert!(!out.join("data/link").exists(), "a symbolic link inside the tree is not sent");
}

#[test]
fn a_tree_arrives_whole_over_afxdp() {
    assert_tree_arrives("afxdp");
}

#[test]
fn a_tree_arrives_whole_over_sendfile() {
    assert_tree_arrives("sendfile");
}

/// Several paths go as one tree, each under its base name; a tree above
/// `--max-files` is refused before anything is made.
#[test]
fn several_paths_arrive_by_name_and_max_files_refuses() {
    require_privileges();
    let veth = Veth::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let a = random_file(dir.path(), "a.bin", 100_000, 1);
    std::fs::create_dir(dir.path().join("d")).expect("mkdir");
    random_file(&dir.path().join("d"), "b.bin", 10, 2);
    let out = dir.path().join("out");
    let rx = veth.start_receiver(&out, &[]);
    let d = dir.path().join("d");
    let sent = veth.send(&a, &[d.to_str().expect("utf-8")]);
    let (rx_ok, recv, log) = rx.finish();
    assert!(sent.status.success() && rx_ok, "{recv}\n{log}\n{}", String::from_utf8_lossy(&sent.stderr));
    assert!(same_file(&a, &out.join("a.bin")));
    assert!(same_file(&d.join("b.bin"), &out.join("d/b.bin")));

    let out2 = dir.path().join("out2");
    let rx = veth.start_receiver(&out2, &["--max-files", "2", "--wait", "5"]);
    let sent = veth.send(&a, &[d.to_str().expect("utf-8")]);
    let err = String::from_utf8_lossy(&sent.stderr).to_string() + &json(&sent)["error"].to_string();
    assert!(!sent.status.success());
    assert!(err.contains("--max-files 2"), "the refusal names the limit: {err}");
    rx.kill("TERM");
    assert!(!out2.exists(), "nothing is made for a refused tree");
}
