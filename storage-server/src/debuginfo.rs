//! Debuginfo: who may put which ELF file where, and [`DebugInfo`], which owns the stores, their
//! quotas and retention, and the symbolizer over them.
//!
//! Trust boundary: uploads come from any client, so they never change what *another* tenant sees.
//! Each tenant has its own store (`debuginfo/tenants/<tenant>/`, the default tenant's when
//! multi-tenancy is off); a shared store (`debuginfo/shared/`) is written only by the debuginfod
//! fetcher and by uploads carrying the privileged `--debuginfo-shared-token`. A tenant's profiles
//! are symbolized from its own files first, then the shared ones ([`Opened::files`]).
//!
//! Bounds: every file is verified and size-limited while it streams in (see
//! [`kiln_symbolizer::DebugInfoStore`]); each store is held to a byte and a file quota; files no
//! stored profile referenced within the retention age are deleted, and all debuginfo counts toward
//! `--retention-bytes` (it may use at most half of it, least recently referenced files going first).
//!
//! - [`http`]: the `GET`/`PUT /debuginfo/v1/{build_id}` endpoints.
//! - [`early`]: an upload's build ID checked while its body streams in.
//! - [`referenced`]: which build IDs ingested profiles reference (the "last referenced" time).

pub mod early;
pub mod http;
pub mod referenced;

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak, mpsc};
use std::time::{Duration, SystemTime};

use kiln_symbolizer::{BuildId, DebugInfoStore, FileKind, Files, Stored, StoredFile, Symbolizer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::config::ServerConfig;
use crate::debuginfod::Fetcher;
use crate::metrics::{OutcomeLabels, ReasonLabels};
use crate::tenant::{DEFAULT_TENANT, Tenant};

pub use http::{get_debuginfo, put_debuginfo};

/// How often the background pass recounts usage and applies retention to debuginfo. Walking every
/// store's directories is cheap but not free, and debuginfo ages in days, not seconds.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(300);

/// Tenants given a label of their own on the usage gauges; the rest share [`OTHER_TENANTS`], so
/// a client inventing tenant IDs cannot grow `/metrics` without bound.
const MAX_TENANT_SERIES: usize = 50;
/// The usage gauges' label for tenants beyond [`MAX_TENANT_SERIES`] (a space: no tenant ID has one).
const OTHER_TENANTS: &str = "other tenants";
/// The usage gauges' label for the shared store (empty: no tenant ID is).
const SHARED_LABEL: &str = "";

/// Whose store a file lives in.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Owner {
    /// Filled by debuginfod and by privileged uploads; every tenant reads it.
    Shared,
    /// One tenant's uploads; only that tenant reads them.
    Tenant(Tenant),
}

impl Owner {
    /// The store's directory under the debuginfo root. Tenant IDs are validated to letters,
    /// digits and `!-_.*'()`, never `.` or `..` (see [`Tenant::parse`]): a safe path component.
    fn dir(&self, root: &Path) -> PathBuf {
        match self {
            Owner::Shared => root.join("shared"),
            Owner::Tenant(t) => root.join("tenants").join(t.as_str()),
        }
    }

    fn metric_label(&self) -> &str {
        match self {
            Owner::Shared => SHARED_LABEL,
            Owner::Tenant(t) => t.as_str(),
        }
    }
}

/// Limits on what one store holds.
#[derive(Clone, Copy, Debug)]
pub struct Quotas {
    /// Largest decompressed file.
    pub file_bytes: u64,
    /// Most bytes per store (tenant or shared).
    pub store_bytes: u64,
    /// Most files per store.
    pub store_files: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub files: u64,
}

/// One store (a tenant's or the shared one) and what it holds.
pub struct Space {
    pub owner: Owner,
    pub store: Arc<DebugInfoStore>,
    /// Counted on first use; held while inserting or deleting, so that quota checks and the
    /// changes they allow are one step (uploads to one store are serialized).
    usage: Mutex<Option<Usage>>,
}

impl Space {
    fn usage(&self) -> MutexGuard<'_, Option<Usage>> {
        self.usage.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn count(&self) -> Usage {
        let files = self.store.files();
        Usage {
            bytes: files.iter().map(|f| f.bytes).sum(),
            files: files.len() as u64,
        }
    }
}

