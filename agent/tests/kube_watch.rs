//! The agent's watch of its node's pods against a stand-in API server (a mock: no Kubernetes API
//! server can run on the test machines; see support/kube_standin.rs): the first list, events,
//! dropped watches, 410 Gone, RBAC 403, an outage, 1,000 pods churning, and owner chains.

#[path = "support/kube_standin.rs"]
mod kube_standin;

use std::time::{Duration, Instant};

use kiln_agent::containers::ContainerRef;
use kiln_agent::kube::{Backoff, KubeConfig, PodIndex, PodMatch, watch_pods};
use kiln_agent::metrics::AgentMetrics;
use kube_standin::{KubeStandIn, pod};
use serde_json::json;

const NODE: &str = "node-1";

fn uid(i: u32) -> String {
    format!("{i:08x}-0000-4000-8000-000000000000")
}

fn cid(i: u32) -> String {
    format!("{i:064x}")
}

/// Starts the agent's watch against `api`; stops it when the returned guard drops.
struct Watch {
    index: PodIndex,
    metrics: AgentMetrics,
    _stop: tokio::sync::oneshot::Sender<()>,
}

fn start(api: &KubeStandIn, pod_labels: &[&str]) -> Watch {
    let index = PodIndex::default();
    let metrics = AgentMetrics::unregistered();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let config = KubeConfig {
        api_url: api.url.clone(),
        token_file: None,
        ca_file: None,
        node_name: NODE.into(),
        pod_labels: pod_labels.iter().map(|s| s.to_string()).collect(),
        backoff: Backoff {
            min: Duration::from_millis(10),
            max: Duration::from_millis(200),
        },
    };
    tokio::spawn(watch_pods(config, index.clone(), metrics.clone(), async {
        let _ = rx.await;
    }));
    Watch {
        index,
        metrics,
        _stop: tx,
    }
}

