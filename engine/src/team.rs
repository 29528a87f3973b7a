//! The executor's threads: the calling thread plus `threads - 1` helpers that spin for a while
//! between jobs before they sleep, the way ONNX Runtime's and OpenMP's pools wait.
//!
//! A run hands out work several times (once per layer when one tile splits its rows), often for
//! a few microseconds of work each. A pool whose idle workers sleep pays a thread wake-up each
//! time, and the caller waits for a worker instead of doing a share itself; rayon's pool, which
//! the executor used before, spent 8-12% of the CPU time of a batch-1 or small batch-64 run in
//! scheduling (BENCHMARKS.md). Here the caller takes part in every job, and a helper that saw a
//! job less than `SPIN` ago picks up the next one without any system call.

use std::any::Any;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle helper keeps checking for the next job before it sleeps (when the team has
/// no more threads than the machine has cores; with more, a spinning thread would hold a core
/// that a working one needs, so waits sleep at once).
const SPIN: Duration = Duration::from_millis(2);

/// A job as every member sees it: called once per member with the member's index.
type Job<'a> = &'a (dyn Fn(usize) + Sync);

struct Shared {
    /// The job's number (high 32 bits, bumped once per job and once to stop) and how many
    /// members take part in it (low 32 bits: members `0..n`; the others skip it). One word, so
    /// that a helper reads both at once: read apart, a helper late for one job could take the
    /// next one's member count for it, run that job twice and leave `pending` wrapped around.
    epoch: AtomicU64,
    /// The current job, present from the epoch bump until every helper has finished it.
    job: Mutex<Option<Job<'static>>>,
    /// Helpers that have not finished the current job.
    pending: AtomicUsize,
    /// Which members sleep, and the condition they wait on; `epoch` changes under this lock.
    sleeping: Mutex<Vec<bool>>,
    wake: Condvar,
    stop: AtomicBool,
    /// How long waits spin before they sleep or yield: `SPIN`, or zero for an oversubscribed team.
    spin: Duration,
    /// The first panic of a helper during the current job, handed to the caller.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

/// The calling thread and its helpers; `run` and `for_each` hand work to all of them.
pub struct Team {
    threads: usize,
    shared: Arc<Shared>,
    helpers: Vec<JoinHandle<()>>,
    /// A job is running: a nested call (from inside a job) runs on its own thread instead.
    busy: AtomicBool,
}

impl Team {
    /// A team of `threads` (at least 1): the caller and `threads - 1` helper threads.
    pub fn new(threads: usize) -> std::io::Result<Team> {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            job: Mutex::new(None),
            pending: AtomicUsize::new(0),
            sleeping: Mutex::new(vec![false; threads]),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            spin: if threads <= std::thread::available_parallelism().map_or(1, |n| n.get()) { SPIN } else { Duration::ZERO },
            panic: Mutex::new(None),
        });
        let mut helpers = Vec::with_capacity(threads - 1);
        for member in 1..threads {
            let shared = Arc::clone(&shared);
            helpers.push(std::thread::Builder::new().name(format!("engine-{member}")).spawn(move || helper(&shared, member))?);
        }
        Ok(Team { threads, shared, helpers, busy: AtomicBool::new(false) })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Calls `f(member)` on every member, the caller being member 0, and returns when all have
    /// finished. A panic in any member is resumed on the caller.
    pub fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        self.run_some(self.threads, f)
    }

    /// `run` on members `0..members` only (at most all): the others are not woken and not
    /// waited for, so a job with work for a few members costs the rest nothing.
    pub fn run_some(&self, members: usize, f: &(dyn Fn(usize) + Sync)) {
        let members = members.clamp(1, self.threads);
        if members == 1 || self.busy.swap(true, Ordering::Acquire) {
            return (0..members).for_each(f);
        }
        let shared = &*self.shared;
        shared.panic.lock().unwrap_or_else(|e| e.into_inner()).take();
        // SAFETY: the job is only reachable through `shared.job` until every helper has
        // decremented `pending`, and `Finish` (also on unwinding) waits for that and clears the
        // slot before this function returns, so no helper calls `f` after its borrow ends.
        let job: Job<'static> = unsafe { std::mem::transmute::<Job<'_>, Job<'static>>(f) };
        *shared.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(job);
        shared.pending.store(members - 1, Ordering::Release);
        {
            let sleeping = shared.sleeping.lock().unwrap_or_else(|e| e.into_inner());
            shared.next_epoch(members);
            if sleeping[1..members].contains(&true) {
                shared.wake.notify_all();
            }
        }
        let finish = Finish { team: self };
        f(0);
        drop(finish);
        if let Some(p) = shared.panic.lock().unwrap_or_else(|e| e.into_inner()).take() {
            std::panic::resume_unwind(p);
        }
    }

    /// Calls `f` on each item, the members taking the next untaken item in turn.
    pub fn for_each<T: Send>(&self, items: Vec<T>, f: impl Fn(T) + Sync) {
        if self.threads == 1 || items.len() <= 1 {
            return items.into_iter().for_each(f);
        }
        let n = items.len();
        let slots: Vec<Mutex<Option<T>>> = items.into_iter().map(|i| Mutex::new(Some(i))).collect();
        let next = AtomicUsize::new(0);
        self.run_some(n, &|_| {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                if let Some(item) = slots[i].lock().unwrap_or_else(|e| e.into_inner()).take() {
                    f(item);
                }
            }
        });
    }
}

