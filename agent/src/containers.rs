//! Which container and pod a process belongs to, read from its cgroup path.
//!
//! Kubernetes (through the kubelet's cgroup driver) and the container runtimes encode the pod UID
//! and the container ID in the cgroup path, in a handful of layouts:
//!
//! - cgroupfs driver: `/kubepods/burstable/pod<uid>/<container id>` (also `besteffort`, or no QoS
//!   level for guaranteed pods);
//! - systemd driver: `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid with
//!   '_' for '-'>.slice/cri-containerd-<id>.scope` (`crio-<id>`, `docker-<id>` for other runtimes);
//! - nested clusters (kind, minikube, k3d): the same, below the outer container's own cgroup
//!   (`/docker/<outer id>/kubepods/...`, `/kubelet.slice/kubelet-kubepods.slice/...`);
//! - plain Docker / Podman without Kubernetes: `/docker/<id>`, `/system.slice/docker-<id>.scope`,
//!   `/machine.slice/libpod-<id>.scope`.
//!
//! The innermost pod segment and the innermost container ID win, so nesting does not confuse the
//! two levels. Names (pod, namespace, container) are not in the path: [`crate::kube`] maps the
//! UID and ID to them.
//!
//! Which path: a process's own `/proc/PID/cgroup` is relative to the *reader's* cgroup namespace
//! and says `/` for a process in a cgroup namespace of its own, and a process that exited before
//! the agent read it has none. The sampler records each sample's cgroup ID (the inode of its
//! directory in the host's cgroup v2 tree), which [`CgroupPaths`] maps back to a path by walking
//! that tree; [`best_path`] picks between the two. On a hybrid v1+v2 host where the kubelet only
//! writes the v1 controllers, the v2 path carries no pod and the v1 path from `/proc` is used.
//!
//! Outside Kubernetes, the innermost systemd unit (`<name>.service`) names the service
//! ([`systemd_unit`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a cgroup path says about a process's container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerRef {
    /// The pod's UID, with dashes (`0d5b7a4e-…`), when the path is a Kubernetes pod's.
    pub pod_uid: Option<String>,
    /// The container ID (64 hex digits), without the runtime prefix.
    pub container_id: Option<String>,
}

impl ContainerRef {
    pub fn is_empty(&self) -> bool {
        self.pod_uid.is_none() && self.container_id.is_none()
    }
}

/// Reads the pod UID and container ID from a cgroup path (see the module docs for the layouts).
pub fn parse_cgroup_path(path: &str) -> ContainerRef {
    let mut out = ContainerRef::default();
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        if let Some(uid) = pod_uid(segment) {
            out.pod_uid = Some(uid);
            // A container ID seen above the pod belongs to an outer (node) container.
            out.container_id = None;
        } else if let Some(id) = container_id(segment) {
            out.container_id = Some(id);
        }
    }
    out
}

/// `pod<uid>` (cgroupfs) or `kubepods[-qos]-pod<uid_with_underscores>.slice` (systemd).
fn pod_uid(segment: &str) -> Option<String> {
    let s = segment.strip_suffix(".slice").unwrap_or(segment);
    let at = s.rfind("pod")?;
    // cgroupfs: the whole segment is `pod<uid>`; systemd: `...-pod<uid>` after a dash.
    if at != 0 && !s[..at].ends_with('-') {
        return None;
    }
    if at != 0 && !s.starts_with("kubepods") && !s.contains("-kubepods") {
        return None;
    }
    let uid = s[at + 3..].replace('_', "-");
    is_uid(&uid).then_some(uid)
}

/// `8-4-4-4-12` hex digits.
fn is_uid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A 64-hex-digit ID, bare (cgroupfs) or as `<runtime>-<id>.scope` (systemd).
fn container_id(segment: &str) -> Option<String> {
    let s = segment.strip_suffix(".scope").unwrap_or(segment);
    let id = s.rsplit_once('-').map_or(s, |(_, id)| id);
    // `cri-containerd-<id>`, `crio-<id>`, `docker-<id>`, `libpod-<id>` all end in the bare ID.
    let id = id.rsplit_once(':').map_or(id, |(_, id)| id);
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_ascii_lowercase())
}

