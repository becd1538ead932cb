//! The agent's one door to the memory of profiled processes (`/proc/PID/mem`).
//!
//! **Runtimes read a process's memory through [`ProcessMemory`], never by opening
//! `/proc/PID/mem` themselves** (Python code objects today; V8 and HotSpot metadata read after the
//! sample belong here too).
//!
//! Why a door: reading another process's memory faults its pages in on the reader's behalf. A page
//! of a file on a FUSE filesystem is fetched from the FUSE server — possibly the profiled
//! container itself, which need never answer — and a page of a network filesystem may wait on the
//! network; the agent's thread would block with it. So a read must lie wholly inside mappings that
//! are anonymous or backed by a file on a local filesystem, as `/proc/PID/maps` and
//! `/proc/PID/mountinfo` say (both answered by the kernel alone, without touching any file; the
//! FUSE and network devices are the ones `procmaps::remote_devices` finds for the file door).
//! Anything else is refused before a system call touches the memory, and counted by reason
//! ([`refusal_totals`], published as `kiln_agent_process_memory_reads_refused_total{reason}`).
//!
//! The mappings are a snapshot, re-read when an address is outside it (at most every
//! [`MAPS_REFRESH`]): a runtime's new heap arena is found without re-reading the maps on every
//! read. What the snapshot cannot rule out is a process that replaces a checked range with a FUSE
//! mapping between the check and the read (it must win that race on purpose); the reads are a few
//! hundred bytes, done on the agent's own threads.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::procmaps::{MapsLine, read_proc_file, remote_devices};

/// Shortest time between two re-reads of a process's mappings after an address outside them.
pub const MAPS_REFRESH: Duration = Duration::from_millis(250);

/// Why a read was refused before touching the process (a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemoryRefusal {
    /// Part of the range is a mapping of a file on a FUSE or network filesystem.
    RemoteFilesystem,
    /// Part of the range is in no readable mapping.
    Unmapped,
}

impl MemoryRefusal {
    pub const ALL: [MemoryRefusal; 2] = [MemoryRefusal::RemoteFilesystem, MemoryRefusal::Unmapped];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            MemoryRefusal::RemoteFilesystem => "remote_filesystem",
            MemoryRefusal::Unmapped => "unmapped",
        }
    }
}

/// Refusals so far in this process, by [`MemoryRefusal::ALL`] index (process-wide: readers live
/// on several threads; the aggregator publishes the totals once per window).
static REFUSED: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

/// Refusals counted so far, by reason.
pub fn refusal_totals() -> [(MemoryRefusal, u64); 2] {
    MemoryRefusal::ALL.map(|r| (r, REFUSED[r as usize].load(Ordering::Relaxed)))
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MemoryError {
    /// `/proc/PID/maps` or `/proc/PID/mem` cannot be opened (usually: the process exited).
    #[error("cannot open the memory of process {pid}: {source}")]
    Open { pid: u32, source: io::Error },
    #[error("read of {len} bytes at {addr:#x} refused: {}", reason.as_str())]
    Refused {
        addr: u64,
        len: usize,
        reason: MemoryRefusal,
    },
    #[error("read of {len} bytes at {addr:#x} failed: {source}")]
    Read {
        addr: u64,
        len: usize,
        source: io::Error,
    },
}

/// A readable mapping; `local` when anonymous or a file on a local filesystem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Region {
    start: u64,
    end: u64,
    local: bool,
}

/// The readable mappings of a `/proc/PID/maps` text, sorted, marked remote when their device is
/// in `remote` (from `/proc/PID/mountinfo`).
fn regions(maps: &str, remote: &HashSet<(u32, u32)>) -> Vec<Region> {
    let mut out: Vec<Region> = maps
        .lines()
        .filter_map(MapsLine::parse)
        .filter(|l| l.perms.starts_with('r') && l.start < l.end)
        .map(|l| Region {
            start: l.start,
            end: l.end,
            local: !remote.contains(&(l.major, l.minor)),
        })
        .collect();
    out.sort_unstable_by_key(|r| r.start);
    out
}

