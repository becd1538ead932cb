//! Pod, namespace, container and workload names for the processes of this node, from the
//! Kubernetes API.
//!
//! The cgroup path gives a process's pod UID and container ID ([`crate::containers`]); the names
//! people select by live in the API server. The agent watches the pods of its own node
//! (`fieldSelector=spec.nodeName=<node>`) with kube-rs's watcher, which lists first
//! (`resourceVersion=0`, served from the API server's cache), then watches from the list's
//! resourceVersion, resumes a dropped watch from the last version seen, and relists on 410 Gone.
//! This module adds what the watcher leaves to its user: a backoff between failed attempts, a
//! clear log line and a metric per failure (`kiln_agent_kube_api_errors{reason}`: a 403 says
//! which RBAC rule is missing), the last good state kept while the API is unreachable
//! ([`index::PodIndex`] swaps a relist in only when complete), and the owner resolution
//! ([`owners`]) that turns a pod into its workload.
//!
//! In a pod the agent finds the API server the standard way (`KUBERNETES_SERVICE_HOST`/`_PORT`,
//! the service account's token and CA under `/var/run/secrets/kubernetes.io/serviceaccount`);
//! `--kube-api URL` points it elsewhere (and lets tests serve a stand-in over plain HTTP). The
//! token file is re-read by the client as it rotates.

pub mod index;
pub mod owners;

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;

pub use index::{PodIndex, PodInfo, PodMatch};

/// Where the in-cluster service account's files are.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The pod annotation that overrides `service_name` (the one Grafana Alloy's Kubernetes
/// discovery reads, so pods annotated for Pyroscope keep their name).
pub const SERVICE_NAME_ANNOTATION: &str = "pyroscope.io/service_name";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KubeError {
    #[error("invalid Kubernetes API URL {url:?}: {source}")]
    Url {
        url: String,
        source: http::uri::InvalidUri,
    },
    #[error("cannot build the Kubernetes API client: {0}")]
    Client(kube::Error),
}

/// Why an API call failed, as counted in `kiln_agent_kube_api_errors{reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorReason {
    /// 403: the service account lacks an RBAC rule.
    Forbidden,
    /// 401: the token is wrong or expired.
    Unauthorized,
    /// 410: the watch's resourceVersion is too old; the watcher relists.
    Gone,
    NotFound,
    /// Connection refused, reset, timed out.
    Unreachable,
    Other,
}

impl ErrorReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorReason::Forbidden => "forbidden",
            ErrorReason::Unauthorized => "unauthorized",
            ErrorReason::Gone => "gone",
            ErrorReason::NotFound => "not_found",
            ErrorReason::Unreachable => "unreachable",
            ErrorReason::Other => "other",
        }
    }

    fn of_code(code: u16) -> Self {
        match code {
            401 => ErrorReason::Unauthorized,
            403 => ErrorReason::Forbidden,
            404 => ErrorReason::NotFound,
            410 => ErrorReason::Gone,
            _ => ErrorReason::Other,
        }
    }

    pub fn of(e: &kube::Error) -> Self {
        match e {
            kube::Error::Api(status) => Self::of_code(status.code),
            kube::Error::HyperError(_) | kube::Error::Service(_) => ErrorReason::Unreachable,
            _ => ErrorReason::Other,
        }
    }

    fn of_watch(e: &watcher::Error) -> Self {
        match e {
            watcher::Error::InitialListFailed(e)
            | watcher::Error::WatchStartFailed(e)
            | watcher::Error::WatchFailed(e) => Self::of(e),
            watcher::Error::WatchError(status) => Self::of_code(status.code),
            _ => ErrorReason::Other,
        }
    }
}

/// Waits between failed attempts: doubling from `min` to `max`, reset by any event.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            min: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

/// How to reach the API server and what to take from it.
#[derive(Clone, Debug)]
pub struct KubeConfig {
    /// `https://host:port` (no trailing slash).
    pub api_url: String,
    /// Bearer token file (re-read by the client: projected tokens rotate).
    pub token_file: Option<PathBuf>,
    /// PEM CA bundle for the API server's certificate.
    pub ca_file: Option<PathBuf>,
    pub node_name: String,
    /// Pod labels copied onto samples (`--pod-labels`).
    pub pod_labels: Vec<String>,
    pub backoff: Backoff,
}

impl KubeConfig {
    /// The in-cluster configuration, when the agent runs in a pod (`KUBERNETES_SERVICE_HOST` set).
    pub fn in_cluster(node_name: &str) -> Option<KubeConfig> {
        let host = std::env::var("KUBERNETES_SERVICE_HOST").ok()?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
        // IPv6 service addresses need brackets in a URL.
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        let dir = Path::new(SERVICE_ACCOUNT_DIR);
        Some(KubeConfig {
            api_url: format!("https://{host}:{port}"),
            token_file: Some(dir.join("token")),
            ca_file: Some(dir.join("ca.crt")),
            node_name: node_name.to_owned(),
            pod_labels: Vec::new(),
            backoff: Backoff::default(),
        })
    }

    /// The kube-rs client for this configuration.
    pub fn client(&self) -> Result<kube::Client, KubeError> {
        let uri: http::Uri = self.api_url.parse().map_err(|source| KubeError::Url {
            url: self.api_url.clone(),
            source,
        })?;
        let mut c = kube::Config::new(uri);
        c.auth_info.token_file = self
            .token_file
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned());
        c.root_cert_file = self.ca_file.clone();
        c.connect_timeout = Some(Duration::from_secs(10));
        kube::Client::try_from(c).map_err(KubeError::Client)
    }
}