/// Polls `cond` until it holds (yielding to the watch task), failing after 20 s.
async fn wait(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn by_uid(w: &Watch, i: u32) -> Option<PodMatch> {
    w.index.lookup(&ContainerRef {
        pod_uid: Some(uid(i)),
        container_id: Some(cid(i)),
    })
}

fn simple(i: u32) -> serde_json::Value {
    pod(
        "shop",
        &format!("web-{i}"),
        &uid(i),
        NODE,
        Some(("StatefulSet", "web")),
        &[("app", &cid(i))],
        json!({"app":"web","team":"payments","other":"x"}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_then_follows_events_with_the_node_selector() {
    let api = KubeStandIn::start();
    api.apply_pod(simple(1));
    let w = start(&api, &["app", "team"]);
    wait("the first list", || by_uid(&w, 1).is_some()).await;
    let m = by_uid(&w, 1).unwrap();
    assert_eq!(m.pod.name, "web-1");
    assert_eq!(m.container.as_deref(), Some("app"));
    assert_eq!(
        (m.pod.workload_kind.as_str(), m.pod.workload.as_str()),
        ("StatefulSet", "web")
    );
    assert_eq!(m.pod.service_name, "shop/web");
    // Only allow-listed labels are kept.
    assert_eq!(
        m.pod.labels,
        vec![
            ("app".into(), "web".into()),
            ("team".into(), "payments".into())
        ]
    );
    assert!(
        api.field_selectors()
            .iter()
            .all(|f| f == "spec.nodeName=node-1"),
        "{:?}",
        api.field_selectors()
    );
    // Events after the list: a new pod, a change, a deletion.
    api.apply_pod(simple(2));
    wait("an added pod", || by_uid(&w, 2).is_some()).await;
    let mut renamed = simple(2);
    renamed["metadata"]["annotations"] = json!({"pyroscope.io/service_name": "checkout-api"});
    api.apply_pod(renamed);
    wait("a modified pod", || {
        by_uid(&w, 2).is_some_and(|m| m.pod.service_name == "checkout-api")
    })
    .await;
    api.delete_pod(&uid(1));
    wait("a deleted pod", || by_uid(&w, 1).is_none()).await;
    assert_eq!(api.count("list"), 1, "events, not lists");
    assert_eq!(w.metrics.kube_pods.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_watches_resume_and_410_relists() {
    let api = KubeStandIn::start();
    api.apply_pod(simple(1));
    let w = start(&api, &[]);
    wait("the first list", || by_uid(&w, 1).is_some()).await;
    // A dropped connection: the watch resumes from the last resourceVersion, no relist.
    let watches = api.count("watch");
    api.drop_watches();
    wait("the watch resumed", || api.count("watch") > watches).await;
    api.apply_pod(simple(2));
    wait("an event after a drop", || by_uid(&w, 2).is_some()).await;
    assert_eq!(api.count("list"), 1, "a drop resumes, it does not relist");
    // 410 Gone: what changed unseen is learnt from a relist.
    api.expire();
    api.apply_pod_silently(simple(3));
    api.delete_pod_silently(&uid(1));
    wait("a relist after 410", || {
        by_uid(&w, 3).is_some() && by_uid(&w, 1).is_none()
    })
    .await;
    assert!(api.count("gone") >= 1);
    assert_eq!(api.count("list"), 2);
    assert!(w.metrics.kube_relists.get() >= 2);
    assert!(w.metrics.kube_api_error("gone").get() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_403_is_counted_and_the_agent_keeps_trying() {
    let api = KubeStandIn::start();
    api.apply_pod(simple(1));
    api.forbid_pods(true);
    let w = start(&api, &[]);
    wait("403s counted", || {
        w.metrics.kube_api_error("forbidden").get() >= 3
    })
    .await;
    assert_eq!(w.index.pods(), 0);
    // Fixing the ClusterRole is enough: no restart.
    api.forbid_pods(false);
    wait("pods after RBAC is fixed", || by_uid(&w, 1).is_some()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_keeps_the_last_good_state() {
    let api = KubeStandIn::start();
    api.apply_pod(simple(1));
    let w = start(&api, &[]);
    wait("the first list", || by_uid(&w, 1).is_some()).await;
    api.go_dark(true);
    wait("failures counted", || {
        w.metrics.kube_api_error("unreachable").get() + w.metrics.kube_api_error("other").get() >= 3
    })
    .await;
    assert!(
        by_uid(&w, 1).is_some(),
        "last good state kept during the outage"
    );
    // Back, with its watch cache moved on: a relist brings what changed meanwhile.
    api.expire();
    api.apply_pod_silently(simple(2));
    api.go_dark(false);
    wait("recovery", || by_uid(&w, 2).is_some()).await;
    assert!(by_uid(&w, 1).is_some());
}

/// 1,000 pods created and deleted (with a few live ones throughout): the index ends holding only
/// the live pods and their containers, however many came and went.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_churn_leaves_no_residue() {
    let api = KubeStandIn::start();
    for i in 0..5 {
        api.apply_pod(simple(i));
    }
    let w = start(&api, &["app"]);
    wait("the first list", || w.index.pods() == 5).await;
    for round in 0..10u32 {
        for i in 0..100 {
            api.apply_pod(simple(1_000 + round * 100 + i));
        }
        wait("a round of pods", || {
            by_uid(&w, 1_000 + round * 100 + 99).is_some()
        })
        .await;
        assert!(w.index.pods() <= 105);
        for i in 0..100 {
            api.delete_pod(&uid(1_000 + round * 100 + i));
        }
    }
    wait("all churned pods gone", || w.index.pods() == 5).await;
    assert_eq!(w.index.containers(), 5);
    assert_eq!(w.metrics.kube_pods.get(), 5);
    assert!(by_uid(&w, 1_500).is_none());
    assert_eq!(w.metrics.kube_pods_refused.get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_chains_name_the_workload() {
    let api = KubeStandIn::start();
    api.add_replicaset("shop", "checkout-7d4b9c", Some("checkout"));
    api.add_replicaset("shop", "orphan-rs", None);
    api.add_job("batch", "report-28391", Some("report"));
    api.add_job("batch", "once", None);
    let hash = |h: &str| json!({"pod-template-hash": h});
    // (pod, its controller, its labels, expected workload kind and name)
    type Case<'a> = (
        u32,
        Option<(&'a str, &'a str)>,
        serde_json::Value,
        &'a str,
        &'a str,
    );
    let cases: [Case; 8] = [
        (
            1,
            Some(("ReplicaSet", "checkout-7d4b9c")),
            hash("7d4b9c"),
            "Deployment",
            "checkout",
        ),
        (
            2,
            Some(("ReplicaSet", "checkout-7d4b9c")),
            hash("7d4b9c"),
            "Deployment",
            "checkout",
        ),
        (
            3,
            Some(("ReplicaSet", "orphan-rs")),
            json!({}),
            "ReplicaSet",
            "orphan-rs",
        ),
        (
            4,
            Some(("StatefulSet", "db")),
            json!({}),
            "StatefulSet",
            "db",
        ),
        (
            5,
            Some(("DaemonSet", "node-exporter")),
            json!({}),
            "DaemonSet",
            "node-exporter",
        ),
        (
            6,
            Some(("Job", "report-28391")),
            json!({}),
            "CronJob",
            "report",
        ),
        (7, Some(("Job", "once")), json!({}), "Job", "once"),
        (8, None, json!({}), "Pod", "bare-8"),
    ];
    for (i, owner, labels, _, _) in &cases {
        let ns = if *i >= 6 && *i <= 7 { "batch" } else { "shop" };
        let name = if owner.is_none() {
            format!("bare-{i}")
        } else {
            format!("p-{i}")
        };
        api.apply_pod(pod(ns, &name, &uid(*i), NODE, *owner, &[], labels.clone()));
    }
    let w = start(&api, &[]);
    wait("all pods", || w.index.pods() == cases.len()).await;
    for (i, _, _, kind, name) in &cases {
        let m = by_uid(&w, *i).unwrap();
        assert_eq!(
            (m.pod.workload_kind.as_str(), m.pod.workload.as_str()),
            (*kind, *name),
            "pod {i}"
        );
    }
    let ns_of = |i: u32| by_uid(&w, i).unwrap().pod.service_name.clone();
    assert_eq!(ns_of(1), "shop/checkout");
    assert_eq!(ns_of(6), "batch/report");
    // Two pods of one ReplicaSet: one get.
    assert_eq!(api.count("replicaset"), 2);
    assert_eq!(api.count("job"), 2);

    // Without RBAC for replicasets: the Deployment still comes from the pod-template-hash, the
    // failure is counted, the pod is labelled.
    api.forbid_owners(true);
    api.add_replicaset("shop", "api-5f6d7", Some("api"));
    api.apply_pod(pod(
        "shop",
        "api-5f6d7-x",
        &uid(9),
        NODE,
        Some(("ReplicaSet", "api-5f6d7")),
        &[],
        hash("5f6d7"),
    ));
    api.add_job("batch", "nightly-1", Some("nightly"));
    api.apply_pod(pod(
        "batch",
        "nightly-1-x",
        &uid(10),
        NODE,
        Some(("Job", "nightly-1")),
        &[],
        json!({}),
    ));
    wait("pods without owner access", || by_uid(&w, 10).is_some()).await;
    let m = by_uid(&w, 9).unwrap();
    assert_eq!(
        (m.pod.workload_kind.as_str(), m.pod.workload.as_str()),
        ("Deployment", "api")
    );
    let m = by_uid(&w, 10).unwrap();
    assert_eq!(
        (m.pod.workload_kind.as_str(), m.pod.workload.as_str()),
        ("Job", "nightly-1")
    );
    assert_eq!(w.metrics.kube_api_error("forbidden").get(), 2);
}
