//! The `kiln` binary's command line as a user meets it: `--help` documents every setting of the
//! README's configuration table with its environment variable (and nothing the table leaves out),
//! `--version` says which release this is, a bad value is a usage error (exit code 2) that names the
//! flag and the value, and a missing privilege is a clear message rather than a kernel errno.

use std::collections::BTreeSet;
use std::process::{Command, Output};

fn kiln() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    // The tests must see the flags' defaults, not whatever this shell exports.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("KILN_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

fn run(args: &[&str]) -> Output {
    kiln().args(args).output().expect("kiln runs")
}

fn help(subcommand: &str) -> String {
    let out = run(&[subcommand, "--help"]);
    assert!(out.status.success(), "kiln {subcommand} --help failed");
    String::from_utf8(out.stdout).expect("help is UTF-8")
}

/// One row of the README's configuration table.
#[derive(Debug)]
struct Row {
    flag: String,
    env: String,
    /// The subcommands whose `--help` must list it (from the "server:" / "agent:" in the meaning;
    /// `up` runs both, except for what it derives itself).
    commands: Vec<&'static str>,
}

/// The configuration table of README.md, parsed: `| \`--flag\` | \`ENV\` | default | meaning |`.
fn readme_rows() -> Vec<Row> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let section = readme
        .split("\n## Configuration")
        .nth(1)
        .expect("README has a Configuration section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut rows = Vec::new();
    for line in section.lines().filter(|l| l.starts_with("| `--")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (flag, env, meaning) = (cells[1], cells[2], cells[4]);
        let unquote = |s: &str| s.trim_matches('`').to_owned();
        let mut commands = Vec::new();
        for (who, command) in [("server:", "server"), ("agent:", "agent")] {
            if meaning.contains(who) {
                commands.push(command);
                if !meaning.contains("`up` derives") {
                    commands.push("up");
                }
            }
        }
        assert!(
            !commands.is_empty(),
            "README row {flag} does not say whether it is a server: or agent: setting"
        );
        rows.push(Row {
            flag: unquote(flag),
            env: unquote(env),
            commands,
        });
    }
    assert!(
        rows.len() >= 15,
        "the configuration table was not parsed: {rows:?}"
    );
    rows
}

/// The help entry of `flag`: from its line up to the next flag's line.
fn entry<'a>(help: &'a str, flag: &str) -> Option<&'a str> {
    let lines: Vec<&str> = help.lines().collect();
    let start = lines.iter().position(|l| {
        l.trim_start()
            .split([' ', ','])
            .any(|word| word == flag || word.starts_with(&format!("{flag}=")))
    })?;
    let end = lines[start + 1..]
        .iter()
        .position(|l| l.trim_start().starts_with('-'))
        .map_or(lines.len(), |n| start + 1 + n);
    let from = lines[..start].iter().map(|l| l.len() + 1).sum::<usize>();
    let to = lines[..end].iter().map(|l| l.len() + 1).sum::<usize>();
    help.get(from..to.min(help.len()))
}

/// The long flags a help text lists (`--help` and `--version` aside): each entry's line starts
/// with `--flag` or `-f, --flag`.
fn flags_in(help: &str) -> BTreeSet<String> {
    help.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace().take(2);
            let first = words.next()?;
            let word = if first.starts_with("--") {
                first
            } else if first.starts_with('-') && first.ends_with(',') {
                words.next()?
            } else {
                return None;
            };
            let flag = word.split(['=', '<', ',']).next()?;
            flag.starts_with("--").then(|| flag.to_owned())
        })
        .filter(|f| f != "--help" && f != "--version")
        .collect()
}

#[test]
fn help_lists_every_readme_setting_with_its_env_var() {
    let rows = readme_rows();
    for command in ["up", "server", "agent"] {
        let text = help(command);
        for row in rows.iter().filter(|r| r.commands.contains(&command)) {
            let entry = entry(&text, &row.flag).unwrap_or_else(|| {
                panic!("kiln {command} --help does not list {}:\n{text}", row.flag)
            });
            // `[env: NAME=value]`, or `[env: NAME]` for a secret (values hidden).
            assert!(
                entry.contains(&format!("[env: {}=", row.env))
                    || entry.contains(&format!("[env: {}]", row.env)),
                "kiln {command} --help lists {} without its variable {}:\n{entry}",
                row.flag,
                row.env
            );
        }
    }
}

