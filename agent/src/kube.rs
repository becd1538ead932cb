//! Pod, namespace and container names for the processes of this node, from the Kubernetes API.
//!
//! The cgroup path gives a process's pod UID and container ID ([`crate::containers`]); the names
//! people select by live in the API server. The agent lists the pods of its own node
//! (`fieldSelector=spec.nodeName=<node>`, `resourceVersion=0` so the API server answers from its
//! cache rather than etcd) every [`KubeConfig::refresh`], and early when a process shows up in a
//! pod it does not know yet (a new pod), at most once per [`MIN_REFRESH_GAP`]. One list of one
//! node's pods is small (≤ 110 pods by default), so no watch is needed.
//!
//! In a pod the agent finds the API server the standard way (`KUBERNETES_SERVICE_HOST`/`_PORT`,
//! the service account's token and CA under `/var/run/secrets/kubernetes.io/serviceaccount`);
//! `--kube-api-url` points it elsewhere (and lets tests serve the list over plain HTTP).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::Notify;

use crate::containers::ContainerRef;

/// Where the in-cluster service account's files are.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Early refreshes (for unknown pods) are at least this far apart.
pub const MIN_REFRESH_GAP: Duration = Duration::from_secs(5);
/// The largest pod list accepted.
const MAX_LIST_BYTES: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KubeError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid CA certificate {path}: {source}")]
    Ca {
        path: PathBuf,
        source: reqwest::Error,
    },
    #[error("cannot build the Kubernetes API client: {0}")]
    Client(reqwest::Error),
    #[error("listing pods from {url}: {source}")]
    Request { url: String, source: reqwest::Error },
    #[error("listing pods from {url}: HTTP {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("listing pods from {url}: response larger than {MAX_LIST_BYTES} bytes")]
    TooLarge { url: String },
    #[error("listing pods from {url}: not a PodList: {source}")]
    Decode {
        url: String,
        source: serde_json::Error,
    },
}

/// How to reach the API server.
#[derive(Clone, Debug)]
pub struct KubeConfig {
    /// `https://host:port` (no trailing slash).
    pub api_url: String,
    /// Bearer token file (re-read on every list: projected tokens rotate).
    pub token_file: Option<PathBuf>,
    /// PEM CA bundle for the API server's certificate.
    pub ca_file: Option<PathBuf>,
    pub node_name: String,
    pub refresh: Duration,
}

impl KubeConfig {
    /// The in-cluster configuration, when the agent runs in a pod (`KUBERNETES_SERVICE_HOST` set).
    pub fn in_cluster(node_name: &str, refresh: Duration) -> Option<KubeConfig> {
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
            refresh,
        })
    }
}

/// Names of one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNames {
    pub namespace: String,
    pub pod: String,
}

/// What the index knows about a process's container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodLabels {
    pub namespace: String,
    pub pod: String,
    /// The container's name in its pod, when its ID is listed.
    pub container: Option<String>,
}

#[derive(Default)]
struct Index {
    pods: HashMap<String, Arc<PodNames>>,
    /// Container ID → (pod UID, container name).
    containers: HashMap<String, (String, String)>,
}

/// The node's pods by UID and container ID; cheap to clone and share.
#[derive(Clone, Default)]
pub struct PodIndex {
    index: Arc<RwLock<Index>>,
    /// Woken when a lookup missed a pod UID (a pod newer than the last list).
    missed: Arc<Notify>,
}

impl PodIndex {
    /// The pod of a process, by its cgroup's pod UID (or, failing that, its container ID).
    /// A miss on a pod UID asks for an early refresh.
    pub fn lookup(&self, c: &ContainerRef) -> Option<PodLabels> {
        if c.is_empty() {
            return None;
        }
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        let by_container = c
            .container_id
            .as_ref()
            .and_then(|id| index.containers.get(id));
        let uid = c
            .pod_uid
            .as_deref()
            .or(by_container.map(|(uid, _)| uid.as_str()));
        let Some(pod) = uid.and_then(|u| index.pods.get(u)) else {
            if c.pod_uid.is_some() {
                self.missed.notify_one();
            }
            return None;
        };
        Some(PodLabels {
            namespace: pod.namespace.clone(),
            pod: pod.pod.clone(),
            container: by_container.map(|(_, name)| name.clone()),
        })
    }

    /// Replaces the index with a freshly listed pod list.
    pub fn replace(&self, list: PodList) {
        let mut next = Index::default();
        for item in list.items {
            let m = item.metadata;
            next.pods.insert(
                m.uid.clone(),
                Arc::new(PodNames {
                    namespace: m.namespace,
                    pod: m.name,
                }),
            );
            let statuses = item.status.container_statuses.into_iter().chain(
                item.status
                    .init_container_statuses
                    .into_iter()
                    .chain(item.status.ephemeral_container_statuses),
            );
            for s in statuses {
                // `containerd://<id>`, `cri-o://<id>`, `docker://<id>`.
                let Some(id) = s.container_id.rsplit_once("://").map(|(_, id)| id) else {
                    continue;
                };
                next.containers
                    .insert(id.to_ascii_lowercase(), (m.uid.clone(), s.name));
            }
        }
        *self.index.write().unwrap_or_else(|p| p.into_inner()) = next;
    }

