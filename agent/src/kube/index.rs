//! The node's pods as the sampler needs them: by pod UID and by container ID, with the labels
//! every sample of theirs carries. Filled by the watch ([`super::watch_pods`]), read by the
//! aggregation thread for each process's first sample in a window.
//!
//! Memory is bounded: at most [`MAX_PODS`] pods (a node runs ≤ 110 by default, 250 at most in
//! practice), each with its allow-listed labels and at most [`MAX_CONTAINERS_PER_POD`] container
//! IDs; a deleted pod's entries go with it. A relist builds a fresh index beside the live one and
//! swaps it in when complete, so an API outage mid-relist leaves the last good state in use.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::containers::ContainerRef;

/// Most pods indexed; further pods are refused (and counted) until some are deleted.
pub const MAX_PODS: usize = 5_000;
/// Most container IDs kept per pod (init, app and ephemeral containers, restarts not included).
pub const MAX_CONTAINERS_PER_POD: usize = 64;
/// Most allow-listed labels kept per pod.
pub const MAX_POD_LABELS: usize = 16;

/// What the agent knows about one pod: everything its samples are labelled with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// `Deployment`, `StatefulSet`, `DaemonSet`, `Job`, `CronJob`, `ReplicaSet` (no Deployment
    /// above it), another controller's kind, or `Pod` for a bare pod.
    pub workload_kind: String,
    /// The workload's name (the pod's own for a bare pod).
    pub workload: String,
    /// `namespace/workload`, or the pod's service-name annotation.
    pub service_name: String,
    /// Allow-listed pod labels (`--pod-labels`), as (pod label key, value).
    pub labels: Vec<(String, String)>,
    /// (container ID without the runtime prefix, lowercase; container name).
    pub containers: Vec<(String, String)>,
}

/// A process's pod, and its container's name when its ID is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodMatch {
    pub pod: Arc<PodInfo>,
    pub container: Option<String>,
}

#[derive(Default)]
struct Index {
    pods: HashMap<String, Arc<PodInfo>>,
    /// Container ID → pod UID.
    containers: HashMap<String, String>,
}

impl Index {
    /// Inserts or replaces a pod; `false` when the index is full and the pod is new.
    fn upsert(&mut self, pod: PodInfo) -> bool {
        if !self.pods.contains_key(&pod.uid) && self.pods.len() >= MAX_PODS {
            return false;
        }
        self.remove(&pod.uid);
        for (id, _) in &pod.containers {
            self.containers.insert(id.clone(), pod.uid.clone());
        }
        self.pods.insert(pod.uid.clone(), Arc::new(pod));
        true
    }

    fn remove(&mut self, uid: &str) {
        if let Some(old) = self.pods.remove(uid) {
            for (id, _) in &old.containers {
                // A container ID belongs to one pod; only drop it if it still points here.
                if self.containers.get(id).is_some_and(|u| u == uid) {
                    self.containers.remove(id);
                }
            }
        }
    }
}

/// The node's pods; cheap to clone and share between the watch task and the aggregator.
#[derive(Clone, Default)]
pub struct PodIndex {
    live: Arc<RwLock<Index>>,
    /// The index a relist is building (swapped in by [`PodIndex::finish_relist`]).
    next: Arc<RwLock<Option<Index>>>,
}

impl PodIndex {
    /// The pod of a process, by its cgroup's pod UID, or failing that its container ID.
    pub fn lookup(&self, c: &ContainerRef) -> Option<PodMatch> {
        if c.is_empty() {
            return None;
        }
        let index = self.live.read().unwrap_or_else(|p| p.into_inner());
        let uid = c.pod_uid.as_deref().or_else(|| {
            index
                .containers
                .get(c.container_id.as_deref()?)
                .map(String::as_str)
        })?;
        let pod = index.pods.get(uid)?;
        let container = c.container_id.as_deref().and_then(|id| {
            pod.containers
                .iter()
                .find(|(cid, _)| cid == id)
                .map(|(_, name)| name.clone())
        });
        Some(PodMatch {
            pod: Arc::clone(pod),
            container,
        })
    }

    /// A pod was added or changed (watch event). `false` when refused because the index is full.
    pub fn upsert(&self, pod: PodInfo) -> bool {
        self.live
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .upsert(pod)
    }

    /// A pod was deleted.
    pub fn remove(&self, uid: &str) {
        self.live
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(uid);
    }

