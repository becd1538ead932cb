//! Recognising a runtime (CPython, HotSpot, Node.js) in a process means opening and parsing files
//! of a profiled container: an interpreter's symbol table, a 100 MB `node` binary, a JVM's
//! `libjvm.so`. That never happens on the sampling thread (a slow or hostile file would stall
//! every sample of the node). Each runtime owns one [`Detector`]: a worker thread with a bounded
//! queue of processes to read, and answers the sampling thread collects when it next looks.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender};

use crate::procmaps::Process;

/// Most processes waiting for one runtime's detection thread. A process that finds the queue full
/// is asked again at its next sample.
pub const DETECTION_QUEUE: usize = 64;

/// What a detection thread found in process `pid`, as the process was when it was asked.
pub struct Answer<D> {
    pub pid: u32,
    pub start_time: u64,
    /// The number of mappings the process had: a process not recognised is asked again when this
    /// changes (`libpython`/`libjvm.so` are mapped after exec).
    pub mappings: usize,
    pub detection: D,
}

/// The channel to and from one runtime's detection thread, and the processes it is reading.
pub struct Detector<D> {
    requests: SyncSender<Arc<Process>>,
    results: Receiver<Answer<D>>,
    in_flight: HashSet<u32>,
}

impl<D: Send + 'static> Detector<D> {
    /// Starts thread `name` calling `detect` on each process it is asked about. The thread ends
    /// when the detector is dropped. `None` (logged) when the thread cannot start: the runtime
    /// then detects on the sampling thread, as in tests.
    pub fn spawn<F>(name: &str, mut detect: F) -> Option<Detector<D>>
    where
        F: FnMut(&Process) -> D + Send + 'static,
    {
        let (requests, inbox) = std::sync::mpsc::sync_channel::<Arc<Process>>(DETECTION_QUEUE);
        let (answers, results) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                for p in inbox {
                    let answer = Answer {
                        pid: p.pid,
                        start_time: p.start_time,
                        mappings: p.mappings.len(),
                        detection: detect(&p),
                    };
                    if answers.send(answer).is_err() {
                        break;
                    }
                }
            });
        match spawned {
            Ok(_) => Some(Detector {
                requests,
                results,
                in_flight: HashSet::new(),
            }),
            Err(e) => {
                tracing::warn!(thread = name, error = %e, "cannot start a detection thread; detecting on the sampling thread");
                None
            }
        }
    }

    /// Queues `p` unless it is queued already. A full queue drops the request: the process is
    /// asked again at its next sample, so a burst of new processes never blocks sampling.
    pub fn ask(&mut self, p: &Arc<Process>) {
        if !self.in_flight.contains(&p.pid) && self.requests.try_send(p.clone()).is_ok() {
            self.in_flight.insert(p.pid);
        }
    }

    /// The answers that have arrived since the last call.
    pub fn answers(&mut self) -> Vec<Answer<D>> {
        let answers: Vec<_> = self.results.try_iter().collect();
        for a in &answers {
            self.in_flight.remove(&a.pid);
        }
        answers
    }
}
