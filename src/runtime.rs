//! The process set-up latte-rs needs before its first model: the allocator and candle's thread pool.

/// Tensors here are large and short-lived (tens of MB per op); the system allocator maps and unmaps them each
/// time, paying a page fault per 4 KiB on every op. mimalloc keeps freed memory for reuse.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (its position in `mi_option_t`, the same in mimalloc v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Stack of rayon's worker threads: a whole train step runs on one ([`on_pool`]), and candle's backward pass walks
/// the graph by recursion, as deep as the model; 8 MiB is the main thread's usual stack (reserved, committed only
/// as used).
const WORKER_STACK: usize = 8 << 20;

/// Runs `f` on a thread of rayon's pool (the caller waits), with the caller's per-thread settings (bf16 autocast,
/// the kernel path) in force there. A model's op sequence is a chain of short parallel kernels; run from a thread
/// outside the pool, each one hands its work to the pool and puts the caller to sleep until it is done, two
/// context switches per kernel (about 2,900 per train step of the demo's model). Run from inside the pool, the
/// thread that reaches a kernel takes its share itself and only its idle partner wakes. For work on the CPU only:
/// a GPU context belongs to the thread that made it.
///
/// One such body runs at a time, process-wide: a body may hold a lock across a parallel kernel (a forward pass
/// reads the weights under a lock; a train step writes them under it), and a rayon worker waiting inside one body
/// runs whatever job is queued, so a second body queued beside it (another Python thread's forward during a train
/// step) could run on that worker's stack and wait for a lock the body below it holds, forever. Callers queue
/// here, outside the pool, instead; the kernels' own pieces take no locks.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let bf16 = crate::nn::autocast::bf16_enabled();
    let kernels = crate::nn::kernels::current_override();
    let mut out = None;
    /// Puts the worker's own autocast setting back when dropped, also when `f` panics.
    struct Bf16(bool);
    impl Drop for Bf16 {
        fn drop(&mut self) {
            crate::nn::autocast::set_bf16(self.0);
        }
    }
    rayon::scope(|_| {
        let _bf16 = Bf16(crate::nn::autocast::set_bf16(bf16));
        let _kernels = crate::nn::kernels::scope_or_default(kernels);
        out = Some(f());
    });
    out.expect("rayon::scope runs its body before returning")
}

/// [`on_pool`] for work on `device` when it is the CPU; elsewhere `f` runs on the calling thread.
pub fn on_cpu_pool<R: Send>(device: &candle_core::Device, f: impl FnOnce() -> R + Send) -> R {
    if device.is_cpu() {
        on_pool(f)
    } else {
        f()
    }
}

/// Sets up the process for latte-rs's workloads, once, before the first model is built:
///
/// - mimalloc keeps freed memory for reuse instead of returning it to the OS after 10 ms (its default). The
///   training path allocates and frees hundreds of MB per op; returning them made the kernel zero fresh pages for
///   every op, a quarter of the run time of a train step. The process keeps its peak resident memory instead, as
///   PyTorch's caching allocators do. `MIMALLOC_PURGE_DELAY` in the environment overrides this.
/// - rayon's global pool (the kernels' and the GEMMs' threads) is started here rather than at the first kernel:
///   started lazily under a process limit that leaves no room for the threads' stacks (`ulimit -v`/`-d` set
///   after import), rayon panics and the call fails with an internal error instead of running or raising
///   `MemoryError`. Where even this start is refused, one worker thread is tried, then rayon's own lazy start.
/// - candle's own elementwise thread pool is left at one thread (`CANDLE_NUM_THREADS=1`). latte-rs's kernels and
///   the GEMMs run on rayon's pool; a second pool of pinned, spinning threads competing for the same cores made
///   the demo's train step 14% slower (and a Latte-S/2 step 1.6% faster). `CANDLE_NUM_THREADS` in the environment
///   overrides this.
pub fn configure_runtime() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            // SAFETY: sets an integer option; mimalloc reads options atomically.
            unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
        }
        let pool = || rayon::ThreadPoolBuilder::new().stack_size(WORKER_STACK);
        if pool().build_global().is_err() {
            let _ = pool().num_threads(1).build_global();
        }
        if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
            // Read by candle once, when its pool is first used (after this, before any tensor op of ours).
            std::env::set_var("CANDLE_NUM_THREADS", "1");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{autocast, kernels};

    #[test]
    fn on_pool_runs_on_a_worker_with_the_callers_settings_and_leaves_the_worker_as_it_was() {
        configure_runtime();
        assert!(rayon::current_thread_index().is_none());
        let before = autocast::set_bf16(true);
        let _generic = kernels::force_generic();
        let seen = on_pool(|| {
            (
                rayon::current_thread_index().is_some(),
                autocast::bf16_enabled(),
                kernels::current(),
                on_pool(rayon::current_thread_index),
            )
        });
        assert!(seen.0, "the body ran on the caller's thread");
        assert!(
            seen.1 && seen.2 == kernels::KernelPath::Generic,
            "the caller's settings were not carried"
        );
        assert!(seen.3.is_some(), "a nested call left the pool");
        // The workers are back to their own settings (off, the default path).
        let after = rayon::broadcast(|_| (autocast::bf16_enabled(), kernels::current_override()));
        assert!(after.iter().all(|&(bf16, path)| !bf16 && path.is_none()), "{after:?}");
        autocast::set_bf16(before);
    }

    #[test]
    fn a_body_queued_while_another_holds_a_lock_across_a_kernel_does_not_deadlock() {
        // A writer's body holds the weights' lock across a parallel kernel whose second half a second worker
        // takes; a reader's body is queued meanwhile. Were the reader's body queued in the pool, the first worker,
        // done with its half and waiting, would run it and block on the lock its own stack holds.
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{mpsc, Arc, RwLock};
        use std::time::Duration;
        configure_runtime();
        if rayon::current_num_threads() < 2 {
            return; // one worker: nothing runs beside the body
        }
        let (done, finished) = mpsc::channel();
        std::thread::spawn(move || {
            let weights = Arc::new(RwLock::new(0u64));
            let queued = Arc::new(AtomicBool::new(false));
            let reader = {
                let (weights, queued) = (weights.clone(), queued.clone());
                std::thread::spawn(move || {
                    while !queued.load(Ordering::SeqCst) {
                        std::thread::yield_now();
                    }
                    on_pool(|| *weights.read().unwrap())
                })
            };
            on_pool(|| {
                let mut w = weights.write().unwrap();
                rayon::join(
                    || {
                        queued.store(true, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(50));
                    },
                    || std::thread::sleep(Duration::from_millis(300)),
                );
                *w += 1;
            });
            let _ = done.send(reader.join().unwrap());
        });
        let seen = finished.recv_timeout(Duration::from_secs(30));
        assert_eq!(seen, Ok(1), "the reader's body never finished: a deadlock");
    }
}
