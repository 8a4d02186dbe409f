//! Compiles the XDP program under `bpf/` into a libbpf-rs skeleton in OUT_DIR, and
//! turns the limits `bpf/steer.h` defines into Rust constants, so that the header
//! is the one place each is written.
use std::{env, fs, path::PathBuf};

use libbpf_cargo::SkeletonBuilder;

const SRC: &str = "bpf/steer.bpf.c";
const HEADERS: &[&str] = &["bpf/steer.h"];
/// The `#define`s of the shared header that user space needs as well.
const LIMITS: &[&str] = &[
    "MAX_QUEUES",
    "MAX_SERVICES",
    "MAX_DAEMONS",
    "MAX_TRACKED",
    "VIP_TCP",
    "VIP_UDP",
    "REPLY_KEY_SIZE",
    "REPLY_KEY6_SIZE",
    "REPLY_KEY_V0_SIZE",
];

/// `pub const NAME: u32 = VALUE;` for each of [`LIMITS`], read from `header`.
fn limits(header: &str) -> String {
    let text = fs::read_to_string(header).unwrap_or_else(|e| panic!("reading {header}: {e}"));
    let mut out = String::new();
    for name in LIMITS {
        let value = text
            .lines()
            .find_map(|l| {
                let mut words = l.split_whitespace();
                (words.next() == Some("#define") && words.next() == Some(name))
                    .then(|| words.next())
                    .flatten()
            })
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or_else(|| panic!("{header} has no `#define {name} <number>`"));
        out.push_str(&format!(
            "/// `{name}` of `{header}`.\npub const {name}: u32 = {value};\n"
        ));
    }
    out
}

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    fs::write(out_dir.join("steer_limits.rs"), limits(HEADERS[0]))
        .expect("writing steer_limits.rs to OUT_DIR");
    let out = out_dir.join("steer.skel.rs");
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