#[test]
fn every_flag_in_help_is_documented_in_the_readme() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let config = readme
        .split("\n## Configuration")
        .nth(1)
        .expect("README has a Configuration section");
    let config = config.split("\n## ").next().unwrap_or(config);
    for command in ["up", "server", "agent"] {
        let text = help(command);
        let flags = flags_in(&text);
        assert!(
            flags.contains("--listen") || flags.contains("--server-url"),
            "the flags of kiln {command} --help were not found: {flags:?}\n{text}"
        );
        for flag in flags {
            assert!(
                config.contains(&format!("`{flag}`")),
                "kiln {command} --help lists {flag}, which README's configuration section does not document"
            );
        }
    }
}

#[test]
fn top_level_help_names_each_subcommand_with_its_purpose() {
    let out = run(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for (command, purpose) in [
        ("up", "server and an agent"),
        ("server", "central server"),
        ("agent", "node agent"),
    ] {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{command} ")))
            .unwrap_or_else(|| panic!("kiln --help does not list `{command}`:\n{text}"));
        assert!(
            line.contains(purpose),
            "`{command}` should be described ({purpose}): {line}"
        );
    }
    // Without a subcommand: a usage error that shows the choices.
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(2), "kiln without a subcommand");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Usage"), "{err}");
}

#[test]
fn version_is_the_crate_version() {
    let out = run(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("kiln {}", env!("CARGO_PKG_VERSION"))
    );
}

/// A bad value exits with 2 (a usage error, as for any clap program) and the message names both
/// the flag and the value, whether it came from the command line or from the environment.
#[test]
fn bad_values_are_usage_errors_naming_flag_and_value() {
    let bad: &[(&str, &str, &str)] = &[
        ("agent", "--window", "forever"),
        ("agent", "--frequency", "lots"),
        ("agent", "--stack-copy-bytes", "16k"),
        ("agent", "--metrics-listen", "nowhere"),
        ("agent", "--ring-buffer", "huge"),
        ("agent", "--upload-budget", "5parsecs"),
        ("server", "--listen", "not-an-address"),
        ("server", "--retention", "forever"),
        ("server", "--retention-bytes", "lots"),
        ("server", "--max-body-bytes", "5MB"),
        ("up", "--wal-segment-bytes", "1XB"),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    for &(command, flag, value) in bad {
        let mut cmd = kiln();
        cmd.args([command, flag, value]);
        if command != "agent" {
            cmd.arg("--data-dir").arg(&data);
        }
        let out = cmd.output().expect("kiln runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "kiln {command} {flag} {value}: expected a usage error (2):\n{err}"
        );
        assert!(
            err.contains(flag) && err.contains(value),
            "kiln {command} {flag} {value}: the message should name both:\n{err}"
        );
    }
    assert!(
        !data.exists(),
        "a refused command line must not create the data directory"
    );

    // The same through the environment variable: the message names the flag it stands for.
    let out = kiln()
        .arg("agent")
        .env("KILN_WINDOW", "forever")
        .output()
        .expect("kiln runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "KILN_WINDOW=forever:\n{err}");
    assert!(err.contains("--window") && err.contains("forever"), "{err}");

    // An unknown flag is named too.
    let out = run(&["server", "--retension", "7d"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--retension"), "{err}");
}

/// A server URL the agent cannot use is refused before it starts, naming the flag and the URL.
#[test]
fn unusable_server_url_is_named() {
    for url in ["ftp://x", "not a url"] {
        let out = run(&["agent", "--server-url", url, "--metrics-listen", "off"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "--server-url {url}: expected a usage error (2):\n{err}"
        );
        assert!(
            err.contains("--server-url") && err.contains(url),
            "the flag and the bad URL should be named: {err}"
        );
    }
}

/// As an unprivileged user (dropped from root with setpriv when run as root), `kiln up` must say
/// what is missing, and fail before it serves anything.
#[test]
fn up_without_privileges_says_what_is_missing() {
    // SAFETY: no preconditions.
    let root = unsafe { geteuid() } == 0;
    let dir = tempfile::tempdir().expect("tempdir");
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
        .expect("chmod");
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
        .expect("kiln runs");
    assert!(
        !out.status.success(),
        "kiln up without privileges must fail"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("CAP_BPF") && err.contains("root"),
        "the message should name what is missing: {err}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("Kiln is up"),
        "it must not announce a URL it will not serve"
    );
}

unsafe extern "C" {
    fn geteuid() -> u32;
}
