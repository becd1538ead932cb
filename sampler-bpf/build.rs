//! Compiles `src/sampler.bpf.c` with clang when it is available, else uses the checked-in object
//! `prebuilt/sampler.bpf.o` so that `cargo build` works on machines without clang.
//!
//! The prebuilt copy must match the source: `KILN_CHECK_PREBUILT=1 cargo build -p kiln-sampler-bpf`
//! (run by .ci/run) fails when they differ, and `KILN_UPDATE_PREBUILT=1` refreshes it.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out =
        PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("sampler.bpf.o");
    let source = manifest.join("src/sampler.bpf.c");
    let header = manifest.join("include/kiln_sample.h");
    let prebuilt = manifest.join("prebuilt/sampler.bpf.o");
    for p in [&source, &header, &prebuilt] {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    println!("cargo:rerun-if-env-changed=KILN_BPF_CLANG");
    println!("cargo:rerun-if-env-changed=KILN_CHECK_PREBUILT");
    println!("cargo:rerun-if-env-changed=KILN_UPDATE_PREBUILT");

    let clang = env::var("KILN_BPF_CLANG").unwrap_or_else(|_| "clang".into());
    let have_headers = Path::new("/usr/include/bpf/bpf_helpers.h").exists();
    if have_headers && compile(&clang, &manifest, &out) {
        strip(&out);
        if env::var_os("KILN_UPDATE_PREBUILT").is_some() {
            std::fs::copy(&out, &prebuilt)
                .expect("copy the fresh object over prebuilt/sampler.bpf.o");
        } else if env::var_os("KILN_CHECK_PREBUILT").is_some() {
            let fresh = std::fs::read(&out).expect("read the fresh object");
            let checked_in = std::fs::read(&prebuilt).unwrap_or_default();
            assert!(
                fresh == checked_in,
                "sampler-bpf/prebuilt/sampler.bpf.o is stale: rebuild it with KILN_UPDATE_PREBUILT=1 cargo build -p kiln-sampler-bpf"
            );
        }
        return;
    }
    println!(
        "cargo:warning=clang or libbpf-dev headers not found: using the checked-in sampler-bpf/prebuilt/sampler.bpf.o"
    );
    std::fs::copy(&prebuilt, &out)
        .expect("sampler-bpf/prebuilt/sampler.bpf.o is missing and clang is unavailable");
}

fn compile(clang: &str, manifest: &Path, out: &Path) -> bool {
    // Relative paths from the crate directory: BTF line info records source file names, and the
    // object must be byte-identical wherever the repository is checked out.
    let status = Command::new(clang)
        .current_dir(manifest)
        .args([
            "-O2",
            "-g",
            "-target",
            "bpf",
            "-mcpu=v3",
            "-D__TARGET_ARCH_x86",
            "-Wall",
            "-Werror",
        ])
        .arg("-fdebug-compilation-dir=.")
        .arg("-Iinclude")
        // <linux/types.h> includes <asm/types.h>, which Debian keeps under the multiarch directory.
        .arg("-I/usr/include/x86_64-linux-gnu")
        .args(["-c", "src/sampler.bpf.c", "-o"])
        .arg(out)
        .status();
    match status {
        Ok(s) if s.success() => true,
        Ok(s) => panic!("clang failed to compile sampler-bpf/src/sampler.bpf.c ({s})"),
        Err(_) => false,
    }
}

/// Drops DWARF (keeps BTF) so the object is small and byte-for-byte reproducible across paths.
fn strip(obj: &Path) {
    for tool in ["llvm-strip", "llvm-strip-14", "llvm-strip-19"] {
        if Command::new(tool)
            .arg("-g")
            .arg(obj)
            .status()
            .is_ok_and(|s| s.success())
        {
            return;
        }
    }
    println!("cargo:warning=llvm-strip not found: the object keeps its DWARF");
}