    /// A relist starts: pods from [`PodIndex::relisted`] go to a fresh index until
    /// [`PodIndex::finish_relist`]; lookups keep using the current one meanwhile.
    pub fn start_relist(&self) {
        *self.next.write().unwrap_or_else(|p| p.into_inner()) = Some(Index::default());
    }

    /// A pod of the relist in progress. `false` when refused because the index is full.
    pub fn relisted(&self, pod: PodInfo) -> bool {
        let mut next = self.next.write().unwrap_or_else(|p| p.into_inner());
        next.get_or_insert_with(Index::default).upsert(pod)
    }

    /// The relist is complete: its pods replace the previous ones (pods deleted while the watch
    /// was down disappear here).
    pub fn finish_relist(&self) {
        let next = self.next.write().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(next) = next {
            *self.live.write().unwrap_or_else(|p| p.into_inner()) = next;
        }
    }

    /// Pods indexed.
    pub fn pods(&self) -> usize {
        self.live
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .pods
            .len()
    }

    /// Container IDs indexed (for the memory-bound tests).
    pub fn containers(&self) -> usize {
        self.live
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .containers
            .len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const UID: &str = "0d5b7a4e-9c3f-4b8e-a1d2-3e4f5a6b7c8d";
    const ID: &str = "4b825dc642cb6eb9a060e54bf8d69288fbee4904a1b2c3d4e5f60718293a4b5c";

    fn pod(uid: &str, name: &str, containers: &[(&str, &str)]) -> PodInfo {
        PodInfo {
            uid: uid.into(),
            namespace: "shop".into(),
            name: name.into(),
            workload_kind: "Deployment".into(),
            workload: "checkout".into(),
            service_name: "shop/checkout".into(),
            labels: vec![],
            containers: containers
                .iter()
                .map(|(i, n)| (i.to_string(), n.to_string()))
                .collect(),
        }
    }

    fn by(uid: Option<&str>, id: Option<&str>) -> ContainerRef {
        ContainerRef {
            pod_uid: uid.map(Into::into),
            container_id: id.map(Into::into),
        }
    }

    #[test]
    fn finds_pods_by_uid_or_container_id() {
        let idx = PodIndex::default();
        let init = "a".repeat(64);
        idx.upsert(pod(UID, "checkout-1", &[(ID, "app"), (&init, "init")]));
        let m = idx.lookup(&by(Some(UID), Some(ID))).unwrap();
        assert_eq!(
            (m.pod.name.as_str(), m.container.as_deref()),
            ("checkout-1", Some("app"))
        );
        // A container ID alone (no pod segment in the path) finds its pod.
        let m = idx.lookup(&by(None, Some(&init))).unwrap();
        assert_eq!(m.container.as_deref(), Some("init"));
        // An unknown container of a known pod keeps the pod.
        let m = idx.lookup(&by(Some(UID), Some(&"b".repeat(64)))).unwrap();
        assert_eq!((m.pod.name.as_str(), m.container), ("checkout-1", None));
        assert_eq!(idx.lookup(&ContainerRef::default()), None);
    }

    #[test]
    fn deletes_take_the_containers_along() {
        let idx = PodIndex::default();
        idx.upsert(pod(UID, "p", &[(ID, "app")]));
        assert_eq!(idx.containers(), 1);
        idx.remove(UID);
        assert_eq!((idx.pods(), idx.containers()), (0, 0));
        assert_eq!(idx.lookup(&by(None, Some(ID))), None);
    }

    #[test]
    fn a_relist_replaces_only_when_done() {
        let idx = PodIndex::default();
        idx.upsert(pod(UID, "old", &[]));
        idx.start_relist();
        idx.relisted(pod("11111111-2222-3333-4444-555555555555", "new", &[]));
        // Until the relist completes, the last good state answers.
        assert!(idx.lookup(&by(Some(UID), None)).is_some());
        idx.finish_relist();
        assert!(idx.lookup(&by(Some(UID), None)).is_none());
        assert_eq!(idx.pods(), 1);
    }

    #[test]
    fn the_index_is_bounded() {
        let idx = PodIndex::default();
        for i in 0..MAX_PODS {
            assert!(idx.upsert(pod(
                &format!("{i:08x}-0000-0000-0000-000000000000"),
                "p",
                &[]
            )));
        }
        assert!(!idx.upsert(pod(UID, "one-too-many", &[])));
        // Updating a known pod still works when full.
        assert!(idx.upsert(pod("00000000-0000-0000-0000-000000000000", "renamed", &[])));
        assert_eq!(idx.pods(), MAX_PODS);
    }
}
