//! Reads of a JVM's memory through `/proc/PID/mem` (the agent never attaches to the process), by
//! way of the agent's one door to process memory ([`ProcessMemory`]: no reads of FUSE- or
//! network-backed mappings).
//!
//! A read that fails (the process exited, the address is unmapped) is an error the caller turns
//! into a named frame; nothing read here is trusted beyond its bounds: lengths are capped by the
//! callers.

use std::sync::Mutex;

use crate::process_memory::ProcessMemory;

/// The memory of one process, opened once (a `/proc/PID/mem` file stays bound to the process it
/// was opened for, so a reused pid can never be read through it). The lock is uncontended: the
/// detection thread hands a JVM over before the sampling thread reads it.
#[derive(Debug)]
pub struct Mem {
    inner: Mutex<ProcessMemory>,
}

/// A read outside the process's readable memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unreadable;

impl Mem {
    pub fn open(pid: u32, start_time: u64) -> Result<Mem, crate::process_memory::MemoryError> {
        Ok(Mem {
            inner: Mutex::new(ProcessMemory::open(pid, start_time)?),
        })
    }

    /// Fills `buf` from `addr`.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Unreadable> {
        if addr == 0 {
            return Err(Unreadable);
        }
        let mut m = self.inner.lock().map_err(|_| Unreadable)?;
        m.read(addr, buf).map_err(|_| Unreadable)
    }

    pub fn u64(&self, addr: u64) -> Result<u64, Unreadable> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    pub fn u32(&self, addr: u64) -> Result<u32, Unreadable> {
        let mut b = [0u8; 4];
        self.read(addr, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    pub fn u16(&self, addr: u64) -> Result<u16, Unreadable> {
        let mut b = [0u8; 2];
        self.read(addr, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    pub fn u8(&self, addr: u64) -> Result<u8, Unreadable> {
        let mut b = [0u8; 1];
        self.read(addr, &mut b)?;
        Ok(b[0])
    }

    /// `len` bytes from `addr`.
    pub fn bytes(&self, addr: u64, len: usize) -> Result<Vec<u8>, Unreadable> {
        let mut v = vec![0u8; len];
        self.read(addr, &mut v)?;
        Ok(v)
    }

    /// A NUL-terminated C string of at most `max` bytes (longer: an error).
    pub fn c_string(&self, addr: u64, max: usize) -> Result<String, Unreadable> {
        let mut out = Vec::new();
        let mut chunk = [0u8; 64];
        while out.len() < max {
            let at = addr + out.len() as u64;
            // A string may end just before an unmapped page: read up to the page's end first.
            let to_page_end = (4096 - (at % 4096)) as usize;
            let n = chunk.len().min(to_page_end);
            self.read(at, &mut chunk[..n])?;
            if let Some(end) = chunk[..n].iter().position(|&b| b == 0) {
                out.extend_from_slice(&chunk[..end]);
                return String::from_utf8(out).map_err(|_| Unreadable);
            }
            out.extend_from_slice(&chunk[..n]);
        }
        Err(Unreadable)
    }
}