/// The opened stores and the symbolizer over them.
pub struct Opened {
    root: PathBuf,
    pub shared: Arc<Space>,
    tenants: Mutex<HashMap<Tenant, Arc<Space>>>,
    pub symbolizer: Symbolizer,
}

impl Opened {
    /// The store of `owner`. With `create` false, `None` for a tenant that never stored anything
    /// (a read must not create directories).
    pub fn space(
        &self,
        owner: &Owner,
        create: bool,
    ) -> Result<Option<Arc<Space>>, kiln_symbolizer::Error> {
        let tenant = match owner {
            Owner::Shared => return Ok(Some(self.shared.clone())),
            Owner::Tenant(t) => t,
        };
        if let Some(s) = lock(&self.tenants).get(tenant) {
            return Ok(Some(s.clone()));
        }
        let dir = owner.dir(&self.root);
        if !create && !dir.is_dir() {
            return Ok(None);
        }
        let space = Arc::new(Space {
            owner: owner.clone(),
            store: Arc::new(DebugInfoStore::open(dir)?),
            usage: Mutex::new(None),
        });
        Ok(Some(
            lock(&self.tenants)
                .entry(tenant.clone())
                .or_insert(space)
                .clone(),
        ))
    }

    /// The files `tenant`'s profiles are symbolized from for `id`: its own executable and debug
    /// file where it uploaded them, else the shared store's.
    pub fn files(&self, tenant: &Tenant, id: &BuildId) -> Option<Files> {
        let own = self
            .space(&Owner::Tenant(tenant.clone()), false)
            .ok()
            .flatten();
        let find = |kind: FileKind| {
            let in_store = |s: &DebugInfoStore| match kind {
                FileKind::Executable => s.path(id),
                FileKind::Debuginfo => s.debug_path(id),
            };
            own.as_ref()
                .and_then(|s| in_store(&s.store))
                .or_else(|| in_store(&self.shared.store))
        };
        Some(Files {
            exe: find(FileKind::Executable)?,
            debug: find(FileKind::Debuginfo),
        })
    }

    /// Size of `kind` of `id` as `tenant` sees it (its own, else shared), and whose it is.
    pub fn size(&self, tenant: &Tenant, id: &BuildId, kind: FileKind) -> Option<(u64, Owner)> {
        let owner = Owner::Tenant(tenant.clone());
        let size = |s: &DebugInfoStore| match kind {
            FileKind::Executable => s.size(id),
            FileKind::Debuginfo => s.debug_size(id),
        };
        if let Some(space) = self.space(&owner, false).ok().flatten()
            && let Some(n) = size(&space.store)
        {
            return Some((n, owner));
        }
        size(&self.shared.store).map(|n| (n, Owner::Shared))
    }

    /// Every store on disk: the shared one and each tenant's.
    fn spaces(&self) -> Vec<Arc<Space>> {
        let mut out = vec![self.shared.clone()];
        let Ok(entries) = std::fs::read_dir(self.root.join("tenants")) else {
            return out;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(tenant) = name.to_str().and_then(|n| Tenant::parse(n).ok()) else {
                continue;
            };
            match self.space(&Owner::Tenant(tenant), false) {
                Ok(Some(s)) => out.push(s),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cannot open a tenant's debuginfo store"),
            }
        }
        out
    }
}

/// Why an insert was refused.
#[derive(Debug, thiserror::Error)]
pub enum InsertError {
    #[error(transparent)]
    Store(#[from] kiln_symbolizer::Error),
    #[error(
        "debuginfo quota exhausted: this store holds {files} files, the most allowed \
         (--debuginfo-tenant-max-files)"
    )]
    Files { files: u64 },
    #[error(
        "debuginfo quota exhausted: this store holds {used} bytes of at most {limit} \
         (--debuginfo-tenant-max-bytes), and the file does not fit"
    )]
    Bytes { used: u64, limit: u64 },
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    /// The tenant; empty for the shared store, `other tenants` past the first 50 tenants.
    pub tenant: String,
}

