//! A stand-in for the Kubernetes API server, for tests: no real API server can run on the test
//! machines, so this serves what one answers to the agent's requests (recorded shapes of a
//! `PodList`, watch events, `Status` errors, ReplicaSet and Job objects) over plain HTTP/1.1 on
//! 127.0.0.1, from std only (used by the agent's tests and the root end-to-end test alike).
//!
//! It is a mock: it implements just `GET /api/v1/pods` (list, and `watch=true` streaming
//! newline-delimited events from a resourceVersion) and `GET` of one ReplicaSet or Job. Tests
//! drive it: add, change and delete pods (each a new resourceVersion), close open watches
//! (a dropped connection), expire resourceVersions (the next watch gets a 410 `ERROR` event, as
//! from an API server whose watch cache moved on), deny with 403 (RBAC), or go dark (connections
//! closed without an answer, as during an API outage).

#![allow(dead_code)] // each test binary uses its own subset

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Most watch events kept; a watch from an older resourceVersion gets 410 Gone.
const MAX_EVENTS: usize = 4_096;

#[derive(Default)]
struct State {
    pods: BTreeMap<String, Value>,
    rv: u64,
    events: VecDeque<(u64, &'static str, Value)>,
    /// Every watch that starts answers 410 until the next list.
    expired: bool,
    /// 403 for pods (list and watch).
    forbid_pods: bool,
    /// 403 for ReplicaSet and Job gets.
    forbid_owners: bool,
    /// Connections are closed without an answer.
    dark: bool,
    /// Bumped to end every open watch.
    drop_generation: u64,
    replicasets: HashMap<(String, String), Value>,
    jobs: HashMap<(String, String), Value>,
    /// Requests served, by kind: "list", "watch", "replicaset", "job", "forbidden", "gone".
    counts: HashMap<&'static str, u64>,
    field_selectors: Vec<String>,
}

/// The stand-in server; stops accepting when dropped (open watches end with their timeout).
pub struct KubeStandIn {
    pub url: String,
    state: Arc<(Mutex<State>, Condvar)>,
}

impl KubeStandIn {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the stand-in API server");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let state: Arc<(Mutex<State>, Condvar)> = Arc::default();
        let s = Arc::clone(&state);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let s = Arc::clone(&s);
                std::thread::spawn(move || {
                    let _ = serve(conn, &s);
                });
            }
        });
        KubeStandIn { url, state }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn event(&self, kind: &'static str, mut pod: Value) {
        let mut s = self.lock();
        s.rv += 1;
        let rv = s.rv;
        pod["metadata"]["resourceVersion"] = json!(rv.to_string());
        let uid = pod["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if kind == "DELETED" {
            s.pods.remove(&uid);
        } else {
            s.pods.insert(uid, pod.clone());
        }
        s.events.push_back((rv, kind, pod));
        if s.events.len() > MAX_EVENTS {
            s.events.pop_front();
        }
        drop(s);
        self.state.1.notify_all();
    }

    /// Adds a pod (`ADDED`), or changes it (`MODIFIED`) when its UID is known.
    pub fn apply_pod(&self, pod: Value) {
        let uid = pod["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let kind = if self.lock().pods.contains_key(&uid) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.event(kind, pod);
    }

    pub fn delete_pod(&self, uid: &str) {
        let pod = self.lock().pods.get(uid).cloned();
        if let Some(pod) = pod {
            self.event("DELETED", pod);
        }
    }

    /// Changes a pod while no watch sees it: the next watch must relist to learn it.
    pub fn apply_pod_silently(&self, mut pod: Value) {
        let mut s = self.lock();
        s.rv += 1;
        pod["metadata"]["resourceVersion"] = json!(s.rv.to_string());
        let uid = pod["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        s.pods.insert(uid, pod);
    }

    pub fn delete_pod_silently(&self, uid: &str) {
        let mut s = self.lock();
        s.rv += 1;
        s.pods.remove(uid);
    }

    /// Ends every open watch (the agent must resume from its last resourceVersion).
    pub fn drop_watches(&self) {
        self.lock().drop_generation += 1;
        self.state.1.notify_all();
    }

    /// Ends every open watch and makes the next ones answer 410 Gone until a list.
    pub fn expire(&self) {
        let mut s = self.lock();
        s.expired = true;
        s.drop_generation += 1;
        drop(s);
        self.state.1.notify_all();
    }

    pub fn forbid_pods(&self, on: bool) {
        let mut s = self.lock();
        s.forbid_pods = on;
        s.drop_generation += 1;
        drop(s);
        self.state.1.notify_all();
    }

    pub fn forbid_owners(&self, on: bool) {
        self.lock().forbid_owners = on;
    }

    /// An outage: open watches end, new connections are closed unanswered.
    pub fn go_dark(&self, on: bool) {
        let mut s = self.lock();
        s.dark = on;
        s.drop_generation += 1;
        drop(s);
        self.state.1.notify_all();
    }

    /// A ReplicaSet (apps/v1), owned by a Deployment when `deployment` is given.
    pub fn add_replicaset(&self, ns: &str, name: &str, deployment: Option<&str>) {
        let owners = deployment
            .map(|d| json!([{"apiVersion":"apps/v1","kind":"Deployment","name":d,"uid":"d-uid","controller":true}]))
            .unwrap_or(json!([]));
        self.lock().replicasets.insert(
            (ns.into(), name.into()),
            json!({"apiVersion":"apps/v1","kind":"ReplicaSet","metadata":{"name":name,"namespace":ns,"uid":"rs-uid","ownerReferences":owners}}),
        );
    }

    /// A Job (batch/v1), owned by a CronJob when `cronjob` is given.
    pub fn add_job(&self, ns: &str, name: &str, cronjob: Option<&str>) {
        let owners = cronjob
            .map(|c| json!([{"apiVersion":"batch/v1","kind":"CronJob","name":c,"uid":"cj-uid","controller":true}]))
            .unwrap_or(json!([]));
        self.lock().jobs.insert(
            (ns.into(), name.into()),
            json!({"apiVersion":"batch/v1","kind":"Job","metadata":{"name":name,"namespace":ns,"uid":"job-uid","ownerReferences":owners}}),
        );
    }

    /// Requests served of one kind (see `State::counts`).
    pub fn count(&self, kind: &str) -> u64 {
        self.lock().counts.get(kind).copied().unwrap_or(0)
    }

    pub fn field_selectors(&self) -> Vec<String> {
        self.lock().field_selectors.clone()
    }
}

/// A pod object as the API server sends it (trimmed): `owner` is the controller (kind, name),
/// `containers` (name, containerd ID) appear as started containers. Set annotations on the
/// result (`pod["metadata"]["annotations"]`).
pub fn pod(
    ns: &str,
    name: &str,
    uid: &str,
    node: &str,
    owner: Option<(&str, &str)>,
    containers: &[(&str, &str)],
    labels: Value,
) -> Value {
    let owners = owner
        .map(|(k, n)| json!([{"apiVersion":"apps/v1","kind":k,"name":n,"uid":"o-uid","controller":true,"blockOwnerDeletion":true}]))
        .unwrap_or(json!([]));
    let statuses: Vec<Value> = containers
        .iter()
        .map(|(n, id)| json!({"name":n,"containerID":format!("containerd://{id}"),"ready":true,"restartCount":0,"image":"busybox","imageID":"","started":true}))
        .collect();
    let specs: Vec<Value> = containers
        .iter()
        .map(|(n, _)| json!({"name":n,"image":"busybox"}))
        .collect();
    json!({
        "apiVersion":"v1","kind":"Pod",
        "metadata":{"name":name,"namespace":ns,"uid":uid,"labels":labels,"annotations":{},
            "ownerReferences":owners,"creationTimestamp":"2026-12-03T07:00:00Z"},
        "spec":{"nodeName":node,"containers":specs},
        "status":{"phase":"Running","containerStatuses":statuses}
    })
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
        "message":message,"reason":reason,"code":code})
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn respond(conn: &mut TcpStream, code: u16, body: &Value) -> std::io::Result<()> {
    let body = body.to_string();
    write!(
        conn,
        "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn serve(mut conn: TcpStream, state: &Arc<(Mutex<State>, Condvar)>) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
    }
    let lock = || state.0.lock().unwrap_or_else(|p| p.into_inner());
    if lock().dark {
        return Ok(()); // dropped unanswered
    }
    let target = line.split_whitespace().nth(1).unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let q: HashMap<String, String> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), percent_decode(v)))
        .collect();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        ["api", "v1", "pods"] => {
            let mut s = lock();
            if let Some(f) = q.get("fieldSelector") {
                s.field_selectors.push(f.clone());
            }
            if s.forbid_pods {
                *s.counts.entry("forbidden").or_default() += 1;
                drop(s);
                return respond(
                    &mut conn,
                    403,
                    &status(
                        403,
                        "Forbidden",
                        "pods is forbidden: User \"system:serviceaccount:kiln:kiln-agent\" cannot list resource \"pods\" in API group \"\" at the cluster scope",
                    ),
                );
            }
            if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
                *s.counts.entry("watch").or_default() += 1;
                drop(s);
                return watch(conn, state, &q);
            }
            *s.counts.entry("list").or_default() += 1;
            s.expired = false;
            let items: Vec<Value> = s.pods.values().cloned().collect();
            let list = json!({"kind":"PodList","apiVersion":"v1",
                "metadata":{"resourceVersion":s.rv.to_string()},"items":items});
            drop(s);
            respond(&mut conn, 200, &list)
        }
        ["apis", "apps", "v1", "namespaces", ns, "replicasets", name]
        | ["apis", "batch", "v1", "namespaces", ns, "jobs", name] => {
            let is_rs = parts[1] == "apps";
            let mut s = lock();
            *s.counts
                .entry(if is_rs { "replicaset" } else { "job" })
                .or_default() += 1;
            if s.forbid_owners {
                let what = if is_rs { "replicasets" } else { "jobs" };
                drop(s);
                return respond(
                    &mut conn,
                    403,
                    &status(403, "Forbidden", &format!("{what} is forbidden")),
                );
            }
            let map = if is_rs { &s.replicasets } else { &s.jobs };
            let found = map.get(&((*ns).to_owned(), (*name).to_owned())).cloned();
            drop(s);
            match found {
                Some(obj) => respond(&mut conn, 200, &obj),
                None => respond(&mut conn, 404, &status(404, "NotFound", "not found")),
            }
        }
        _ => respond(&mut conn, 404, &status(404, "NotFound", "no such path")),
    }
}

