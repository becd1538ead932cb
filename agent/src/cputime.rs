//! The calling thread's CPU time, for costs that must not include time the thread spent
//! preempted.
//!
//! Why not `Instant`: the sampling thread shares its CPU with whatever is being profiled, so a
//! wall-clock interval around a few microseconds of work now and then contains another task's
//! whole time slice. Measured on the agent_overhead workload (two busy processes on 2 CPUs, agent
//! at 99 Hz): 28 of ~4,500 stack walks timed with `Instant` took over 20 µs (up to 594 µs, where
//! the median was 0.25 µs), and those 28 were 47 % of the summed walk time.
//! `CLOCK_THREAD_CPUTIME_ID` is a system call (not in the vDSO), so it is read around batches,
//! not around each sample.

use std::time::Duration;

/// CPU time consumed by the calling thread so far (zero if the clock cannot be read).
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    /// Waits on conditions, not on time: under heavy load a 30 ms spin may get 1 ms of CPU, so
    /// the test spins until the clock says enough CPU was used (with a generous deadline), and
    /// checks what a wrong clock would get wrong: the wall clock (counts sleep), the process
    /// clock (counts the other thread's work).
    #[test]
    fn counts_this_threads_work_and_not_its_sleep() {
        // Another thread of this process burns CPU the whole time: a process-wide clock would
        // count it while this thread sleeps.
        let stop = Arc::new(AtomicBool::new(false));
        let burner = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let started = thread_cpu_time();
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
                thread_cpu_time() - started
            })
        };
        let before = thread_cpu_time();
        let slept_from = Instant::now();
        std::thread::sleep(Duration::from_millis(50));
        let slept_wall = slept_from.elapsed();
        let slept = thread_cpu_time() - before;
        stop.store(true, Ordering::Relaxed);
        let burned = burner.join().expect("burner thread");
        // Waking up costs microseconds of CPU, never a sizeable part of the sleep.
        assert!(
            slept < slept_wall / 4,
            "sleeping {slept_wall:?} cost {slept:?} of this thread's CPU"
        );
        assert!(burned > Duration::ZERO, "the other thread's clock advanced");

        // Spinning: the clock advances (by at least 20 ms, however long the scheduler takes to
        // give them) and never by more than the wall-clock time that passed.
        let before = thread_cpu_time();
        let started = Instant::now();
        let deadline = started + Duration::from_secs(60);
        let mut x = 0u64;
        let mut worked = Duration::ZERO;
        while worked < Duration::from_millis(20) {
            assert!(
                Instant::now() < deadline,
                "a minute of spinning made only {worked:?} of CPU time"
            );
            for _ in 0..10_000 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
            worked = thread_cpu_time() - before;
        }
        let wall = started.elapsed();
        assert!(
            worked <= wall + Duration::from_millis(1),
            "{worked:?} of CPU in {wall:?} of wall-clock time"
        );
    }
}