/// The debuginfo metrics (`kiln_server_debuginfo_*`, `kiln_server_debuginfod_*`).
#[derive(Default)]
pub struct DebugInfoMetrics {
    /// Uploads and fetches stored, by outcome: `stored`, `replaced`, `unchanged`.
    pub uploads: Family<OutcomeLabels, Counter>,
    /// Uploads refused, by reason (see [`http`]).
    pub refused: Family<ReasonLabels, Counter>,
    pub bytes: Family<TenantLabels, Gauge>,
    pub files: Family<TenantLabels, Gauge>,
    /// Files deleted by retention, by reason: `age`, `size`.
    pub expired: Family<ReasonLabels, Counter>,
    /// Tenants with a usage series of their own.
    labelled: Mutex<std::collections::HashSet<String>>,
}

impl DebugInfoMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "debuginfo_uploads",
            "Debuginfo files stored (uploads and debuginfod fetches), by outcome",
            self.uploads.clone(),
        );
        registry.register(
            "debuginfo_uploads_refused",
            "Debuginfo uploads refused, by reason",
            self.refused.clone(),
        );
        registry.register(
            "debuginfo_bytes",
            "Debuginfo bytes stored per tenant (tenant=\"\" is the shared store)",
            self.bytes.clone(),
        );
        registry.register(
            "debuginfo_files",
            "Debuginfo files stored per tenant (tenant=\"\" is the shared store)",
            self.files.clone(),
        );
        registry.register(
            "debuginfo_expired",
            "Debuginfo files deleted by retention, by reason (age, size)",
            self.expired.clone(),
        );
    }

    pub fn refused(&self, reason: &str) {
        self.refused
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    fn usage_changed(&self, owner: &Owner, bytes: i64, files: i64) {
        let name = owner.metric_label();
        let tenant = {
            let mut labelled = lock(&self.labelled);
            let own = *owner == Owner::Shared
                || labelled.contains(name)
                || labelled.len() < MAX_TENANT_SERIES;
            if own {
                labelled.insert(name.to_owned());
                name.to_owned()
            } else {
                OTHER_TENANTS.to_owned()
            }
        };
        let labels = TenantLabels { tenant };
        self.bytes.get_or_create(&labels).inc_by(bytes);
        self.files.get_or_create(&labels).inc_by(files);
    }
}

/// The debuginfo stores and symbolizer, opened on first use, and their background work.
///
/// Opening lazily (and only ever from blocking threads) keeps the rest of the server working when
/// the debuginfo directory is unusable: ingest and queries of already-symbolized profiles need
/// neither.
pub struct DebugInfo {
    root: PathBuf,
    cache_entries: usize,
    pub quotas: Quotas,
    retention_age: Option<Duration>,
    retention_bytes: u64,
    opened: Mutex<Option<Arc<Opened>>>,
    /// Locations resolved at query time, by outcome (`symbolized` or a reason); registered in
    /// the server's metrics as `kiln_server_symbolization_frames_total`.
    pub frame_outcomes: Family<ReasonLabels, Counter>,
    pub metrics: DebugInfoMetrics,
    /// Fetches what was never uploaded from `--debuginfod-urls`, in the background.
    pub debuginfod: Option<Fetcher>,
    /// Bytes in every store, shared with the profile store's size retention.
    total_bytes: Arc<AtomicU64>,
    /// Build IDs referenced by ingested profiles, to be marked as used.
    pub references: referenced::Tracker,
    /// Dropped with `self`: stops the maintenance thread.
    stop: Mutex<Option<mpsc::Sender<()>>>,
}

impl DebugInfo {
    pub fn new(config: &ServerConfig) -> DebugInfo {
        let limits = &config.limits;
        DebugInfo {
            root: config.debuginfo_dir(),
            cache_entries: config.symbolizer_cache_entries,
            quotas: Quotas {
                file_bytes: limits.debuginfo_max_bytes,
                store_bytes: limits.debuginfo_tenant_max_bytes,
                store_files: limits.debuginfo_tenant_max_files,
            },
            retention_age: config.store.retention_age(),
            retention_bytes: config.store.retention_bytes,
            opened: Mutex::new(None),
            frame_outcomes: Family::default(),
            metrics: DebugInfoMetrics::default(),
            debuginfod: Fetcher::new(
                config.debuginfod_urls.clone(),
                Duration::from_secs(config.debuginfod_timeout_secs.max(1)),
                limits.debuginfo_max_bytes,
            ),
            total_bytes: Arc::new(AtomicU64::new(0)),
            references: referenced::Tracker::new(limits.max_decompressed_bytes),
            stop: Mutex::new(None),
        }
    }