/// Whether `[addr, addr + len)` lies wholly in local readable mappings (adjacent mappings may
/// share it: a code object may straddle two mappings of one arena).
fn check(regions: &[Region], addr: u64, len: usize) -> Result<(), MemoryRefusal> {
    let end = addr
        .checked_add(len as u64)
        .ok_or(MemoryRefusal::Unmapped)?;
    let mut at = addr;
    let mut i = regions.partition_point(|r| r.start <= at);
    loop {
        let r = i
            .checked_sub(1)
            .and_then(|i| regions.get(i))
            .filter(|r| at < r.end)
            .ok_or(MemoryRefusal::Unmapped)?;
        if !r.local {
            return Err(MemoryRefusal::RemoteFilesystem);
        }
        if end <= r.end {
            return Ok(());
        }
        // The next mapping must start exactly where this one ends.
        at = r.end;
        i += 1;
        if regions.get(i - 1).is_none_or(|n| n.start != at) {
            return Err(MemoryRefusal::Unmapped);
        }
    }
}

/// The memory readers one runtime keeps open within a window, one per process read (at most
/// [`Readers::MAX`], the least recently opened closed first).
///
/// Why several: samples of a runtime's processes arrive interleaved (two Node.js workers, a pool
/// of Python processes), and opening a reader reads the process's maps and mountinfo, which for a
/// Node.js process costs more than everything else done for its sample. A reader per process
/// makes that once per process and window.
#[derive(Debug, Default)]
pub struct Readers {
    open: Vec<ProcessMemory>,
}

impl Readers {
    /// Most readers kept open (file descriptors held between two window ends).
    pub const MAX: usize = 16;

    /// The reader of process `pid` started at `start_time`, opened if it is not open yet.
    pub fn get(&mut self, pid: u32, start_time: u64) -> Result<&mut ProcessMemory, MemoryError> {
        let at = match self.open.iter().position(|m| m.is_of(pid, start_time)) {
            Some(i) => i,
            None => {
                let reader = ProcessMemory::open(pid, start_time)?;
                if self.open.len() >= Self::MAX {
                    self.open.remove(0);
                }
                // A pid reused by a new process: its old reader goes.
                self.open.retain(|m| m.pid != pid);
                self.open.push(reader);
                self.open.len() - 1
            }
        };
        Ok(&mut self.open[at])
    }

    /// Closes every reader (at a window's end: the next window sees fresh mappings).
    pub fn clear(&mut self) {
        self.open.clear();
    }
}

/// Reads one process's memory, only inside its anonymous and local-file mappings (see the module
/// docs). Open it once per process and window and keep it: opening reads the process's maps.
#[derive(Debug)]
pub struct ProcessMemory {
    pid: u32,
    start_time: u64,
    mem: File,
    regions: Vec<Region>,
    loaded: Instant,
}

impl ProcessMemory {
    /// Opens process `pid`, started at `start_time` (clock ticks since boot, as `Process` has it).
    pub fn open(pid: u32, start_time: u64) -> Result<ProcessMemory, MemoryError> {
        let regions = Self::read_regions(pid)?;
        let mem = File::open(format!("/proc/{pid}/mem"))
            .map_err(|source| MemoryError::Open { pid, source })?;
        Ok(ProcessMemory {
            pid,
            start_time,
            mem,
            regions,
            loaded: Instant::now(),
        })
    }

    fn read_regions(pid: u32) -> Result<Vec<Region>, MemoryError> {
        let maps = read_proc_file(format!("/proc/{pid}/maps"))
            .map_err(|source| MemoryError::Open { pid, source })?;
        // No mountinfo (a process exiting): nothing is known to be remote, but then the maps
        // just read are empty or about to be.
        let remote = read_proc_file(format!("/proc/{pid}/mountinfo"))
            .map(|t| remote_devices(&t))
            .unwrap_or_default();
        Ok(regions(&maps, &remote))
    }

    /// Whether this reader is for process `pid` started at `start_time` (not a reused pid).
    pub fn is_of(&self, pid: u32, start_time: u64) -> bool {
        self.pid == pid && self.start_time == start_time
    }

