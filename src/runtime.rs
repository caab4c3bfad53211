//! The process set-up latte-rs needs before its first model: the allocator and candle's thread pool.

/// Tensors here are large and short-lived (tens of MB per op); the system allocator maps and unmaps them each
/// time, paying a page fault per 4 KiB on every op. mimalloc keeps freed memory for reuse.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (its position in `mi_option_t`, the same in mimalloc v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

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
        if rayon::ThreadPoolBuilder::new().build_global().is_err() {
            let _ = rayon::ThreadPoolBuilder::new().num_threads(1).build_global();
        }
        if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
            // Read by candle once, when its pool is first used (after this, before any tensor op of ours).
            std::env::set_var("CANDLE_NUM_THREADS", "1");
        }
    });
}
