//! Compiles the XDP program under `bpf/` into a libbpf-rs skeleton in OUT_DIR.
use std::{env, path::PathBuf};

use libbpf_cargo::SkeletonBuilder;

const SRC: &str = "bpf/steer.bpf.c";
const HEADERS: &[&str] = &["bpf/steer.h"];

fn main() {
    let out =
        PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("steer.skel.rs");
    let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("cargo sets CARGO_CFG_TARGET_ARCH");
    // Debian keeps <asm/types.h> under the multiarch directory, which clang's BPF target
    // does not search by itself.
    let multiarch = format!("-I/usr/include/{arch}-linux-gnu");
    SkeletonBuilder::new()
        .source(SRC)
        .clang_args([
            "-Wall",
            "-Wextra",
            "-Werror",
            "-O2",
            multiarch.as_str(),
            "-Ibpf",
        ])
        .build_and_generate(&out)
        .unwrap_or_else(|e| {
            panic!("building {SRC} (needs clang, see scripts/install-deps.sh): {e:#}")
        });
    println!("cargo:rerun-if-changed={SRC}");
    for h in HEADERS {
        println!("cargo:rerun-if-changed={h}");
    }
}