    /// Fills `buf` from the process's memory at `addr`, or refuses (counted) when the range is
    /// not wholly in anonymous or local-file mappings.
    pub fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let mut verdict = check(&self.regions, addr, buf.len());
        if verdict == Err(MemoryRefusal::Unmapped) && self.loaded.elapsed() >= MAPS_REFRESH {
            // Perhaps mapped since the snapshot (a new heap arena): look again, rate-limited.
            if let Ok(r) = Self::read_regions(self.pid) {
                self.regions = r;
            }
            self.loaded = Instant::now();
            verdict = check(&self.regions, addr, buf.len());
        }
        if let Err(reason) = verdict {
            REFUSED[reason as usize].fetch_add(1, Ordering::Relaxed);
            return Err(MemoryError::Refused {
                addr,
                len: buf.len(),
                reason,
            });
        }
        self.mem
            .read_exact_at(buf, addr)
            .map_err(|source| MemoryError::Read {
                addr,
                len: buf.len(),
                source,
            })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A process with its heap, a local library, a file on a FUSE filesystem (device 0:52, as
    /// mountinfo says) and a guard page.
    const MAPS: &str = "\
55d0c8a00000-55d0c8a02000 r--p 00000000 fd:01 1048601    /usr/bin/python3.11
55d0c8a02000-55d0c8a07000 r-xp 00002000 fd:01 1048601    /usr/bin/python3.11
55d0c9000000-55d0c9100000 rw-p 00000000 00:00 0          [heap]
7f1c2a000000-7f1c2a100000 rw-p 00000000 00:00 0 
7f1c2a100000-7f1c2a200000 rw-p 00000000 00:00 0 
7f1c2a200000-7f1c2a201000 ---p 00000000 00:00 0 
7f1c2b000000-7f1c2b010000 r--p 00000000 00:34 77         /app/lib/evil.so
7f1c2b010000-7f1c2b020000 r-xp 00010000 00:34 77         /app/lib/evil.so
";
    const MOUNTINFO: &str = "\
22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
90 22 0:52 / /app rw,nosuid shared:40 - fuse.sshfs host:/srv rw,user_id=0
";

    fn fixture() -> Vec<Region> {
        let remote = remote_devices(MOUNTINFO);
        assert!(remote.contains(&(0, 52)));
        // maps prints devices in hex: 00:34 is 0:52.
        regions(MAPS, &remote)
    }

    #[test]
    fn reads_stay_in_anonymous_and_local_file_mappings() {
        let r = fixture();
        // The interpreter's own file and its heap: local.
        assert_eq!(check(&r, 0x55d0c8a00100, 64), Ok(()));
        assert_eq!(check(&r, 0x55d0c9000000, 0x100000), Ok(()));
        // Straddling two adjacent anonymous mappings (one arena split by mprotect): allowed.
        assert_eq!(check(&r, 0x7f1c2a0ffff0, 32), Ok(()));
        // A FUSE-backed file, wholly or in part: refused, whatever its permissions.
        assert_eq!(
            check(&r, 0x7f1c2b000010, 8),
            Err(MemoryRefusal::RemoteFilesystem)
        );
        assert_eq!(
            check(&r, 0x7f1c2b010000, 8),
            Err(MemoryRefusal::RemoteFilesystem)
        );
        // A guard page, a gap, running off the end of a mapping, address overflow: unmapped.
        assert_eq!(check(&r, 0x7f1c2a200000, 8), Err(MemoryRefusal::Unmapped));
        assert_eq!(check(&r, 0x10, 8), Err(MemoryRefusal::Unmapped));
        assert_eq!(check(&r, 0x55d0c90ffff8, 16), Err(MemoryRefusal::Unmapped));
        assert_eq!(check(&r, u64::MAX - 4, 8), Err(MemoryRefusal::Unmapped));
    }

    /// A real read of this process's own memory goes through; one outside its mappings is refused
    /// and counted without being attempted.
    #[test]
    fn reads_own_memory_and_counts_refusals() {
        let secret: [u8; 16] = *b"kiln reads this!";
        let me = std::process::id();
        let mut m = ProcessMemory::open(me, 0).unwrap();
        assert!(m.is_of(me, 0) && !m.is_of(me, 1));
        let mut buf = [0u8; 16];
        m.read(std::ptr::addr_of!(secret) as u64, &mut buf).unwrap();
        assert_eq!(buf, secret);
        let before = refusal_totals()[1].1;
        let err = m.read(8, &mut buf).unwrap_err();
        assert!(matches!(
            err,
            MemoryError::Refused {
                reason: MemoryRefusal::Unmapped,
                ..
            }
        ));
        assert!(refusal_totals()[1].1 > before);
    }
}
