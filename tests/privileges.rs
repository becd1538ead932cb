//! Least privilege, proven: the real agent, run with exactly the capabilities that deploy/ grants
//! its container (read from the manifest as `kubectl kustomize deploy/` renders it, not from a
//! list kept here), profiles a process living in another mount namespace — samples it, unwinds
//! it, names its kernel frames and uploads its binary so the server names its user frames — and
//! without each listed capability something named breaks.
//!
//! How the pod is modelled: Kubernetes gives capabilities added to a container only to uid 0 (it
//! sets no ambient capabilities), so the pod runs as root with a bounding set of exactly the added
//! ones, `no_new_privs` (allowPrivilegeEscalation: false) and the host's PID namespace (hostPID).
//! `setpriv --bounding-set=-all,+… --inh-caps=-all --no-new-privs` as root gives the agent the same
//! effective, permitted and bounding sets. The seccomp profile and the read-only root are not
//! modelled (neither changes what the capabilities allow).
//!
//! The workload runs as uid 65534 from a binary on a tmpfs mounted only inside its own mount
//! namespace (`unshare --mount`), in a 0700 directory: the agent reaches it only through
//! `/proc/PID/root` (CAP_SYS_PTRACE) and reads it only with CAP_DAC_READ_SEARCH.
//!
//! Needs root, gcc, kubectl (the machine image's, with kustomize), setpriv and unshare
//! (util-linux): ignored by a plain `cargo test`; `scripts/test.sh` runs it as root.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Instant;

use common::wait::{POLL, poll_until, within};
use common::{build_workload, enc, free_port, get_json, is_healthy, require_root};
use serde_json::Value;

/// What the agent names a frame of a binary it may not read, and kernel frames it cannot name
/// (agent/src/profile.rs: UNREADABLE_BINARY, UNREADABLE_PROCESS, HIDDEN_KERNEL).
const UNREADABLE: &str = "the agent could not read the binary: permission denied";
const UNREADABLE_PROCESS: &str = "the agent could not read the process's maps: permission denied";
const HIDDEN_KERNEL: &str = "kernel addresses hidden from the agent";
/// A kernel function on the workload's path into the kernel (read of /dev/zero).
const KERNEL_FRAME: &str = "vfs_read [k]";
const COMM: &str = "kiln-priv-work";

/// The agent container of the rendered manifest.
fn agent_container() -> Value {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&deploy)
        .output()
        .expect("kubectl runs (the machine image ships kubectl with kustomize)");
    assert!(
        out.status.success(),
        "kubectl kustomize deploy/ failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("rendered YAML is UTF-8");
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let doc: Value = serde::Deserialize::deserialize(doc).expect("rendered YAML parses");
        if doc["kind"] == "DaemonSet" && doc["metadata"]["name"] == "kiln-agent" {
            let spec = &doc["spec"]["template"]["spec"];
            assert_eq!(spec["hostPID"], true, "the model assumes hostPID");
            assert_eq!(
                spec["securityContext"]["runAsUser"], 0,
                "the model assumes uid 0"
            );
            let agent = spec["containers"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["name"] == "agent"))
                .expect("the DaemonSet has an `agent` container");
            return agent.clone();
        }
    }
    panic!("no DaemonSet kiln-agent in the rendered deploy/");
}

/// The capabilities the manifest adds to the agent (Kubernetes spelling: `BPF`, `SYS_PTRACE`),
/// after checking the rest of its security context is the least-privilege one.
fn manifest_capabilities() -> Vec<String> {
    let sc = agent_container()["securityContext"].clone();
    assert_ne!(sc["privileged"], true, "the agent must not be privileged");
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let add: Vec<String> = sc["capabilities"]["add"]
        .as_array()
        .expect("the agent container adds capabilities")
        .iter()
        .map(|c| c.as_str().expect("capability names are strings").to_owned())
        .collect();
    assert!(!add.is_empty());
    add
}

/// A child process killed (and reaped) when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A real `kiln server` on a free port with its own data directory.
struct Server {
    _child: Killed,
    base: String,
}