    pub fn pods(&self) -> usize {
        self.index
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .pods
            .len()
    }
}

/// The parts of a `v1.PodList` the agent reads.
#[derive(Debug, Default, Deserialize)]
pub struct PodList {
    #[serde(default)]
    pub items: Vec<Pod>,
}

#[derive(Debug, Deserialize)]
pub struct Pod {
    pub metadata: PodMeta,
    #[serde(default)]
    pub status: PodStatus,
}

#[derive(Debug, Deserialize)]
pub struct PodMeta {
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    pub uid: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(default)]
    pub container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    pub init_container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    pub ephemeral_container_statuses: Vec<ContainerStatus>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    pub name: String,
    /// Empty until the container has started.
    #[serde(default, rename = "containerID")]
    pub container_id: String,
}

/// Lists the node's pods once.
pub async fn list_pods(
    client: &reqwest::Client,
    config: &KubeConfig,
) -> Result<PodList, KubeError> {
    let url = format!("{}/api/v1/pods", config.api_url.trim_end_matches('/'));
    let mut req = client.get(&url).query(&[
        (
            "fieldSelector",
            format!("spec.nodeName={}", config.node_name),
        ),
        ("resourceVersion", "0".to_owned()),
    ]);
    if let Some(path) = &config.token_file {
        let token = std::fs::read_to_string(path).map_err(|source| KubeError::Read {
            path: path.clone(),
            source,
        })?;
        req = req.bearer_auth(token.trim());
    }
    let mut resp = req.send().await.map_err(|source| KubeError::Request {
        url: url.clone(),
        source,
    })?;
    let status = resp.status();
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|source| KubeError::Request {
        url: url.clone(),
        source,
    })? {
        if body.len() + chunk.len() > MAX_LIST_BYTES {
            return Err(KubeError::TooLarge { url });
        }
        body.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
        return Err(KubeError::Status {
            url,
            status: status.as_u16(),
            body: text,
        });
    }
    serde_json::from_slice(&body).map_err(|source| KubeError::Decode { url, source })
}

/// The client for the API server: its CA (when configured) is trusted.
pub fn client(config: &KubeConfig) -> Result<reqwest::Client, KubeError> {
    let mut b = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(10));
    if let Some(path) = &config.ca_file {
        let pem = std::fs::read(path).map_err(|source| KubeError::Read {
            path: path.clone(),
            source,
        })?;
        let ca = reqwest::Certificate::from_pem(&pem).map_err(|source| KubeError::Ca {
            path: path.clone(),
            source,
        })?;
        b = b.add_root_certificate(ca);
    }
    b.build().map_err(KubeError::Client)
}