/// A busy wait of at most `limit`: `again` pauses and says whether to keep spinning, reading the
/// clock only every 64 calls.
struct Spin {
    start: Instant,
    limit: Duration,
    spins: u32,
}

impl Spin {
    fn new(limit: Duration) -> Spin {
        Spin { start: Instant::now(), limit, spins: 0 }
    }

    fn again(&mut self) -> bool {
        self.spins = self.spins.wrapping_add(1);
        let spinning = !self.spins.is_multiple_of(64) || self.start.elapsed() < self.limit;
        if spinning {
            std::hint::spin_loop();
        }
        spinning
    }
}

/// Waits for the helpers to finish the current job and clears it; runs on unwinding too.
struct Finish<'t> {
    team: &'t Team,
}

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        let shared = &*self.team.shared;
        let mut spin = Spin::new(shared.spin);
        while shared.pending.load(Ordering::Acquire) > 0 {
            if !spin.again() {
                std::thread::yield_now();
            }
        }
        *shared.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.team.busy.store(false, Ordering::Release);
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        let shared = &*self.shared;
        shared.stop.store(true, Ordering::Release);
        {
            let _sleeping = shared.sleeping.lock().unwrap_or_else(|e| e.into_inner());
            shared.next_epoch(self.threads);
            shared.wake.notify_all();
        }
        for h in self.helpers.drain(..) {
            let _ = h.join();
        }
    }
}

/// The low bits of `Shared::epoch`: the members of its job.
const MEMBERS: u64 = u32::MAX as u64;

impl Shared {
    /// Starts the next epoch, a job for members `0..members` (the caller holds `sleeping`).
    fn next_epoch(&self, members: usize) {
        let count = (self.epoch.load(Ordering::Acquire) >> 32).wrapping_add(1);
        self.epoch.store((count << 32) | (members as u64).min(MEMBERS), Ordering::Release);
    }
}

