//! Compiles `src/sampler.bpf.c` with clang when it is available, else uses the checked-in object
//! `prebuilt/sampler.bpf.o` so that `cargo build` works on machines without clang.
//!
//! It also turns the layout list of `include/kiln_sample.h` (`KILN_SAMPLE_HEADER_SIZE` and one
//! `KILN_SAMPLE_FIELD(name, offset, size);` line per field) into `$OUT_DIR/layout.rs`, compile-time
//! assertions of the Rust mirror against the same numbers the C compiler checks.
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
    write_layout_checks(&header, &out.with_file_name("layout.rs"));
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

/// Generates the Rust side of the layout contract from the header's list: the header size as a
/// constant, an offset and a size assertion per field, and an exhaustive destructuring of
/// `SampleHeader` (no `..`), so that a Rust field missing from the list fails to compile too.
fn write_layout_checks(header: &Path, out: &Path) {
    let text = std::fs::read_to_string(header).expect("read include/kiln_sample.h");
    let mut size = None;
    let mut fields = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("#define KILN_SAMPLE_HEADER_SIZE") {
            size = Some(
                v.trim()
                    .parse::<usize>()
                    .expect("KILN_SAMPLE_HEADER_SIZE is a number"),
            );
        } else if let Some(args) = line
            .strip_prefix("KILN_SAMPLE_FIELD(")
            .and_then(|l| l.strip_suffix(");"))
        {
            let parts: Vec<&str> = args.split(',').map(str::trim).collect();
            let [name, off, len] = parts[..] else {
                panic!("malformed KILN_SAMPLE_FIELD line: {line}");
            };
            let num = |s: &str| {
                s.parse::<usize>()
                    .unwrap_or_else(|_| panic!("not a number in {line}"))
            };
            fields.push((name.to_owned(), num(off), num(len)));
        }
    }
    let size = size.expect("include/kiln_sample.h defines KILN_SAMPLE_HEADER_SIZE");
    assert!(
        !fields.is_empty(),
        "include/kiln_sample.h lists no KILN_SAMPLE_FIELD"
    );
    let mut rs = String::from(
        "// Generated by sampler-bpf/build.rs from include/kiln_sample.h; do not edit.\n",
    );
    rs += &format!(
        "/// `KILN_SAMPLE_HEADER_SIZE`: bytes of [`SampleHeader`].\npub const SAMPLE_HEADER_SIZE: usize = {size};\n"
    );
    rs += "const _: () = assert!(core::mem::size_of::<SampleHeader>() == SAMPLE_HEADER_SIZE, \"SampleHeader size differs from kiln_sample.h\");\n";
    for (name, off, len) in &fields {
        rs += &format!(
            "const _: () = assert!(core::mem::offset_of!(SampleHeader, {name}) == {off}, \"SampleHeader.{name}: offset differs from kiln_sample.h\");\n\
             const _: () = assert!(field_size(|h: &SampleHeader| &h.{name}) == {len}, \"SampleHeader.{name}: size differs from kiln_sample.h\");\n"
        );
    }
    let names: Vec<String> = fields.iter().map(|(n, _, _)| format!("{n}: _")).collect();
    rs += &format!(
        "/// Compiles only while every field of [`SampleHeader`] is in the header's list.\n\
         #[allow(dead_code)]\nfn every_field_is_listed(h: SampleHeader) {{\n    let SampleHeader {{ {} }} = h;\n}}\n",
        names.join(", ")
    );
    std::fs::write(out, rs).expect("write layout.rs");
}
