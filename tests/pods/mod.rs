//! (In the `e2e` test binary, to share its build.) Every sample on its pod, end to end (root only): the real `kiln up` samples workloads placed
//! for real in each cgroup layout a node can have — built under this machine's cgroup v2 tree
//! (and a v1 controller beside it) — while a stand-in Kubernetes API server (a mock: no real API
//! server can run here; agent/tests/support/kube_standin.rs) serves the pods; the labels are read
//! back from the stored profiles through the query API.
//!
//! One agent run covers all layouts at once, each workload a copy of one binary under its own
//! name (its comm selects its series):
//! systemd driver with containerd, CRI-O (guaranteed QoS) and Docker scopes; cgroupfs driver;
//! a kind-style nested node; a v1-only placement (hybrid host, v2 left at the root); a process in
//! a cgroup namespace of its own (its /proc/PID/cgroup says `/`); one in a pid namespace; processes
//! living 200 ms each; a systemd service and a plain Docker container outside Kubernetes.

#[path = "../../agent/tests/support/kube_standin.rs"]
mod kube_standin;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use std::time::{Duration, Instant};

use crate::common::wait::{POLL, poll_until, wait_until, within};
use crate::common::{KilnUp, build_workload, get_json, require_root};
use kube_standin::{KubeStandIn, pod};
use serde_json::json;

const NODE: &str = "kiln-e2e-node";

/// The cgroup directories made (removed deepest first) and the workloads started (killed).
struct Cleanup {
    dirs: Vec<PathBuf>,
    children: Vec<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Children of killed shells (the short-lived loop's) may linger a moment: wait until
        // each cgroup is empty before removing it.
        let mut dirs = self.dirs.clone();
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            let procs = d.join("cgroup.procs");
            for pid in std::fs::read_to_string(&procs).unwrap_or_default().lines() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
            // Not an assertion: this runs while unwinding too.
            let _ = poll_until(Instant::now() + Duration::from_secs(10), POLL, || {
                std::fs::read_to_string(&procs)
                    .map_or(true, |s| s.trim().is_empty())
                    .then_some(())
            });
            let _ = std::fs::remove_dir(&d);
        }
    }
}

fn v2_root() -> PathBuf {
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.join("cgroup.controllers").exists())
        .expect("a cgroup v2 tree at /sys/fs/cgroup/unified or /sys/fs/cgroup")
}

/// Creates `root/rel` (and its parents, recorded for removal).
fn make(cleanup: &mut Cleanup, root: &Path, rel: &str) -> PathBuf {
    let mut dir = root.to_owned();
    for part in rel.split('/').filter(|p| !p.is_empty()) {
        dir.push(part);
        if !dir.exists() {
            std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
            cleanup.dirs.push(dir.clone());
        }
    }
    dir
}

/// Runs `cmd` (a shell command line) with its shell first moved into `cgroup`.
fn run_in(cleanup: &mut Cleanup, cgroup: &Path, cmd: &str) {
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && {cmd}",
            cgroup.display()
        ))
        .spawn()
        .expect("sh runs");
    cleanup.children.push(child);
}

fn uid(i: u32) -> String {
    format!("e2e{i:05x}-0000-4000-8000-000000000000")
}

fn cid(i: u32) -> String {
    format!("{:064x}", 0xe2e000 + i)
}

/// The labels asserted, as `group_by` of one series query: one request answers for every
/// workload (per-label value queries would be ~130 requests per look).
const LABELS: &str = "comm,pid,namespace,pod,container,pod_uid,container_id,node,\
workload_kind,workload,service_name,app,secret";

/// The label sets of every series stored in the last 10 minutes (projected onto [`LABELS`]).
fn snapshot(base: &str) -> Vec<serde_json::Value> {
    let v = get_json(&format!(
        "{base}/api/v1/series?from=now-10m&step=600&group_by={LABELS}"
    ));
    v["series"]
        .as_array()
        .map(|a| a.iter().map(|s| s["labels"].clone()).collect())
        .unwrap_or_default()
}

/// The distinct values of label `name` over the series of workload `comm` (sorted).
fn values(snap: &[serde_json::Value], comm: &str, name: &str) -> Vec<String> {
    let mut v: Vec<String> = snap
        .iter()
        .filter(|l| l["comm"] == comm)
        .filter_map(|l| Some(l[name].as_str()?.to_owned()))
        .collect();
    v.sort();
    v.dedup();
    v
}