/// The innermost systemd service unit of a cgroup path, without `.service`
/// (`/system.slice/nginx.service` → `nginx`, `.../user@0.service/app.slice/foo.service` → `foo`).
pub fn systemd_unit(path: &str) -> Option<&str> {
    path.rsplit('/')
        .find_map(|s| s.strip_suffix(".service"))
        .filter(|u| !u.is_empty())
}

/// The more informative of the path the sample's cgroup ID names (`by_id`, host view) and the one
/// `/proc/PID/cgroup` gave (`by_proc`): one that names a pod or container first, the ID's when
/// both or neither do (unless it is the bare root).
pub fn best_path<'a>(by_id: Option<&'a str>, by_proc: Option<&'a str>) -> Option<&'a str> {
    let names = |p: Option<&str>| p.is_some_and(|p| !parse_cgroup_path(p).is_empty());
    match (by_id, by_proc) {
        (Some(i), _) if names(Some(i)) => Some(i),
        (_, Some(p)) if names(Some(p)) => Some(p),
        (Some(i), Some(p)) => Some(if i == "/" { p } else { i }),
        (i, p) => i.or(p),
    }
}

/// Most cgroups remembered by [`CgroupPaths`]; a walk stops there.
pub const MAX_CGROUPS: usize = 65_536;
/// Deepest cgroup walked (Kubernetes layouts are ≤ 10 deep, nested ones ≤ 15).
const MAX_DEPTH: usize = 32;
/// Shortest time between two walks of the tree.
const MIN_WALK_GAP: Duration = Duration::from_millis(100);
/// How long an ID not found by a walk is not looked for again.
const MISS_TTL: Duration = Duration::from_secs(5);
/// Most IDs remembered as not found.
const MAX_MISSES: usize = 4_096;

/// Maps cgroup IDs (from samples) to paths in the host's cgroup v2 tree. The map is rebuilt by a
/// walk of the tree when an ID is not in it (new cgroups), at most every [`MIN_WALK_GAP`]; removed
/// cgroups leave it at the next walk. Bounded by [`MAX_CGROUPS`].
pub struct CgroupPaths {
    /// Where the v2 tree is mounted (`None`: no v2 tree, every lookup misses).
    root: Option<PathBuf>,
    ids: HashMap<u64, Arc<str>>,
    last_walk: Option<Instant>,
    /// IDs a walk did not find, and when.
    misses: HashMap<u64, Instant>,
}

impl CgroupPaths {
    /// The host's v2 tree, found in `/proc/self/mountinfo` (`/sys/fs/cgroup` on a unified host,
    /// `/sys/fs/cgroup/unified` on a hybrid one).
    pub fn detect() -> Self {
        let root = std::fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|m| cgroup2_mount(&m));
        if root.is_none() {
            tracing::info!(
                "no cgroup v2 tree mounted: cgroups are read from /proc/PID/cgroup only"
            );
        }
        Self::at(root)
    }

    /// A map over the v2 tree mounted at `root`.
    pub fn at(root: Option<PathBuf>) -> Self {
        CgroupPaths {
            root,
            ids: HashMap::new(),
            last_walk: None,
            misses: HashMap::new(),
        }
    }

    /// The path (`/a/b`, `/` for the root) of the cgroup with this ID, walking the tree when it is
    /// new. `None` when it is not found (removed, or outside the mounted tree).
    pub fn path(&mut self, id: u64) -> Option<Arc<str>> {
        if id == 0 {
            return None;
        }
        if let Some(p) = self.ids.get(&id) {
            return Some(Arc::clone(p));
        }
        if self
            .misses
            .get(&id)
            .is_some_and(|at| at.elapsed() < MISS_TTL)
        {
            return None;
        }
        if self.last_walk.is_some_and(|t| t.elapsed() < MIN_WALK_GAP) {
            return None;
        }
        self.walk();
        let found = self.ids.get(&id).cloned();
        if found.is_none() {
            if self.misses.len() >= MAX_MISSES {
                self.misses.clear();
            }
            self.misses.insert(id, Instant::now());
        }
        found
    }

    /// Cgroups currently mapped.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    fn walk(&mut self) {
        self.last_walk = Some(Instant::now());
        let Some(root) = &self.root else { return };
        let mut ids = HashMap::new();
        let mut stack: Vec<(PathBuf, String, usize)> = vec![(root.clone(), String::new(), 0)];
        while let Some((dir, rel, depth)) = stack.pop() {
            let Some(ino) = dir_inode(&dir) else { continue };
            if ids.len() >= MAX_CGROUPS {
                tracing::debug!(
                    limit = MAX_CGROUPS,
                    "cgroup tree larger than the map: walk cut"
                );
                break;
            }
            let shown: Arc<str> = if rel.is_empty() {
                "/".into()
            } else {
                rel.as_str().into()
            };
            ids.insert(ino, shown);
            if depth >= MAX_DEPTH {
                continue;
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir())
                    && let Some(name) = e.file_name().to_str()
                {
                    stack.push((e.path(), format!("{rel}/{name}"), depth + 1));
                }
            }
        }
        self.ids = ids;
        // Whatever was missed may exist now; the walk just answered for it.
        self.misses.retain(|id, _| !self.ids.contains_key(id));
    }
}

