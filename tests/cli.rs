//! The `kiln` binary's command line: help that explains itself, bad flags named, and a clear
//! message (not a crash or a kernel errno) when the agent lacks the privileges to load eBPF.

use std::process::Command;

fn kiln() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
}

#[test]
fn help_lists_every_subcommand_and_setting() {
    let out = kiln().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for word in ["up", "server", "agent"] {
        assert!(help.contains(word), "--help lacks {word}:\n{help}");
    }
    let out = kiln().args(["up", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "KILN_LISTEN",
        "--data-dir",
        "--frequency",
        "KILN_FREQUENCY",
        "--window",
        "--metrics-listen",
    ] {
        assert!(help.contains(flag), "up --help lacks {flag}:\n{help}");
    }
    let out = kiln().args(["agent", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("KILN_SERVER_URL"));
}

#[test]
fn bad_flags_are_named() {
    let out = kiln()
        .args(["agent", "--window", "forever"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--window") && err.contains("forever"), "{err}");

    let out = kiln()
        .args([
            "agent",
            "--server-url",
            "ftp://x",
            "--metrics-listen",
            "off",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ftp://x"),
        "the bad URL should be named: {err}"
    );
}

/// As an unprivileged user (dropped from root with setpriv), `kiln up` must say what is missing.
#[test]
fn up_without_privileges_says_what_is_missing() {
    let root = unsafe { geteuid() } == 0;
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = if root {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(env!("CARGO_BIN_EXE_kiln"));
        // The unprivileged user must be able to create the data directory.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        c
    } else {
        kiln()
    };
    let out = cmd
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "kiln up without privileges must fail"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("CAP_BPF") && err.contains("root"),
        "the message should name what is missing: {err}"
    );
}

unsafe extern "C" {
    fn geteuid() -> u32;
}
