//! Builds the server's eBPF fast path (`bpf/server_fastpath.c`) with clang
//! into `$OUT_DIR/server_fastpath.o`, which `src/io/fastpath.rs` embeds.
//! clang and libbpf's headers are installed by `scripts/setup`.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let source = "bpf/server_fastpath.c";
    println!("cargo:rerun-if-changed={source}");
    println!("cargo:rerun-if-env-changed=CLANG");
    let out =
        PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default()).join("server_fastpath.o");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    // The multiarch directory holds <asm/types.h>, which -target bpf does
    // not search by itself.
    let multiarch = format!(
        "/usr/include/{}-linux-gnu",
        std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into())
    );
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-I{multiarch}"))
        .arg("-c")
        .arg(source)
        .arg("-o")
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{clang} failed to build {source} ({s})"),
        Err(e) => panic!(
            "cannot run {clang} to build {source}: {e} \
             (scripts/setup installs clang and libbpf-dev)"
        ),
    }
}
