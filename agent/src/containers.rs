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
}