/// The container ID of a status's `containerID` (`containerd://<id>`, `cri-o://<id>`,
/// `docker://<id>`), lowercase; `None` before the container started.
fn runtime_container_id(s: &str) -> Option<String> {
    let id = s.rsplit_once("://").map(|(_, id)| id)?;
    (!id.is_empty()).then(|| id.to_ascii_lowercase())
}

/// What the index keeps of a pod (the rest of the object is dropped at once).
pub fn pod_info(pod: &Pod, workload: owners::Workload, allowed_labels: &[String]) -> PodInfo {
    let meta = &pod.metadata;
    let namespace = meta.namespace.clone().unwrap_or_default();
    let service_name = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(SERVICE_NAME_ANNOTATION))
        .filter(|s| !s.trim().is_empty())
        .cloned()
        .unwrap_or_else(|| format!("{namespace}/{}", workload.name));
    let labels = meta
        .labels
        .as_ref()
        .map(|l| {
            allowed_labels
                .iter()
                .filter_map(|k| Some((k.clone(), l.get(k)?.clone())))
                .take(index::MAX_POD_LABELS)
                .collect()
        })
        .unwrap_or_default();
    let containers = pod
        .status
        .as_ref()
        .map(|s| {
            let all = s.container_statuses.iter().flatten();
            let init = s.init_container_statuses.iter().flatten();
            let eph = s.ephemeral_container_statuses.iter().flatten();
            all.chain(init)
                .chain(eph)
                .filter_map(|c| {
                    Some((
                        runtime_container_id(c.container_id.as_deref()?)?,
                        c.name.clone(),
                    ))
                })
                .take(index::MAX_CONTAINERS_PER_POD)
                .collect()
        })
        .unwrap_or_default();
    PodInfo {
        uid: meta.uid.clone().unwrap_or_default(),
        namespace,
        name: meta.name.clone().unwrap_or_default(),
        workload_kind: workload.kind,
        workload: workload.name,
        service_name,
        labels,
        containers,
    }
}

/// Keeps `index` in step with this node's pods until `stop` resolves (see the module docs).
pub async fn watch_pods(
    config: KubeConfig,
    index: PodIndex,
    metrics: crate::metrics::AgentMetrics,
    stop: impl std::future::Future<Output = ()>,
) {
    let client = match config.client() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "pod, namespace, container and workload labels are off");
            return;
        }
    };
    let pods: kube::Api<Pod> = kube::Api::all(client.clone());
    let wc = watcher::Config::default()
        .fields(&format!("spec.nodeName={}", config.node_name))
        .any_semantic();
    let mut events = std::pin::pin!(watcher(pods, wc));
    let mut owners = owners::Owners::new(client);
    let mut stop = std::pin::pin!(stop);
    let mut delay = config.backoff.min;
    let mut failures = 0u64;
    let mut refused_logged = false;
    let count = |reason: ErrorReason| {
        metrics.kube_api_error(reason.as_str()).inc();
    };
    loop {
        let event = tokio::select! {
            e = events.next() => e,
            () = &mut stop => return,
        };
        let Some(event) = event else { return };
        let event = match event {
            Ok(e) => {
                if failures > 0 {
                    tracing::info!(
                        after_failures = failures,
                        "watching this node's pods works again"
                    );
                }
                failures = 0;
                delay = config.backoff.min;
                e
            }
            Err(e) => {
                let reason = ErrorReason::of_watch(&e);
                count(reason);
                match reason {
                    // The watcher relists by itself; not worth more than a debug line.
                    ErrorReason::Gone => {
                        tracing::debug!(error = %e, "pod watch expired (410 Gone): relisting")
                    }
                    ErrorReason::Forbidden if failures.is_multiple_of(10) => tracing::error!(
                        error = %e, failures,
                        "not allowed to list/watch pods: the agent's service account needs RBAC `list` and `watch` on pods; pod labels stay as last known"
                    ),
                    _ if failures.is_multiple_of(10) => tracing::warn!(
                        error = %e, reason = reason.as_str(), failures,
                        "cannot watch this node's pods: pod labels stay as last known"
                    ),
                    _ => {}
                }
                failures += 1;
                if reason != ErrorReason::Gone {
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = &mut stop => return,
                    }
                    delay = (delay * 2).min(config.backoff.max);
                }
                continue;
            }
        };
        let accepted = match event {
            watcher::Event::Init => {
                metrics.kube_relists.inc();
                index.start_relist();
                true
            }
            watcher::Event::InitApply(pod) => {
                let w = owners.workload(&pod, count).await;
                index.relisted(pod_info(&pod, w, &config.pod_labels))
            }
            watcher::Event::InitDone => {
                index.finish_relist();
                tracing::debug!(pods = index.pods(), node = %config.node_name, "pods listed");
                true
            }
            watcher::Event::Apply(pod) => {
                let w = owners.workload(&pod, count).await;
                index.upsert(pod_info(&pod, w, &config.pod_labels))
            }
            watcher::Event::Delete(pod) => {
                if let Some(uid) = &pod.metadata.uid {
                    index.remove(uid);
                }
                true
            }
        };
        if !accepted {
            metrics.kube_pods_refused.inc();
            if !refused_logged {
                refused_logged = true;
                tracing::warn!(
                    limit = index::MAX_PODS,
                    "pod index full: further pods of this node get no pod labels"
                );
            }
        }
        metrics
            .kube_pods
            .set(i64::try_from(index.pods()).unwrap_or(i64::MAX));
    }
}