#[test]
#[ignore = "needs root"]
fn root_every_cgroup_layout_gets_its_pod_and_workload() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let spin = build_workload(dir.path(), "callchain.c", "kiln-spin", &["-O1"]);
    let v2 = v2_root();
    let v1_cpu = PathBuf::from("/sys/fs/cgroup/cpu");
    assert!(
        v1_cpu.join("cgroup.procs").exists() && !v1_cpu.join("cgroup.controllers").exists(),
        "a cgroup v1 cpu controller at /sys/fs/cgroup/cpu (hybrid host)"
    );
    let top = format!("kiln-e2e-pods-{}", std::process::id());
    let mut cleanup = Cleanup {
        dirs: Vec::new(),
        children: Vec::new(),
    };
    let api = KubeStandIn::start();

    // (comm, pod number, cgroup path under `top`, in v1 only, how the workload is started)
    struct Layout {
        comm: &'static str,
        n: u32,
        path: String,
        v1: bool,
        wrap: &'static str,
    }
    let u = |i: u32| uid(i).replace('-', "_");
    let layouts = [
        Layout {
            comm: "k-containerd",
            n: 1,
            path: format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{}.scope",
                u(1),
                cid(1)
            ),
            v1: false,
            wrap: "exec",
        },
        Layout {
            comm: "k-cgroupfs",
            n: 2,
            path: format!("kubepods/besteffort/pod{}/{}", uid(2), cid(2)),
            v1: false,
            wrap: "exec",
        },
        Layout {
            comm: "k-crio",
            n: 3,
            path: format!(
                "kubepods.slice/kubepods-pod{}.slice/crio-{}.scope",
                u(3),
                cid(3)
            ),
            v1: false,
            wrap: "exec",
        },
        Layout {
            comm: "k-docker",
            n: 4,
            path: format!(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/docker-{}.scope",
                u(4),
                cid(4)
            ),
            v1: false,
            wrap: "exec",
        },
        Layout {
            comm: "k-kind",
            n: 5,
            path: format!(
                "system.slice/docker-{}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{}.slice/cri-containerd-{}.scope",
                "ab".repeat(32),
                u(5),
                cid(5)
            ),
            v1: false,
            wrap: "exec",
        },
        Layout {
            comm: "k-v1only",
            n: 6,
            path: format!("kubepods/burstable/pod{}/{}", uid(6), cid(6)),
            v1: true,
            wrap: "exec",
        },
        Layout {
            comm: "k-cgroupns",
            n: 7,
            path: format!("kubepods/burstable/pod{}/{}", uid(7), cid(7)),
            v1: false,
            wrap: "exec unshare --cgroup",
        },
        Layout {
            comm: "k-pidns",
            n: 8,
            path: format!("kubepods/burstable/pod{}/{}", uid(8), cid(8)),
            v1: false,
            wrap: "exec unshare --pid --fork --kill-child --mount-proc",
        },
    ];
    // Owners, one of each kind.
    api.add_replicaset("shop", "checkout-6f7c8", Some("checkout"));
    api.add_job("batch", "report-29000", Some("report"));
    api.add_job("batch", "once", None);
    // (namespace, controller, expected workload kind and name) of pods 1..=9
    type Owner<'a> = (&'a str, Option<(&'a str, &'a str)>, &'a str, &'a str);
    let owners: [Owner; 9] = [
        (
            "shop",
            Some(("ReplicaSet", "checkout-6f7c8")),
            "Deployment",
            "checkout",
        ),
        ("shop", Some(("StatefulSet", "db")), "StatefulSet", "db"),
        (
            "kube-system",
            Some(("DaemonSet", "proxy")),
            "DaemonSet",
            "proxy",
        ),
        ("batch", Some(("Job", "report-29000")), "CronJob", "report"),
        ("batch", Some(("Job", "once")), "Job", "once"),
        ("shop", None, "Pod", "bare-6"),
        (
            "shop",
            Some(("StatefulSet", "cache")),
            "StatefulSet",
            "cache",
        ),
        ("shop", Some(("DaemonSet", "agent")), "DaemonSet", "agent"),
        ("batch", Some(("Job", "once")), "Job", "once"),
    ];
    let pod_name = |n: u32| {
        if owners[n as usize - 1].1.is_none() {
            format!("bare-{n}")
        } else {
            format!("pod-{n}")
        }
    };
    for n in 1..=9u32 {
        let (ns, owner, _, _) = owners[n as usize - 1];
        let mut p = pod(
            ns,
            &pod_name(n),
            &uid(n),
            NODE,
            owner,
            &[(&format!("c{n}"), &cid(n))],
            json!({"app": format!("app-{n}"), "secret": "not-allow-listed"}),
        );
        if n == 7 {
            p["metadata"]["annotations"] = json!({"pyroscope.io/service_name": "cache-override"});
        }
        api.apply_pod(p);
    }

    for l in &layouts {
        let bin = dir.path().join(l.comm);
        std::fs::copy(&spin, &bin).unwrap();
        let root = if l.v1 { &v1_cpu } else { &v2 };
        let cg = make(&mut cleanup, root, &format!("{top}/{}", l.path));
        run_in(
            &mut cleanup,
            &cg,
            // Niced: the agent and server under test must not starve on a small machine.
            &format!("{} nice -n 19 {} 60", l.wrap, bin.display()),
        );
    }
    // Processes living 200 ms each, one after the other, in pod 9's container.
    let short = dir.path().join("k-short");
    std::fs::copy(&spin, &short).unwrap();
    let cg = make(
        &mut cleanup,
        &v2,
        &format!("{top}/kubepods/burstable/pod{}/{}", uid(9), cid(9)),
    );
    run_in(
        &mut cleanup,
        &cg,
        &format!("while :; do nice -n 19 {} 0.2; done", short.display()),
    );
    // Outside Kubernetes: a systemd service, and a Docker container without a pod.
    for (comm, path) in [
        (
            "h-service",
            format!("{top}/system.slice/kiln-e2e-unit.service"),
        ),
        (
            "h-docker",
            format!("{top}/system.slice/docker-{}.scope", cid(10)),
        ),
    ] {
        let bin = dir.path().join(comm);
        std::fs::copy(&spin, &bin).unwrap();
        let cg = make(&mut cleanup, &v2, &path);
        run_in(
            &mut cleanup,
            &cg,
            &format!("exec nice -n 19 {} 60", bin.display()),
        );
    }

    let kiln = KilnUp::start_with(
        &dir.path().join("data"),
        99,
        &[
            "--kube-api",
            &api.url,
            "--node-name",
            NODE,
            "--pod-labels",
            "app",
        ],
    );
    let base = &kiln.base;
    let started = Instant::now();

    // (comm, pod number)
    let pods: Vec<(&str, u32)> = layouts
        .iter()
        .map(|l| (l.comm, l.n))
        .chain([("k-short", 9)])
        .collect();
    // Labels are asserted once every workload has arrived with its pod.
    let deadline = within(90);
    let snap = loop {
        let snap = snapshot(base);
        if pods
            .iter()
            .all(|(comm, n)| values(&snap, comm, "pod") == [pod_name(*n)])
        {
            break snap;
        }
        let missing: Vec<&str> = pods
            .iter()
            .filter(|(comm, n)| values(&snap, comm, "pod") != [pod_name(*n)])
            .map(|(comm, _)| *comm)
            .collect();
        eprintln!("{:?}: not yet labelled: {missing:?}", started.elapsed());
        if Instant::now() > deadline {
            let ours: Vec<_> = snap
                .iter()
                .filter(|l| l["comm"].as_str().is_some_and(|c| c.starts_with("k-")))
                .collect();
            panic!("not every layout's workload stored with its pod: {ours:#?}");
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    eprintln!("all layouts labelled after {:?}", started.elapsed());
    for (comm, n) in &pods {
        let (ns, _, kind, workload) = owners[*n as usize - 1];
        let want_service = if *n == 7 {
            "cache-override".to_owned()
        } else {
            format!("{ns}/{workload}")
        };
        for (label, want) in [
            ("namespace", ns.to_owned()),
            ("pod", pod_name(*n)),
            ("container", format!("c{n}")),
            ("pod_uid", uid(*n)),
            ("container_id", cid(*n)),
            ("node", NODE.to_owned()),
            ("workload_kind", kind.to_owned()),
            ("workload", workload.to_owned()),
            ("service_name", want_service),
            ("app", format!("app-{n}")),
        ] {
            assert_eq!(values(&snap, comm, label), [want], "{comm}: label {label}");
        }
        assert!(
            values(&snap, comm, "secret").is_empty(),
            "{comm}: not allow-listed"
        );
    }
    // The short-lived workload: several processes (pids), each 200 ms, all on the pod.
    wait_until(within(30), "several 200 ms processes stored", || {
        values(&snapshot(base), "k-short", "pid").len() >= 3
    });
    let snap = snapshot(base);
    assert_eq!(values(&snap, "k-short", "pod"), [pod_name(9)]);
    eprintln!("short-lived processes after {:?}", started.elapsed());

    // Outside Kubernetes.
    wait_until(within(60), "the host workloads stored", || {
        let snap = snapshot(base);
        !values(&snap, "h-service", "service_name").is_empty()
            && !values(&snap, "h-docker", "service_name").is_empty()
    });
    let snap = snapshot(base);
    assert_eq!(
        values(&snap, "h-service", "service_name"),
        ["kiln-e2e-unit"]
    );
    assert!(values(&snap, "h-service", "pod").is_empty());
    assert_eq!(values(&snap, "h-docker", "container_id"), [cid(10)]);
    assert_eq!(values(&snap, "h-docker", "service_name"), ["h-docker"]);
    assert!(values(&snap, "h-docker", "pod").is_empty());
    eprintln!("host workloads after {:?}", started.elapsed());
    drop(kiln);
    drop(cleanup);
    eprintln!("cleaned up after {:?}", started.elapsed());
}
