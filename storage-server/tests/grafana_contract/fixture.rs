//! One real Kiln server for all contract tests, started once on its own runtime thread: agent-like
//! profiles at known times, and (with the SDK venv) a real `pyroscope-io` + `pyroscope-otel` span
//! upload.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kiln_proto::pprof::Profile;
use kiln_storage_server::query::time::now_nanos;

pub use crate::support::NS;
use crate::support::{agent_profile, push_http, spawn_server};
pub const CPU: &str = "process_cpu:cpu:nanoseconds:cpu:nanoseconds";
pub const SAMPLES: &str = "process_cpu:samples:count:cpu:nanoseconds";
/// The span program's service name.
pub const SPAN_APP: &str = "kiln-contract-spans";
/// Each span's busy time in the span program.
const SPAN_SECONDS: &str = "1.5";
const PROGRAM_TIMEOUT: Duration = Duration::from_secs(60);

/// An agent-like profile: `cpu` ns in `main;work;leaf_<tag>`, a tenth in `main;helper`.
pub struct Pushed {
    pub service: &'static str,
    pub pid: &'static str,
    pub tag: &'static str,
    pub cpu: i64,
    /// Seconds after [`Fixture::base_ns`].
    pub at: i64,
}

/// What the agent-like part of the store holds.
pub const PUSHED: [Pushed; 5] = [
    Pushed {
        service: "checkout",
        pid: "1",
        tag: "a",
        cpu: 100_000_000,
        at: 1,
    },
    Pushed {
        service: "checkout",
        pid: "1",
        tag: "a",
        cpu: 50_000_000,
        at: 15,
    },
    Pushed {
        service: "checkout",
        pid: "2",
        tag: "a",
        cpu: 7_000_000_000,
        at: 31,
    },
    Pushed {
        service: "checkout",
        pid: "2",
        tag: "a",
        cpu: 30_000_000,
        at: 47,
    },
    Pushed {
        service: "db",
        pid: "3",
        tag: "b",
        cpu: 200_000_000,
        at: 62,
    },
];

/// The cpu total of `PUSHED` entries matching `f` (leaf plus helper).
pub fn pushed_total(f: impl Fn(&Pushed) -> bool) -> i64 {
    PUSHED
        .iter()
        .filter(|p| f(p))
        .map(|p| p.cpu + p.cpu / 10)
        .sum()
}

/// The span program's two spans.
#[derive(Clone, Debug)]
pub struct Spans {
    pub alpha: String,
    pub beta: String,
}

pub struct Fixture {
    pub url: String,
    /// Minute-aligned, ten minutes ago: the agent-like profiles lie just after it.
    pub base_ns: i64,
    /// `None` when the SDK venv is missing (and not required).
    pub spans: Option<Spans>,
}

impl Fixture {
    /// The query range of every test, in ms: from before the agent profiles to after now.
    pub fn range_ms(&self) -> (i64, i64) {
        (
            self.base_ns / 1_000_000 - 60_000,
            now_nanos() / 1_000_000 + 60_000,
        )
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn sdk_python() -> Result<PathBuf, String> {
    let python = repo_root().join("target/sdk-venvs/py1/bin/python");
    if !python.exists() {
        return Err(format!(
            "{} is missing (run scripts/sdk-setup.sh)",
            python.display()
        ));
    }
    let ok = Command::new(&python)
        .args(["-c", "import pyroscope.otel, opentelemetry.sdk.trace"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        return Err(
            "pyroscope-otel is not installed in target/sdk-venvs/py1 (run scripts/sdk-setup.sh)"
                .into(),
        );
    }
    Ok(python)
}

/// The shared server, started on first use.
pub fn get() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    // Started on a thread of its own: the tests call this from inside their runtimes.
    FIXTURE.get_or_init(|| std::thread::spawn(start).join().unwrap())
}

/// An agent-like profile as [`PUSHED`] describes it: one sample per 10 ms of cpu.
fn profile(tag: &str, cpu: i64, time_nanos: i64) -> Profile {
    agent_profile(tag, cpu, [cpu / 10_000_000, cpu / 100_000_000], time_nanos)
}

fn start() -> Fixture {
    let url = spawn_server().url;
    let base_ns = (now_nanos() / NS - 600) / 60 * 60 * NS;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(push_agent_profiles(&url, base_ns));
    let spans = match sdk_python() {
        Ok(python) => Some(run_span_program(&python, &url)),
        Err(why) => {
            if std::env::var("KILN_REQUIRE_SDKS").is_ok_and(|v| v == "1") {
                panic!("KILN_REQUIRE_SDKS=1 but the span SDK cannot run: {why}");
            }
            eprintln!("span profile checks skipped: {why}");
            None
        }
    };
    Fixture {
        url,
        base_ns,
        spans,
    }
}

async fn push_agent_profiles(url: &str, base_ns: i64) {
    for p in &PUSHED {
        let comm = if p.service == "db" {
            "postgres"
        } else {
            "checkout"
        };
        let mut labels = vec![
            ("__name__", "process_cpu"),
            ("service_name", p.service),
            ("pid", p.pid),
            ("comm", comm),
        ];
        if p.service == "checkout" {
            // An OpenTelemetry-style name that is not a Prometheus label name.
            labels.push(("k8s.namespace.name", "shop"));
        }
        push_http(url, &labels, &profile(p.tag, p.cpu, base_ns + p.at * NS)).await;
    }
}

/// Runs tests/sdk/python/spans.py against the server; returns the span IDs it printed. The SDK
/// flushes its last profile on shutdown, before the program exits: once it has exited, the spans
/// are stored (the push is acknowledged after the WAL write).
fn run_span_program(python: &Path, url: &str) -> Spans {
    let script = repo_root().join("tests/sdk/python/spans.py");
    let mut child = Command::new(python)
        .arg(&script)
        .args([url, SPAN_APP, SPAN_SECONDS])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", python.display()));
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > PROGRAM_TIMEOUT {
            let _ = child.kill();
            panic!("spans.py still running after {PROGRAM_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "spans.py failed ({}):\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let id = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("span {name} ")))
            .unwrap_or_else(|| panic!("no span {name} in:\n{stdout}"))
            .trim()
            .to_owned()
    };
    eprintln!("spans.py ran in {:?}", started.elapsed());
    Spans {
        alpha: id("alpha"),
        beta: id("beta"),
    }
}