impl Server {
    fn start(dir: &Path) -> Server {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["server", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("kiln server starts");
        let server = Server {
            _child: Killed(child),
            base: format!("http://127.0.0.1:{port}"),
        };
        let healthy = poll_until(within(60), POLL, || {
            is_healthy(&format!("{}/healthz", server.base)).then_some(())
        });
        assert!(healthy.is_some(), "kiln server never answered /healthz");
        server
    }

    /// The workload's flame graph (everything stored so far).
    fn flame(&self) -> Value {
        get_json(&format!(
            "{}/api/v1/flamegraph?query={}&from=now-10m&until=now",
            self.base,
            enc(&format!(r#"{{service_name="{COMM}"}}"#))
        ))
    }
}

/// The agent run as the pod runs it: root with exactly `caps` (Kubernetes names) in its bounding,
/// permitted and effective sets, no_new_privs. Its output goes to `log`.
fn start_agent(caps: &[String], server: &Server, log: &Path) -> Killed {
    let bounding: String = std::iter::once("-all".to_owned())
        .chain(caps.iter().map(|c| format!("+{}", c.to_lowercase())))
        .collect::<Vec<_>>()
        .join(",");
    let log_file = File::create(log).expect("agent log file");
    let child = Command::new("setpriv")
        .arg(format!("--bounding-set={bounding}"))
        .args(["--inh-caps=-all", "--no-new-privs", "--"])
        .arg(env!("CARGO_BIN_EXE_kiln"))
        .args(["agent", "--server-url", &server.base])
        .args([
            "--frequency",
            "99",
            "--window",
            "1s",
            "--upload-budget",
            "off",
        ])
        .args(["--metrics-listen", &format!("127.0.0.1:{}", free_port())])
        .env("RUST_LOG", "info")
        .stdout(log_file.try_clone().expect("agent log file"))
        .stderr(log_file)
        .spawn()
        .expect("setpriv runs the agent");
    Killed(child)
}

/// Starts the workload as uid 65534 in a new mount namespace, from a tmpfs mounted on `mnt` (an
/// empty directory outside it), in a 0700 directory with a 0500 binary: that path exists only
/// inside the namespace.
fn start_workload(built: &Path, mnt: &Path) -> Killed {
    let script = r#"set -e
mount -t tmpfs -o mode=0755 kiln-priv "$1"
mkdir "$1/private"
cp "$2" "$1/private/kiln-priv-work"
chown -R 65534:65534 "$1/private"
chmod 0500 "$1/private/kiln-priv-work"
chmod 0700 "$1/private"
exec setpriv --reuid=65534 --regid=65534 --clear-groups "$1/private/kiln-priv-work" 600"#;
    let child = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(mnt)
        .arg(built)
        .spawn()
        .expect("unshare runs the workload");
    let pid = child.id();
    let killed = Killed(child);
    // Running once the exec into the binary has happened (its comm is the binary's name).
    let running = poll_until(within(10), POLL, || {
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .ok()
            .filter(|c| c.trim() == COMM)
    });
    assert!(running.is_some(), "the workload did not start");
    assert!(
        !mnt.join("private").exists(),
        "the workload's binary must be invisible outside its mount namespace"
    );
    killed
}

/// Every frame name in a flame graph.
fn names(node: &Value, out: &mut Vec<String>) {
    if let Some(n) = node["name"].as_str() {
        out.push(n.to_owned());
    }
    for c in node["children"].as_array().into_iter().flatten() {
        names(c, out);
    }
}

fn flame_names(flame: &Value) -> Vec<String> {
    let mut out = Vec::new();
    names(&flame["root"], &mut out);
    out
}

/// Polls the workload's flame graph until `cond` holds on its frame names (60 s at most: a loaded machine); panics
/// with `what`, the last names seen and the agent's log otherwise.
fn wait_for_frames(server: &Server, log: &Path, what: &str, cond: impl Fn(&[String]) -> bool) {
    let mut last = Vec::new();
    let ok = poll_until(within(60), POLL * 10, || {
        last = flame_names(&server.flame());
        cond(&last).then_some(())
    });
    if ok.is_none() {
        panic!(
            "timed out waiting for {what}; frames seen: {last:?}\nagent log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
}

fn has(names: &[String], s: &str) -> bool {
    names.iter().any(|n| n.contains(s))
}

fn is_user_chain(names: &[String]) -> bool {
    ["main", "alpha", "beta", "hot"]
        .iter()
        .all(|f| names.iter().any(|n| n == f))
}

/// Waits (20 s at most) for the agent to exit; returns its log.
fn wait_for_exit(agent: &mut Killed, log: &Path) -> String {
    let status = poll_until(within(20), POLL, || agent.0.try_wait().ok().flatten())
        .expect("the agent should exit when it cannot load the sampler");
    assert!(!status.success(), "the agent must fail, not exit 0");
    std::fs::read_to_string(log).unwrap_or_default()
}

#[test]
#[ignore = "needs root"]
fn root_agent_runs_with_exactly_the_manifest_capabilities() {
    require_root();
    let caps = manifest_capabilities();
    eprintln!("capabilities of the rendered manifest: {caps:?}");
    let dir = tempfile::tempdir().unwrap();
    let built = build_workload(
        dir.path(),
        "privileges.c",
        COMM,
        &["-O0", "-g", "-fno-omit-frame-pointer"],
    );
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let _workload = start_workload(&built, &mnt);
    let log = |name: &str| -> PathBuf { dir.path().join(format!("agent-{name}.log")) };
    let without = |c: &str| -> Vec<String> { caps.iter().filter(|x| *x != c).cloned().collect() };
    let started = Instant::now();

    // Everything the manifest grants: the whole stack named, user frames by the server from the
    // binary the agent uploaded, kernel frames by the agent.
    {
        let server = Server::start(&dir.path().join("all"));
        let log = log("all");
        let _agent = start_agent(&caps, &server, &log);
        wait_for_frames(
            &server,
            &log,
            "main -> alpha -> beta -> hot and a named kernel frame",
            |n| is_user_chain(n) && n.iter().any(|f| f == KERNEL_FRAME),
        );
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.contains("running with every capability the agent uses"),
            "the agent reports its capabilities at start:\n{text}"
        );
    }

    for cap in &caps {
        let reduced = without(cap);
        let server = Server::start(&dir.path().join(cap));
        let log = log(cap);
        let mut agent = start_agent(&reduced, &server, &log);
        let kernel_name = format!("CAP_{cap}");
        match cap.as_str() {
            // Without either, the sampler cannot be loaded: the agent stops at once and says which.
            "BPF" | "PERFMON" => {
                let text = wait_for_exit(&mut agent, &log);
                assert!(
                    text.contains(&kernel_name) && text.contains("lacks"),
                    "the error should name {kernel_name}:\n{text}"
                );
            }
            // Kernel frames stay unnamed, and say why; user frames are still named.
            "SYSLOG" => {
                wait_for_frames(&server, &log, "kernel frames unnamed with a reason", |n| {
                    is_user_chain(n) && has(n, HIDDEN_KERNEL)
                });
                let n = flame_names(&server.flame());
                assert!(!n.iter().any(|f| f == KERNEL_FRAME), "{n:?}");
            }
            // The file is unreadable: no upload, and the frames say the agent was refused.
            "DAC_READ_SEARCH" => {
                wait_for_frames(
                    &server,
                    &log,
                    "user frames unnamed: permission denied",
                    |n| has(n, UNREADABLE) && n.iter().any(|f| f == KERNEL_FRAME),
                );
                let n = flame_names(&server.flame());
                assert!(
                    !n.iter().any(|f| f == "hot"),
                    "no binary upload, so no names: {n:?}"
                );
            }
            // Another user's process: its root (`/proc/PID/root`, the only way into its mount
            // namespace) is closed to the agent, so its binary is neither read nor uploaded, and
            // its frames say the agent was refused (the binary, or the maps of a process the
            // kernel hides them for); samples and kernel frames still arrive.
            "SYS_PTRACE" => {
                wait_for_frames(
                    &server,
                    &log,
                    "user frames unnamed: permission denied",
                    |n| {
                        (has(n, UNREADABLE) || has(n, UNREADABLE_PROCESS))
                            && n.iter().any(|f| f == KERNEL_FRAME)
                    },
                );
                let n = flame_names(&server.flame());
                assert!(
                    !n.iter().any(|f| f == "hot"),
                    "no binary upload, so no names: {n:?}"
                );
            }
            other => panic!(
                "the manifest adds {other}, which this test does not know what to take away from: \
                 teach it what breaks without {other}, or take it out of the manifest"
            ),
        }
        if !matches!(cap.as_str(), "BPF" | "PERFMON") {
            let text = std::fs::read_to_string(&log).unwrap();
            assert!(
                text.contains(&format!("missing {kernel_name}")),
                "the agent names the missing capability at start:\n{text}"
            );
        }
        eprintln!("without {kernel_name}: breaks as expected");
    }
    eprintln!("took {:?}", started.elapsed());
}