    /// Registers every debuginfo metric in `registry`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        self.metrics.register(registry);
        if let Some(d) = &self.debuginfod {
            d.register_metrics(registry);
        }
    }

    /// The counter of debuginfo bytes the profile store's size retention adds to its own.
    pub fn total_bytes(&self) -> Arc<AtomicU64> {
        self.total_bytes.clone()
    }

    /// Starts the background threads: maintenance (usage and retention), the debuginfod fetcher
    /// and the reference tracker. They hold only weak references and end when `self` is dropped.
    pub fn start(self: &Arc<Self>) {
        let (tx, rx) = mpsc::channel::<()>();
        *lock(&self.stop) = Some(tx);
        let weak = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("kiln-debuginfo".into())
            .spawn(move || maintenance_loop(weak, rx));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start debuginfo maintenance; retention will not run");
        }
        if let Some(d) = &self.debuginfod {
            d.start(Arc::downgrade(self));
        }
        self.references.start(Arc::downgrade(self));
    }

    /// Counts `n` locations resolved with `outcome` (`symbolized` or a [`Reason`] name).
    ///
    /// [`Reason`]: crate::query::symbolize::Reason
    pub fn count_frames(&self, outcome: &str, n: u64) {
        self.frame_outcomes
            .get_or_create(&ReasonLabels {
                reason: outcome.to_owned(),
            })
            .inc_by(n);
    }

    /// The opened stores and symbolizer. Blocking: call from `spawn_blocking`.
    pub fn get(&self) -> Result<Arc<Opened>, kiln_symbolizer::Error> {
        if let Some(o) = lock(&self.opened).as_ref() {
            return Ok(o.clone());
        }
        // Open outside the lock: two racing openers just build the same thing twice.
        migrate_legacy_layout(&self.root);
        let shared = Arc::new(DebugInfoStore::open(Owner::Shared.dir(&self.root))?);
        let symbolizer = Symbolizer::new(shared.clone(), self.cache_entries);
        let opened = Arc::new(Opened {
            root: self.root.clone(),
            shared: Arc::new(Space {
                owner: Owner::Shared,
                store: shared,
                usage: Mutex::new(None),
            }),
            tenants: Mutex::new(HashMap::new()),
            symbolizer,
        });
        Ok(lock(&self.opened).get_or_insert(opened).clone())
    }

    /// Stores `kind` of `id` read from `reader` (decompressed bytes) in `owner`'s store, within
    /// the per-file limit and the store's quotas. Blocking.
    pub fn insert(
        &self,
        owner: &Owner,
        kind: FileKind,
        id: &BuildId,
        reader: &mut dyn Read,
    ) -> Result<Stored, InsertError> {
        let opened = self.get()?;
        let space = opened
            .space(owner, true)?
            .ok_or_else(|| kiln_symbolizer::Error::Missing(id.to_string()))?;
        let mut guard = space.usage();
        let usage = *guard.get_or_insert_with(|| self.counted(&space));
        let path = space.store.path_of(id, kind);
        let old = std::fs::metadata(&path).ok().map(|m| m.len());
        if old.is_none() && usage.files >= self.quotas.store_files {
            return Err(InsertError::Files { files: usage.files });
        }
        let room = self
            .quotas
            .store_bytes
            .saturating_sub(usage.bytes)
            .saturating_add(old.unwrap_or(0));
        let quota_bound = room < self.quotas.file_bytes;
        let limit = room.min(self.quotas.file_bytes);
        let quota_err = || InsertError::Bytes {
            used: usage.bytes,
            limit: self.quotas.store_bytes,
        };
        if limit == 0 {
            return Err(quota_err());
        }
        let stored = match kind {
            FileKind::Executable => space.store.insert_from_reader(id, reader, limit),
            FileKind::Debuginfo => space.store.insert_debug_from_reader(id, reader, limit),
        };
        let stored = match stored {
            Err(kiln_symbolizer::Error::TooLarge { .. }) if quota_bound => return Err(quota_err()),
            other => other?,
        };
        let (bytes, files) = match stored {
            Stored::New { bytes } => (bytes as i64, 1),
            Stored::Replaced { bytes, old_bytes } => (bytes as i64 - old_bytes as i64, 0),
            Stored::Unchanged { .. } => (0, 0),
        };
        let usage = guard.get_or_insert_with(Usage::default);
        usage.bytes = usage.bytes.saturating_add_signed(bytes);
        usage.files += files as u64;
        drop(guard);
        self.account(owner, bytes, files);
        let outcome = match stored {
            Stored::New { .. } => "stored",
            Stored::Replaced { .. } => "replaced",
            Stored::Unchanged { .. } => "unchanged",
        };
        self.metrics
            .uploads
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
        if !matches!(stored, Stored::Unchanged { .. }) {
            opened.symbolizer.invalidate_files(id, &[path]);
        }
        Ok(stored)
    }

    /// Counts `space` from disk and reports it to the gauges and the total.
    fn counted(&self, space: &Space) -> Usage {
        let usage = space.count();
        self.account(&space.owner, usage.bytes as i64, usage.files as i64);
        usage
    }

    fn account(&self, owner: &Owner, bytes: i64, files: i64) {
        self.metrics.usage_changed(owner, bytes, files);
        if bytes >= 0 {
            self.total_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        } else {
            // Never below zero, even if a recount raced with an insert.
            let _ = self
                .total_bytes
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                    Some(t.saturating_sub(bytes.unsigned_abs()))
                });
        }
    }

    /// Marks `id` as referenced now by a profile of `tenant`: its files in the tenant's store and
    /// the shared one count as used for retention. When neither holds a usable file, asks
    /// debuginfod (in the background). Blocking.
    pub fn referenced(&self, tenant: &Tenant, id: &BuildId, now: SystemTime) {
        let Ok(opened) = self.get() else { return };
        if let Ok(Some(space)) = opened.space(&Owner::Tenant(tenant.clone()), false) {
            space.store.touch(id, now);
        }
        opened.shared.store.touch(id, now);
        if let Some(d) = &self.debuginfod
            && needs_fetch(opened.files(tenant, id).as_ref())
        {
            d.request(id);
        }
    }

    /// One maintenance pass as of `now`: recounts every store, deletes files not referenced
    /// within the retention age, then the least recently referenced while debuginfo takes more
    /// than half of `--retention-bytes`. Blocking.
    pub fn maintain(&self, now: SystemTime) -> Result<(), kiln_symbolizer::Error> {
        let opened = self.get()?;
        let spaces = opened.spaces();
        let mut all: Vec<(Arc<Space>, StoredFile)> = Vec::new();
        let mut doomed: Vec<(Arc<Space>, StoredFile, &'static str)> = Vec::new();
        let cutoff = self.retention_age.and_then(|age| now.checked_sub(age));
        let mut total = 0u64;
        for space in &spaces {
            // Recount from what is on disk, correcting any drift (files removed by hand); under
            // the lock, so that no insert lands between the listing and the new count.
            let mut guard = space.usage();
            let files = space.store.files();
            let usage = Usage {
                bytes: files.iter().map(|f| f.bytes).sum(),
                files: files.len() as u64,
            };
            {
                let before = guard.unwrap_or_default();
                *guard = Some(usage);
                self.account(
                    &space.owner,
                    usage.bytes as i64 - before.bytes as i64,
                    usage.files as i64 - before.files as i64,
                );
            }
            drop(guard);
            for f in files {
                if cutoff.is_some_and(|c| f.modified < c) {
                    doomed.push((space.clone(), f, "age"));
                } else {
                    total += f.bytes;
                    all.push((space.clone(), f));
                }
            }
        }
        let cap = self.retention_bytes / 2;
        if self.retention_bytes > 0 && total > cap {
            all.sort_by_key(|(_, f)| f.modified);
            for (space, f) in all {
                if total <= cap {
                    break;
                }
                total -= f.bytes;
                doomed.push((space, f, "size"));
            }
        }
        for (space, f, why) in doomed {
            let mut guard = space.usage();
            if let Err(e) = space.store.remove(&f) {
                tracing::warn!(path = %f.path.display(), error = %e, "cannot delete expired debuginfo");
                continue;
            }
            tracing::info!(
                build_id = %f.id, path = %f.path.display(), bytes = f.bytes, reason = why,
                "retention: deleting debuginfo"
            );
            if let Some(u) = guard.as_mut() {
                u.bytes = u.bytes.saturating_sub(f.bytes);
                u.files = u.files.saturating_sub(1);
            }
            drop(guard);
            self.account(&space.owner, -(f.bytes as i64), -1);
            self.metrics
                .expired
                .get_or_create(&ReasonLabels {
                    reason: why.to_owned(),
                })
                .inc();
            opened
                .symbolizer
                .invalidate_files(&f.id, std::slice::from_ref(&f.path));
        }
        Ok(())
    }
}