/// A helper's life: wait for a new epoch (spinning, then sleeping), run the job if it takes
/// part, report.
fn helper(shared: &Shared, member: usize) {
    let mut seen = 0;
    // The last job left this member out: wait for the next one without spinning.
    let mut left_out = false;
    loop {
        let mut spin = Spin::new(if left_out { Duration::ZERO } else { shared.spin });
        while shared.epoch.load(Ordering::Acquire) == seen {
            if spin.again() {
                continue;
            }
            let mut sleeping = shared.sleeping.lock().unwrap_or_else(|e| e.into_inner());
            sleeping[member] = true;
            while shared.epoch.load(Ordering::Acquire) == seen {
                sleeping = shared.wake.wait(sleeping).unwrap_or_else(|e| e.into_inner());
            }
            sleeping[member] = false;
        }
        seen = shared.epoch.load(Ordering::Acquire);
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        // The job of epoch `seen` cannot be replaced before its members finish it, and this
        // member is not one of them if it is outside the epoch's members.
        left_out = member as u64 >= seen & MEMBERS;
        if left_out {
            continue;
        }
        let job = *shared.job.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(job) = job
            && let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(member)))
        {
            shared.panic.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(p);
        }
        shared.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many members a full job ran on.
    fn members_running(team: &Team) -> usize {
        let count = AtomicUsize::new(0);
        team.run(&|_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        count.load(Ordering::Relaxed)
    }

    /// Jobs for a few members and for all alternate quickly on more threads than cores: each
    /// member runs each job it belongs to once (a helper late for one job must not take the
    /// next one's member count for it).
    #[test]
    fn alternating_member_counts_run_each_member_once() {
        let team = Team::new(4).unwrap();
        let calls: Vec<AtomicUsize> = (0..4).map(|_| AtomicUsize::new(0)).collect();
        let mut expected = [0usize; 4];
        for round in 0..3000 {
            let members = [2, 4, 1, 3][round % 4];
            team.run_some(members, &|m| {
                calls[m].fetch_add(1, Ordering::Relaxed);
            });
            (0..members).for_each(|m| expected[m] += 1);
        }
        assert_eq!(calls.iter().map(|c| c.load(Ordering::Relaxed)).collect::<Vec<_>>(), expected);
    }

    #[test]
    fn every_item_once_on_every_team_size() {
        for threads in 1..=4 {
            let team = Team::new(threads).unwrap();
            for n in [0, 1, 2, 3, 7, 64] {
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                team.for_each((0..n).collect(), |i: usize| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "threads {threads}, n {n}");
            }
        }
    }

    #[test]
    fn members_see_their_index_and_nested_calls_run_inline() {
        let team = Team::new(3).unwrap();
        let seen: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
        team.run(&|m| {
            seen[m].fetch_add(1, Ordering::Relaxed);
            // A nested job runs every member's share on this thread.
            let inner = AtomicUsize::new(0);
            team.for_each((0..5).collect(), |_| {
                inner.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(inner.load(Ordering::Relaxed), 5);
        });
        assert!(seen.iter().all(|s| s.load(Ordering::Relaxed) == 1));
    }

    #[test]
    fn a_helper_panic_reaches_the_caller_and_the_team_still_works() {
        let team = Team::new(2).unwrap();
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            team.run(&|m| assert!(m == 0, "helper fails"));
        }));
        assert!(caught.is_err());
        assert_eq!(members_running(&team), 2);
    }

    #[test]
    fn jobs_for_some_members_leave_the_others_out_and_wake_them_later() {
        let team = Team::new(4).unwrap();
        for members in [2, 1, 3, 4, 2] {
            let seen: Vec<AtomicUsize> = (0..4).map(|_| AtomicUsize::new(0)).collect();
            team.run_some(members, &|m| {
                seen[m].fetch_add(1, Ordering::Relaxed);
            });
            let counts: Vec<usize> = seen.iter().map(|s| s.load(Ordering::Relaxed)).collect();
            assert_eq!(counts, (0..4).map(|m| usize::from(m < members)).collect::<Vec<_>>(), "members {members}");
        }
        // Left-out helpers sleep at once; a full job after a pause still reaches every one.
        team.run_some(2, &|_| {});
        std::thread::sleep(SPIN * 3);
        assert_eq!(members_running(&team), 4);
    }

    #[test]
    fn sleeping_helpers_wake_for_the_next_job() {
        let team = Team::new(2).unwrap();
        std::thread::sleep(SPIN * 3);
        assert_eq!(members_running(&team), 2);
    }
}