/// Keeps `index` up to date until `stop` resolves: lists every `config.refresh`, and early (at
/// most every [`MIN_REFRESH_GAP`]) after a lookup missed a pod. Failures are logged (the first and
/// then every tenth) and retried at the next tick; the last good list stays in use.
pub async fn refresh_loop(
    config: KubeConfig,
    index: PodIndex,
    metrics: crate::metrics::AgentMetrics,
    stop: impl std::future::Future<Output = ()>,
) {
    let client = match client(&config) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "pod, namespace and container labels are off");
            return;
        }
    };
    tokio::pin!(stop);
    let mut failures = 0u64;
    let mut last = Instant::now() - MIN_REFRESH_GAP;
    loop {
        let since = last.elapsed();
        if since < MIN_REFRESH_GAP {
            tokio::select! {
                _ = tokio::time::sleep(MIN_REFRESH_GAP - since) => {}
                _ = &mut stop => return,
            }
        }
        last = Instant::now();
        match list_pods(&client, &config).await {
            Ok(list) => {
                if failures > 0 {
                    tracing::info!(after_failures = failures, "listing pods works again");
                }
                failures = 0;
                let n = list.items.len();
                index.replace(list);
                metrics.kube_pods.set(i64::try_from(n).unwrap_or(i64::MAX));
                tracing::debug!(pods = n, node = %config.node_name, "pods listed");
            }
            Err(e) => {
                metrics.kube_list_failures.inc();
                if failures.is_multiple_of(10) {
                    tracing::warn!(error = %e, failures, "cannot list this node's pods: pod labels stay as last listed");
                }
                failures += 1;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(config.refresh) => {}
            _ = index.missed.notified() => {}
            _ = &mut stop => return,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const UID: &str = "0d5b7a4e-9c3f-4b8e-a1d2-3e4f5a6b7c8d";
    const ID: &str = "4b825dc642cb6eb9a060e54bf8d69288fbee4904a1b2c3d4e5f60718293a4b5c";

    /// A trimmed real `kubectl get pods -o json` item (containerd runtime).
    fn list_json() -> String {
        format!(
            r#"{{"kind":"PodList","apiVersion":"v1","metadata":{{"resourceVersion":"123"}},"items":[
            {{"metadata":{{"name":"checkout-7d4b9c","namespace":"shop","uid":"{UID}",
               "labels":{{"app":"checkout"}}}},
              "spec":{{"nodeName":"node-1","containers":[{{"name":"app"}},{{"name":"envoy"}}]}},
              "status":{{"phase":"Running",
                "initContainerStatuses":[{{"name":"init","containerID":"containerd://{}"}}],
                "containerStatuses":[
                  {{"name":"app","containerID":"containerd://{ID}","ready":true}},
                  {{"name":"envoy","ready":false}}]}}}},
            {{"metadata":{{"name":"pending","namespace":"shop","uid":"11111111-2222-3333-4444-555555555555"}},
              "status":{{"phase":"Pending"}}}}]}}"#,
            "a".repeat(64)
        )
    }

    fn index() -> PodIndex {
        let idx = PodIndex::default();
        idx.replace(serde_json::from_str(&list_json()).unwrap());
        idx
    }

    #[test]
    fn names_a_container_by_pod_uid_and_id() {
        let idx = index();
        assert_eq!(idx.pods(), 2);
        let got = idx
            .lookup(&ContainerRef {
                pod_uid: Some(UID.into()),
                container_id: Some(ID.into()),
            })
            .unwrap();
        assert_eq!(
            got,
            PodLabels {
                namespace: "shop".into(),
                pod: "checkout-7d4b9c".into(),
                container: Some("app".into())
            }
        );
        // Init containers too; a container ID alone (no pod segment in the path) finds its pod.
        let init = idx
            .lookup(&ContainerRef {
                pod_uid: None,
                container_id: Some("a".repeat(64)),
            })
            .unwrap();
        assert_eq!(init.container.as_deref(), Some("init"));
        assert_eq!(init.pod, "checkout-7d4b9c");
    }

    #[test]
    fn unknown_container_keeps_the_pod() {
        let got = index()
            .lookup(&ContainerRef {
                pod_uid: Some(UID.into()),
                container_id: Some("b".repeat(64)),
            })
            .unwrap();
        assert_eq!(got.pod, "checkout-7d4b9c");
        assert_eq!(got.container, None);
    }

    #[tokio::test]
    async fn a_miss_on_a_pod_asks_for_a_refresh() {
        let idx = index();
        let other = ContainerRef {
            pod_uid: Some("99999999-2222-3333-4444-555555555555".into()),
            container_id: None,
        };
        assert_eq!(idx.lookup(&other), None);
        // The miss left a permit: this resolves at once.
        tokio::time::timeout(Duration::from_secs(1), idx.missed.notified())
            .await
            .unwrap();
        // A host process (no pod, no container) is not a miss.
        assert_eq!(idx.lookup(&ContainerRef::default()), None);
    }

    #[test]
    fn a_list_replaces_the_previous_one() {
        let idx = index();
        idx.replace(PodList::default());
        assert_eq!(idx.pods(), 0);
        assert_eq!(
            idx.lookup(&ContainerRef {
                pod_uid: Some(UID.into()),
                container_id: None
            }),
            None
        );
    }

    /// Against a stand-in API server (no Kubernetes can run here): the request the agent makes
    /// (path, field selector, bearer token) and the errors it reports.
    #[tokio::test]
    async fn lists_this_nodes_pods_with_the_token() {
        use axum::extract::Query;
        use axum::http::HeaderMap;
        use axum::routing::get;

        let body = list_json();
        let app = axum::Router::new().route(
            "/api/v1/pods",
            get(
                move |q: Query<HashMap<String, String>>, h: HeaderMap| async move {
                    let auth = h
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    if auth != "Bearer s3cret" {
                        return (
                            axum::http::StatusCode::UNAUTHORIZED,
                            "Unauthorized".to_owned(),
                        );
                    }
                    assert_eq!(q.0["fieldSelector"], "spec.nodeName=node-1");
                    assert_eq!(q.0["resourceVersion"], "0");
                    (axum::http::StatusCode::OK, body.clone())
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret\n").unwrap();
        let mut config = KubeConfig {
            api_url: format!("http://{addr}"),
            token_file: Some(token.clone()),
            ca_file: None,
            node_name: "node-1".into(),
            refresh: Duration::from_secs(30),
        };
        let c = client(&config).unwrap();
        let list = list_pods(&c, &config).await.unwrap();
        assert_eq!(list.items.len(), 2);

        std::fs::write(&token, "wrong").unwrap();
        let err = list_pods(&c, &config).await.unwrap_err().to_string();
        assert!(
            err.contains("HTTP 401") && err.contains("Unauthorized"),
            "{err}"
        );
        config.token_file = Some(dir.path().join("missing"));
        let err = list_pods(&c, &config).await.unwrap_err().to_string();
        assert!(err.contains("missing"), "{err}");
    }
}
