//! Which workload a pod belongs to, from its controller owner reference and, for ReplicaSets and
//! Jobs, their own controller (one `get` of their metadata, cached):
//!
//! | pod's controller | workload_kind / workload |
//! |---|---|
//! | ReplicaSet owned by a Deployment | `Deployment` / the Deployment |
//! | ReplicaSet without owner | `ReplicaSet` / the ReplicaSet |
//! | Job owned by a CronJob | `CronJob` / the CronJob |
//! | Job without owner | `Job` / the Job |
//! | StatefulSet, DaemonSet, anything else | its kind / its name |
//! | none (bare pod) | `Pod` / the pod |
//!
//! When the `get` fails (RBAC 403, not found, API down), a ReplicaSet named
//! `<deployment>-<pod-template-hash>` still names its Deployment (the pod carries the hash label);
//! a Job stays a Job. Failures are cached for [`FAILURE_TTL`] so a missing permission does not turn
//! into one request per pod; successes until evicted (an owner reference does not change).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Api;

use super::ErrorReason;

/// Most (kind, namespace, name) → owner entries kept; beyond it the older half is dropped.
pub const MAX_OWNERS: usize = 4_096;
/// How long a failed owner lookup is remembered before it is tried again.
pub const FAILURE_TTL: Duration = Duration::from_secs(60);
/// Longest wait for one owner `get`.
const GET_TIMEOUT: Duration = Duration::from_secs(10);

/// A pod's workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub kind: String,
    pub name: String,
}

impl Workload {
    fn new(kind: &str, name: &str) -> Self {
        Workload {
            kind: kind.to_owned(),
            name: name.to_owned(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    kind: &'static str,
    namespace: String,
    name: String,
}

struct Cached {
    /// The controller of the object (`None`: it has none), or why it could not be read.
    owner: Result<Option<Workload>, ErrorReason>,
    at: Instant,
}

/// Resolves and caches owners.
pub struct Owners {
    client: kube::Client,
    cache: HashMap<Key, Cached>,
}

/// The controller among an object's owner references.
fn controller(refs: Option<&Vec<OwnerReference>>) -> Option<&OwnerReference> {
    refs?.iter().find(|r| r.controller == Some(true))
}

impl Owners {
    pub fn new(client: kube::Client) -> Self {
        Owners {
            client,
            cache: HashMap::new(),
        }
    }

    /// The workload of `pod`; API errors met on the way are passed to `on_error`.
    pub async fn workload(&mut self, pod: &Pod, on_error: impl FnMut(ErrorReason)) -> Workload {
        let meta = &pod.metadata;
        let namespace = meta.namespace.as_deref().unwrap_or_default();
        let pod_name = meta.name.as_deref().unwrap_or_default();
        let Some(owner) = controller(meta.owner_references.as_ref()) else {
            return Workload::new("Pod", pod_name);
        };
        let (parent_kind, fallback) = match owner.kind.as_str() {
            "ReplicaSet" => {
                // `<deployment>-<pod-template-hash>`: the Deployment's name without asking.
                let guess = meta
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("pod-template-hash"))
                    .and_then(|h| owner.name.strip_suffix(h.as_str())?.strip_suffix('-'))
                    .map_or_else(
                        || Workload::new("ReplicaSet", &owner.name),
                        |d| Workload::new("Deployment", d),
                    );
                ("ReplicaSet", guess)
            }
            "Job" => ("Job", Workload::new("Job", &owner.name)),
            kind => return Workload::new(kind, &owner.name),
        };
        match self
            .owner_of(parent_kind, namespace, &owner.name, on_error)
            .await
        {
            Ok(Some(w)) => w,
            Ok(None) => Workload::new(parent_kind, &owner.name),
            Err(_) => fallback,
        }
    }

    /// The controller of a ReplicaSet or Job, cached.
    async fn owner_of(
        &mut self,
        kind: &'static str,
        namespace: &str,
        name: &str,
        mut on_error: impl FnMut(ErrorReason),
    ) -> Result<Option<Workload>, ErrorReason> {
        let key = Key {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        if let Some(c) = self.cache.get(&key)
            && (c.owner.is_ok() || c.at.elapsed() < FAILURE_TTL)
        {
            return c.owner.clone();
        }
        let got = match kind {
            "ReplicaSet" => {
                let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), namespace);
                tokio::time::timeout(GET_TIMEOUT, api.get_metadata(name))
                    .await
                    .map(|r| r.map(|m| m.metadata.owner_references))
            }
            _ => {
                let api: Api<Job> = Api::namespaced(self.client.clone(), namespace);
                tokio::time::timeout(GET_TIMEOUT, api.get_metadata(name))
                    .await
                    .map(|r| r.map(|m| m.metadata.owner_references))
            }
        };
        let owner = match got {
            Ok(Ok(refs)) => Ok(controller(refs.as_ref()).map(|r| Workload::new(&r.kind, &r.name))),
            Ok(Err(e)) => {
                let reason = ErrorReason::of(&e);
                tracing::warn!(kind, namespace, name, error = %e, reason = reason.as_str(),
                    "cannot read a pod's owner (needs RBAC `get` on replicasets.apps and jobs.batch): workload label falls back");
                Err(reason)
            }
            Err(_) => {
                tracing::warn!(kind, namespace, name, "reading a pod's owner timed out");
                Err(ErrorReason::Unreachable)
            }
        };
        if let Err(r) = &owner {
            on_error(*r);
        }
        if self.cache.len() >= MAX_OWNERS {
            self.evict_older_half();
        }
        self.cache.insert(
            key,
            Cached {
                owner: owner.clone(),
                at: Instant::now(),
            },
        );
        owner
    }

    fn evict_older_half(&mut self) {
        let mut ages: Vec<Instant> = self.cache.values().map(|c| c.at).collect();
        ages.sort_unstable();
        if let Some(&cut) = ages.get(ages.len() / 2) {
            self.cache.retain(|_, c| c.at > cut);
        }
    }

    /// Entries cached (for the memory-bound tests).
    pub fn cached(&self) -> usize {
        self.cache.len()
    }
}
