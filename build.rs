//! Compiles `bpf/xdpblast.bpf.c` with clang and generates its Rust skeleton.
use std::env;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

const SRC: &str = "bpf/xdpblast.bpf.c";

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("xdpblast.skel.rs");
    // Debian and Ubuntu keep asm/types.h under the multiarch include directory,
    // which clang does not search when targeting bpf.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    let multiarch = format!("-I/usr/include/{arch}-linux-gnu");
    if let Err(e) =
        SkeletonBuilder::new().source(SRC).clang_args([multiarch.as_str(), "-Wall", "-O2"]).build_and_generate(&out)
    {
        panic!(
            "building {SRC} failed: {e:#}\n\
             hint: run scripts/install-deps.sh (clang, libelf-dev, zlib1g-dev, linux-libc-dev)"
        );
    }
    println!("cargo:rerun-if-changed={SRC}");
}