/// Whether debuginfod should be asked for a build ID whose usable files are `files`: none stored,
/// or an executable without symbols and no debug file.
pub fn needs_fetch(files: Option<&Files>) -> bool {
    match files {
        None => true,
        Some(f) => f.debug.is_none() && !kiln_symbolizer::has_symbols(&f.exe),
    }
}

fn maintenance_loop(weak: Weak<DebugInfo>, stop: mpsc::Receiver<()>) {
    loop {
        {
            let Some(debuginfo) = weak.upgrade() else {
                return;
            };
            if let Err(e) = debuginfo.maintain(SystemTime::now()) {
                tracing::warn!(error = %e, "debuginfo maintenance failed; will retry");
            }
        }
        match stop.recv_timeout(MAINTENANCE_INTERVAL) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
    }
}

/// Before tenants, every file lived in `debuginfo/<fan>/`: those were uploaded without a tenant
/// (the agent's way), so they move to the default tenant's store.
fn migrate_legacy_layout(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let dest_root = Owner::Tenant(Tenant::default()).dir(root);
    for e in entries.flatten() {
        let name = e.file_name();
        let is_fan = name.len() == 2
            && name
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_hexdigit()));
        if !is_fan || !e.path().is_dir() {
            continue;
        }
        let dest = dest_root.join(&name);
        let moved = std::fs::create_dir_all(&dest_root).and_then(|()| {
            if dest.exists() {
                // Both exist (an interrupted migration): move file by file, keeping the newer.
                for f in std::fs::read_dir(e.path())?.flatten() {
                    std::fs::rename(f.path(), dest.join(f.file_name()))?;
                }
                std::fs::remove_dir(e.path())
            } else {
                std::fs::rename(e.path(), &dest)
            }
        });
        match moved {
            Ok(()) => tracing::info!(
                from = %e.path().display(), to = %dest.display(),
                "moved debuginfo of the old global store to the default tenant ({DEFAULT_TENANT})"
            ),
            Err(err) => tracing::warn!(
                from = %e.path().display(), error = %err,
                "cannot move old debuginfo to the default tenant's store"
            ),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_gauges_have_bounded_labels() {
        let m = DebugInfoMetrics::default();
        for i in 0..(MAX_TENANT_SERIES + 20) {
            let t = Owner::Tenant(Tenant::parse(&format!("t{i}")).unwrap());
            m.usage_changed(&t, 10, 1);
        }
        m.usage_changed(&Owner::Shared, 5, 1);
        let mut registry = Registry::default();
        m.register(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        let series = out
            .lines()
            .filter(|l| l.starts_with("debuginfo_bytes{"))
            .count();
        // The first 50 tenants, one for the rest, and the shared store.
        assert_eq!(series, MAX_TENANT_SERIES + 2, "{out}");
        assert!(
            out.contains(&format!(
                "debuginfo_bytes{{tenant=\"{OTHER_TENANTS}\"}} 200"
            )),
            "{out}"
        );
        assert!(out.contains("debuginfo_bytes{tenant=\"\"} 5"), "{out}");
    }

    #[test]
    fn legacy_files_move_to_the_default_tenant() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("ab")).unwrap();
        std::fs::write(dir.path().join("ab/cdef.elf"), b"x").unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        migrate_legacy_layout(dir.path());
        assert!(dir.path().join("tenants/anonymous/ab/cdef.elf").is_file());
        assert!(!dir.path().join("ab").exists());
        assert!(
            dir.path().join("tmp").exists(),
            "only fan-out directories move"
        );
    }
}