fn dir_inode(dir: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).ok().map(|m| m.ino())
}

/// The mount point of the cgroup2 file system's whole tree, from `/proc/self/mountinfo`: a mount
/// of its root, not of a subtree. In a cgroup namespace of its own (an agent's pod) the
/// namespace's root shows as `/` and the host's root (a hostPath volume) as `/../..`; the mount
/// reaching highest wins, so the host's tree is walked when it is mounted.
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    let mut best: Option<(usize, &str)> = None;
    for line in mountinfo.lines() {
        // `id parent major:minor root mountpoint options [optional...] - fstype source superopts`
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() != Some("cgroup2") {
            continue;
        }
        let mut f = left.split_whitespace();
        let (Some(root), Some(mount)) = (f.nth(3), f.next()) else {
            continue;
        };
        if !root.split('/').all(|p| p.is_empty() || p == "..") {
            continue; // a subtree
        }
        let ups = root.split('/').filter(|p| *p == "..").count();
        if best.is_none_or(|(b, _)| ups > b) {
            best = Some((ups, mount));
        }
    }
    best.map(|(_, m)| PathBuf::from(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0d5b7a4e-9c3f-4b8e-a1d2-3e4f5a6b7c8d";
    const ID: &str = "4b825dc642cb6eb9a060e54bf8d69288fbee4904a1b2c3d4e5f60718293a4b5c";
    const OUTER: &str = "1111111111111111111111111111111111111111111111111111111111111111";

    fn both(path: &str) -> ContainerRef {
        parse_cgroup_path(path)
    }

    fn want() -> ContainerRef {
        ContainerRef {
            pod_uid: Some(UID.into()),
            container_id: Some(ID.into()),
        }
    }

    #[test]
    fn cgroupfs_driver() {
        for qos in ["burstable/", "besteffort/", ""] {
            assert_eq!(
                both(&format!("/kubepods/{qos}pod{UID}/{ID}")),
                want(),
                "{qos}"
            );
        }
    }

    #[test]
    fn systemd_driver_each_runtime() {
        let u = UID.replace('-', "_");
        for scope in [
            format!("cri-containerd-{ID}.scope"),
            format!("crio-{ID}.scope"),
            format!("docker-{ID}.scope"),
        ] {
            let path = format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/{scope}"
            );
            assert_eq!(both(&path), want(), "{path}");
        }
        // Guaranteed pods sit directly under kubepods.slice.
        let path = format!("/kubepods.slice/kubepods-pod{u}.slice/cri-containerd-{ID}.scope");
        assert_eq!(both(&path), want());
    }

    #[test]
    fn nested_clusters_take_the_inner_level() {
        // kind: the node is itself a Docker container.
        let path = format!("/docker/{OUTER}/kubepods/besteffort/pod{UID}/{ID}");
        assert_eq!(both(&path), want());
        let u = UID.replace('-', "_");
        let path = format!(
            "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/\
             kubelet-kubepods-besteffort-pod{u}.slice/cri-containerd-{ID}.scope"
        );
        assert_eq!(both(&path), want());
        // The pod's sandbox-less cgroup (no container yet): the outer ID must not stick.
        let path = format!("/docker/{OUTER}/kubepods/pod{UID}");
        assert_eq!(
            both(&path),
            ContainerRef {
                pod_uid: Some(UID.into()),
                container_id: None
            }
        );
    }

    #[test]
    fn plain_containers_have_no_pod() {
        for path in [
            format!("/docker/{ID}"),
            format!("/system.slice/docker-{ID}.scope"),
            format!("/machine.slice/libpod-{ID}.scope"),
        ] {
            assert_eq!(
                both(&path),
                ContainerRef {
                    pod_uid: None,
                    container_id: Some(ID.into())
                },
                "{path}"
            );
        }
    }

    #[test]
    fn host_processes_have_neither() {
        for path in [
            "/",
            "/user.slice/user-0.slice/session-3.scope",
            "/system.slice/sshd.service",
            "/podman.slice",
            "/kubepods.slice",
            "/kubepods/burstable",
            "/system.slice/pod-not-a-uid.slice",
            "/mypod12345678-1234-1234-1234-123456789abc",
        ] {
            assert!(both(path).is_empty(), "{path}: {:?}", both(path));
        }
    }

    #[test]
    fn systemd_units_name_services() {
        assert_eq!(systemd_unit("/system.slice/nginx.service"), Some("nginx"));
        assert_eq!(
            systemd_unit("/user.slice/user-0.slice/user@0.service/app.slice/foo.service"),
            Some("foo")
        );
        assert_eq!(
            systemd_unit("/system.slice/getty.slice/getty@tty1.service"),
            Some("getty@tty1")
        );
        assert_eq!(
            systemd_unit("/user.slice/user-0.slice/session-3.scope"),
            None
        );
        assert_eq!(systemd_unit("/"), None);
        assert_eq!(systemd_unit("/kubepods/burstable/pod1/abc"), None);
    }

    #[test]
    fn the_path_that_names_a_pod_wins() {
        let pod = format!("/kubepods/burstable/pod{UID}/{ID}");
        // A process in a cgroup namespace sees `/`; its sample's ID names the pod.
        assert_eq!(best_path(Some(&pod), Some("/")), Some(pod.as_str()));
        // Hybrid host, kubelet writing v1 only: the v2 path is the runtime's service.
        assert_eq!(
            best_path(Some("/system.slice/containerd.service"), Some(&pod)),
            Some(pod.as_str())
        );
        // The process exited before /proc was read.
        assert_eq!(best_path(Some(&pod), None), Some(pod.as_str()));
        assert_eq!(
            best_path(Some("/"), Some("/system.slice/sshd.service")),
            Some("/system.slice/sshd.service")
        );
        assert_eq!(
            best_path(Some("/system.slice/a.service"), Some("/")),
            Some("/system.slice/a.service")
        );
        assert_eq!(best_path(None, None), None);
    }

    #[test]
    fn finds_the_cgroup2_mount() {
        let hybrid = "\
25 30 0:23 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:25 / /sys/fs/cgroup/cpu rw,nosuid shared:11 - cgroup cgroup rw,cpu
";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        // A container's view of its own subtree is not the host tree.
        let ns = "1 0 0:24 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(ns), None);
        // The agent's pod: its own subtree at /sys/fs/cgroup, the host's tree (a hostPath
        // volume) seen from its cgroup namespace as `/../../..`.
        let pod = "\
1 0 0:24 / /sys/fs/cgroup ro - cgroup2 cgroup2 rw
2 0 0:24 /../../.. /host/sys/fs/cgroup ro - cgroup2 cgroup2 rw
";
        assert_eq!(
            cgroup2_mount(pod),
            Some(PathBuf::from("/host/sys/fs/cgroup"))
        );
    }

    /// Walks a directory tree standing in for the cgroup tree (inodes of plain directories).
    #[test]
    fn maps_ids_to_paths_by_walking_the_tree() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let leaf = dir.path().join("kubepods/burstable/podx");
        std::fs::create_dir_all(&leaf).unwrap();
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        let mut paths = CgroupPaths::at(Some(dir.path().to_owned()));
        assert_eq!(
            paths.path(ino(&leaf)).as_deref(),
            Some("/kubepods/burstable/podx")
        );
        assert_eq!(paths.path(ino(dir.path())).as_deref(), Some("/"));
        assert_eq!(paths.len(), 4);
        // A new cgroup is found by the next walk (once the minimum gap has passed).
        let new = dir.path().join("kubepods/besteffort");
        std::fs::create_dir(&new).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let found = loop {
            if let Some(p) = paths.path(ino(&new)) {
                break p;
            }
            assert!(Instant::now() < deadline, "new cgroup never found");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(&*found, "/kubepods/besteffort");
        assert_eq!(paths.path(0), None);
    }
}