/// A watch from `resourceVersion`: past events after it, then new ones as they come, until the
/// timeout, a drop, or (410) an expired or compacted version.
fn watch(
    mut conn: TcpStream,
    state: &Arc<(Mutex<State>, Condvar)>,
    q: &HashMap<String, String>,
) -> std::io::Result<()> {
    let from: u64 = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout = Duration::from_secs(
        q.get("timeoutSeconds")
            .and_then(|v| v.parse().ok())
            .unwrap_or(290u64)
            .min(290),
    );
    // Close-delimited body: the stream ends when the connection does, as a chunked one would.
    write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
    )?;
    conn.flush()?;
    let mut s = state.0.lock().unwrap_or_else(|p| p.into_inner());
    let oldest = s.events.front().map_or(s.rv + 1, |(rv, _, _)| *rv);
    if s.expired || from + 1 < oldest {
        *s.counts.entry("gone").or_default() += 1;
        drop(s);
        let e = json!({"type":"ERROR","object":status(410,"Expired",&format!("too old resource version: {from}"))});
        return writeln!(conn, "{e}");
    }
    let generation = s.drop_generation;
    let end = Instant::now() + timeout;
    let mut sent = from;
    loop {
        // A dropped connection delivers nothing more.
        if s.drop_generation != generation || s.dark || s.forbid_pods {
            return Ok(());
        }
        let new: Vec<(u64, &'static str, Value)> = s
            .events
            .iter()
            .filter(|(rv, _, _)| *rv > sent)
            .cloned()
            .collect();
        if !new.is_empty() {
            drop(s);
            for (rv, kind, obj) in new {
                writeln!(conn, "{}", json!({"type":kind,"object":obj}))?;
                sent = rv;
            }
            conn.flush()?;
            s = state.0.lock().unwrap_or_else(|p| p.into_inner());
            continue;
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        s = state
            .1
            .wait_timeout(s, left.min(Duration::from_millis(500)))
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}
