//! Sizes checked before anything is allocated.
//!
//! Rust aborts the process when an allocation fails, and Linux's OOM killer ends it when an allocation succeeds
//! but the memory is then touched. Neither reaches the caller as an error, so every size that a user, a config or
//! a file controls goes through these checks first: a size that cannot be meant (its element count overflows, or
//! it exceeds [`MAX_ELEMENTS`]) is a [`LatteError::Value`] naming the argument, and a workload whose estimate is
//! more than the memory this process can still get is a [`LatteError::Memory`] with the estimate and the limit
//! that binds.
//!
//! "The memory this process can still get" is the least headroom under every limit that applies ([`headrooms`]):
//! the kernel's `MemAvailable`; the cgroup's memory limit, v2 (`memory.max`) or v1 (`memory.limit_in_bytes`), of
//! the process's cgroup and each of its ancestors; and the process limits `RLIMIT_AS` (`ulimit -v`, against the
//! address space in use) and `RLIMIT_DATA` (`ulimit -d`, against the data segment in use), which batch schedulers
//! and containers without cgroup limits set. The estimates are lower bounds, so the large buffers our own kernels
//! allocate are also fallible ([`try_filled`]): what slips past an estimate is still a memory error there.

use std::path::{Path, PathBuf};

use crate::error::{LatteError, Result};

/// The most elements one tensor may have (2^40, 4 TiB of f32): beyond any machine, so a larger count is a typo or
/// an attack, not a workload.
pub const MAX_ELEMENTS: u128 = 1 << 40;

/// The bytes this process can still allocate under one limit, and the limit in words for messages ("RLIMIT_AS
/// (ulimit -v) of 3.0 GiB with 1.2 GiB of address space in use").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Headroom {
    pub bytes: u64,
    pub limit: String,
}

impl Headroom {
    fn under(limit: u64, used: u64, what: impl FnOnce(&str, &str) -> String) -> Self {
        Self {
            bytes: limit.saturating_sub(used),
            limit: what(&human(limit as u128), &human(used as u128)),
        }
    }
}

/// The headroom under every memory limit that applies to this process now (see the module docs); empty where
/// none can be read (not Linux).
pub fn headrooms() -> Vec<Headroom> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let mut all: Vec<Headroom> = meminfo_headroom(&read("/proc/meminfo")).into_iter().collect();
    all.extend(cgroup_headrooms(
        Path::new("/sys/fs/cgroup"),
        &read("/proc/self/cgroup"),
    ));
    all.extend(rlimit_headrooms(
        &read("/proc/self/status"),
        rlimit(Rlimit::AddressSpace),
        rlimit(Rlimit::Data),
    ));
    all
}

/// Room every check leaves to the allocator: 64 MiB plus 1/32 of the headroom. An allocation near a limit needs
/// more than its own size (mimalloc maps whole aligned segments, over-maps to align them, and reserves arenas;
/// an initialiser holds a parameter's values beside the parameter), so an estimate that fit to the last byte still
/// aborted part way (seen on CI: Latte-XL/2 under `ulimit -d` 1 GiB above use, once in many runs).
pub const ALLOCATOR_SLACK: u64 = 64 << 20;

/// The tightest of [`headrooms`], less the allocator's room ([`ALLOCATOR_SLACK`]); None where nothing limits the
/// process.
pub fn headroom() -> Option<Headroom> {
    headrooms().into_iter().min_by_key(|h| h.bytes).map(|mut h| {
        h.bytes = h.bytes.saturating_sub(ALLOCATOR_SLACK + h.bytes / 32);
        h
    })
}

/// Bytes this process can still allocate: the tightest of [`headrooms`]. Where none can be read, no limit
/// (`u64::MAX`).
pub fn available_bytes() -> u64 {
    headroom().map_or(u64::MAX, |h| h.bytes)
}

/// `MemAvailable` of /proc/meminfo (what the kernel can give without swapping).
fn meminfo_headroom(meminfo: &str) -> Option<Headroom> {
    let kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())?;
    Some(Headroom {
        bytes: kib.saturating_mul(1024),
        limit: "the system's available memory (MemAvailable)".into(),
    })
}

/// The headroom under the memory limits of the process's cgroups, read from `root` laid out as /sys/fs/cgroup
/// (v2 unified at `root` or, in the hybrid layout, at `root/unified`; v1's memory controller at `root/memory`)
/// for a process whose /proc/self/cgroup reads `proc_self_cgroup`. Every level from the process's cgroup up to
/// the mount's root is read, since a parent's limit binds its children; in a container the path may not exist
/// under the mount (its root is the container's own cgroup), and the walk then reaches that root.
///
/// Usage counts the page cache the kernel would reclaim before failing an allocation: its inactive part
/// (`inactive_file`) is left out, as container runtimes do when they report a working set.
pub(crate) fn cgroup_headrooms(root: &Path, proc_self_cgroup: &str) -> Vec<Headroom> {
    let mut out = Vec::new();
    for line in proc_self_cgroup.lines() {
        // hierarchy-ID:controller-list:cgroup-path
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            for base in [root.to_path_buf(), root.join("unified")] {
                out.extend(walk_up(&base, path, |dir| {
                    let max = read_number(&dir.join("memory.max"))?; // "max" (no limit) does not parse
                    let used = read_number(&dir.join("memory.current"))?;
                    let cache = stat_field(&dir.join("memory.stat"), "inactive_file");
                    let file = dir.join("memory.max");
                    Some(Headroom::under(max, used.saturating_sub(cache), |l, u| {
                        format!("the cgroup v2 memory limit {} of {l} with {u} in use", file.display())
                    }))
                }));
            }
        } else if controllers.split(',').any(|c| c == "memory") {
            out.extend(walk_up(&root.join("memory"), path, |dir| {
                let limit = read_number(&dir.join("memory.limit_in_bytes"))?;
                let used = read_number(&dir.join("memory.usage_in_bytes"))?;
                let cache = stat_field(&dir.join("memory.stat"), "total_inactive_file");
                let file = dir.join("memory.limit_in_bytes");
                Some(Headroom::under(limit, used.saturating_sub(cache), |l, u| {
                    format!("the cgroup v1 memory limit {} of {l} with {u} in use", file.display())
                }))
            }));
        }
    }
    out
}

/// `read(dir)` for the cgroup directory of `path` under `base` and each of its ancestors up to `base`.
fn walk_up(base: &Path, path: &str, read: impl Fn(&Path) -> Option<Headroom>) -> Vec<Headroom> {
    let mut dir: PathBuf = base.join(path.trim().trim_start_matches('/'));
    let mut out = Vec::new();
    // Only the components of `path` are walked (never above `base`, never through "..").
    if path.split('/').any(|c| c == "..") {
        dir = base.to_path_buf();
    }
    loop {
        out.extend(read(&dir));
        if dir == base {
            return out;
        }
        match dir.parent() {
            Some(parent) if parent.starts_with(base) => dir = parent.to_path_buf(),
            _ => return out,
        }
    }
}

fn read_number(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A `name value` line of a cgroup's memory.stat; 0 where absent.
fn stat_field(path: &Path, name: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == name).then(|| v.trim().parse().ok()).flatten()
            })
        })
        .unwrap_or(0)
}

/// The process limits this module reads.
#[derive(Clone, Copy, Debug)]
enum Rlimit {
    AddressSpace,
    Data,
}

/// The soft limit, None where unlimited or unreadable.
#[cfg(unix)]
fn rlimit(which: Rlimit) -> Option<u64> {
    let resource = match which {
        Rlimit::AddressSpace => libc::RLIMIT_AS,
        Rlimit::Data => libc::RLIMIT_DATA,
    };
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct, which `lim` is.
    if unsafe { libc::getrlimit(resource, &mut lim) } != 0 || lim.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    // rlim_t is u64 on 64-bit Linux, not on every target.
    #[allow(clippy::unnecessary_cast)]
    let limit = lim.rlim_cur as u64;
    Some(limit)
}

#[cfg(not(unix))]
fn rlimit(_which: Rlimit) -> Option<u64> {
    None
}

/// The headroom under `RLIMIT_AS` (against `VmSize`, the address space in use) and `RLIMIT_DATA` (against
/// `VmData`, what Linux counts towards it: private writable mappings and the heap), with /proc/self/status
/// reading `status`. A limit whose usage cannot be read counts all of it as free.
fn rlimit_headrooms(status: &str, address_space: Option<u64>, data: Option<u64>) -> Vec<Headroom> {
    let kib = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |k| k.saturating_mul(1024))
    };
    let mut out = Vec::new();
    if let Some(limit) = address_space {
        out.push(Headroom::under(limit, kib("VmSize:"), |l, u| {
            format!("RLIMIT_AS (ulimit -v) of {l} with {u} of address space in use")
        }));
    }
    if let Some(limit) = data {
        out.push(Headroom::under(limit, kib("VmData:"), |l, u| {
            format!("RLIMIT_DATA (ulimit -d) of {l} with {u} of data in use")
        }));
    }
    out
}

/// Bytes as a short human-readable figure ("3.2 GiB").
pub fn human(bytes: u128) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    // 1023.95 and above would print as "1024.0" of this unit: the next one's "1.0" reads better.
    while v >= 1023.95 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

/// The refusal of `bytes` for `what` under `headroom`.
fn refusal(what: &str, bytes: u128, headroom: &Headroom) -> LatteError {
    LatteError::Memory(format!(
        "{what} needs about {} of memory, but only {} is available under {}",
        human(bytes),
        human(headroom.bytes as u128),
        headroom.limit
    ))
}

/// `Err(Memory)` naming the estimate and the limit when `bytes` (an estimate of what `what` allocates) is more
/// than the headroom under any limit of [`headrooms`].
pub fn ensure_fits(bytes: u128, what: &str) -> Result<()> {
    match headroom() {
        Some(h) if bytes > h.bytes as u128 => Err(refusal(what, bytes, &h)),
        _ => Ok(()),
    }
}

/// The element count of `dims` (named `arg` in errors), refused when it overflows or exceeds [`MAX_ELEMENTS`].
pub fn elements(arg: &str, dims: &[usize]) -> Result<usize> {
    let n = dims.iter().try_fold(1u128, |acc, &d| acc.checked_mul(d as u128));
    match n {
        Some(n) if n <= MAX_ELEMENTS => Ok(n as usize),
        _ => Err(LatteError::Value(format!(
            "{arg}: a shape of {dims:?} has more than 2^40 elements; expected a size that fits in memory"
        ))),
    }
}

/// [`elements`] and then [`ensure_fits`] for a tensor of `dims` taking `elem_size` bytes per element at its
/// peak (its temporaries included).
pub fn ensure_tensor_fits(arg: &str, dims: &[usize], elem_size: usize) -> Result<usize> {
    let n = elements(arg, dims)?;
    ensure_fits(n as u128 * elem_size as u128, arg)?;
    Ok(n)
}

/// A vector of `n` copies of `value` whose allocation may fail: the last line behind the estimates, for the large
/// buffers our kernels allocate themselves (`what` names the buffer). A refused allocation is a memory error
/// (carried through candle's error type, see [`crate::error::memory_in_candle`]), not an abort.
pub fn try_filled<T: Clone>(n: usize, value: T, what: &str) -> candle_core::Result<Vec<T>> {
    let mut v = try_with_capacity(n, what)?;
    v.resize(n, value);
    Ok(v)
}

/// A vector of `n` values left as the allocator gives them (no fill pass), or a memory error naming `what`: for
/// outputs a kernel writes in full (a GEMM that overwrites, an element map), where [`try_filled`]'s fill would be
/// a wasted pass over memory.
///
/// # Safety
/// Every element must be written before any is read.
pub unsafe fn try_uninit<T: Copy>(n: usize, what: &str) -> candle_core::Result<Vec<T>> {
    let mut v = try_with_capacity(n, what)?;
    // SAFETY: the capacity is n (reserved above); T is Copy (no drop), and the caller writes every element
    // before reading any.
    unsafe { v.set_len(n) };
    Ok(v)
}

/// An empty vector with room for `n` values, or a memory error naming `what` (see [`try_filled`]).
pub fn try_with_capacity<T>(n: usize, what: &str) -> candle_core::Result<Vec<T>> {
    let mut v = Vec::new();
    if v.try_reserve_exact(n).is_err() {
        return Err(allocation_refused(
            n as u128 * std::mem::size_of::<T>().max(1) as u128,
            what,
        ));
    }
    Ok(v)
}

/// The memory error of an allocation of `bytes` for `what` that the allocator refused, as candle's error (see
/// [`try_filled`]).
pub fn allocation_refused(bytes: u128, what: &str) -> candle_core::Error {
    let e = match headroom() {
        Some(h) if bytes > h.bytes as u128 => refusal(what, bytes, &h),
        // The estimate said it fits (other threads, or the allocator's own reserve, took the rest).
        _ => LatteError::Memory(format!(
            "{what} needs about {} of memory, which the allocator refused",
            human(bytes)
        )),
    };
    crate::error::memory_in_candle(e)
}

/// Config sizes checked against their ranges, `(field, value, min, max)` each: the lower bounds a network needs
/// (1 for a width or a count of blocks) and upper bounds that no real model reaches but that keep every size
/// product far from overflow. The first one out of range is a config error naming it.
pub fn sizes(fields: &[(&str, usize, usize, usize)]) -> Result<()> {
    for &(field, value, min, max) in fields {
        if value < min {
            return Err(LatteError::Config(format!(
                "{field} must be at least {min}, got {value}"
            )));
        }
        if value > max {
            return Err(LatteError::Config(format!(
                "{field} must be at most {max}, got {value}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_beyond_memory_are_errors_not_aborts() {
        assert!(available_bytes() > 1 << 20);
        assert!(ensure_fits(1 << 10, "x").is_ok());
        let e = ensure_fits(u128::MAX, "a thing").unwrap_err();
        assert!(matches!(e, LatteError::Memory(_)), "{e}");
        assert!(e.to_string().contains("a thing needs about"), "{e}");
        assert!(matches!(
            elements("shape", &[1 << 30, 1 << 30]),
            Err(LatteError::Value(_))
        ));
        assert!(matches!(elements("shape", &[usize::MAX, 3]), Err(LatteError::Value(_))));
        assert_eq!(elements("shape", &[2, 3, 0]).unwrap(), 0);
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human((1 << 30) - 4096), "1.0 GiB");
        assert_eq!(human(1023), "1023 B");
        assert!(sizes(&[("a", 1, 1, 4), ("b", 4, 0, 4)]).is_ok());
        let low = sizes(&[("a", 0, 1, 4)]).unwrap_err().to_string();
        let high = sizes(&[("a", 1, 1, 4), ("b", 5, 0, 4)]).unwrap_err().to_string();
        assert!(low.contains("a must be at least 1, got 0") && high.contains("b must be at most 4, got 5"));
    }

    #[test]
    fn the_refusal_names_the_estimate_and_the_binding_limit() {
        let e = ensure_fits(u128::MAX, "a thing").unwrap_err().to_string();
        let tightest = headroom().expect("Linux has MemAvailable at least");
        assert!(e.contains(&tightest.limit) && e.contains("is available under"), "{e}");
    }

    #[test]
    fn the_headroom_leaves_the_allocator_room() {
        let raw = headrooms()
            .into_iter()
            .map(|h| h.bytes)
            .min()
            .expect("Linux has MemAvailable at least");
        let usable = headroom().unwrap().bytes;
        // Read twice, so other processes move MemAvailable in between: compare with a tolerance.
        let expected = raw.saturating_sub(ALLOCATOR_SLACK + raw / 32);
        assert!(
            usable < raw && usable.abs_diff(expected) < 256 << 20,
            "{usable} vs {expected} of {raw}"
        );
    }

    /// A directory under the system's temp dir, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("latte-rs-limits-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn write(&self, rel: &str, text: &str) {
            let path = self.0.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn cgroup_v2_limits_of_the_cgroup_and_its_parents_are_read() {
        let root = Scratch::new("v2");
        // The parent has no limit ("max"), the process's cgroup 1 GiB with 300 MiB in use, 100 MiB of it
        // inactive page cache.
        root.write("user.slice/memory.max", "max\n");
        root.write("user.slice/memory.current", "4000000000\n");
        root.write("user.slice/app.scope/memory.max", &format!("{}\n", 1024 * MIB));
        root.write("user.slice/app.scope/memory.current", &format!("{}\n", 300 * MIB));
        root.write(
            "user.slice/app.scope/memory.stat",
            &format!("anon 1\ninactive_file {}\nactive_file 5\n", 100 * MIB),
        );
        let found = cgroup_headrooms(&root.0, "0::/user.slice/app.scope\n");
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].bytes, 824 * MIB);
        assert!(found[0].limit.contains("cgroup v2") && found[0].limit.contains("app.scope/memory.max"));
        assert!(found[0].limit.contains("1.0 GiB") && found[0].limit.contains("200.0 MiB in use"));

        // A parent's tighter limit binds too; the hybrid layout keeps v2 under unified/.
        let hybrid = Scratch::new("v2-hybrid");
        hybrid.write("unified/a/memory.max", &format!("{}", 64 * MIB));
        hybrid.write("unified/a/memory.current", &format!("{}", 16 * MIB));
        hybrid.write("unified/a/b/memory.max", &format!("{}", 512 * MIB));
        hybrid.write("unified/a/b/memory.current", "0");
        let found = cgroup_headrooms(&hybrid.0, "1:name=systemd:/a/b\n0::/a/b\n");
        let least = found.iter().map(|h| h.bytes).min();
        assert_eq!(least, Some(48 * MIB), "{found:?}");
    }

    #[test]
    fn cgroup_v1_memory_limits_are_read_under_the_memory_controller() {
        let root = Scratch::new("v1");
        root.write("memory/memory.limit_in_bytes", "9223372036854771712\n");
        root.write("memory/memory.usage_in_bytes", &format!("{}", 8192 * MIB));
        root.write("memory/docker/abc/memory.limit_in_bytes", &format!("{}\n", 512 * MIB));
        root.write("memory/docker/abc/memory.usage_in_bytes", &format!("{}\n", 256 * MIB));
        root.write(
            "memory/docker/abc/memory.stat",
            &format!("cache 9\ninactive_file 7\ntotal_inactive_file {}\n", 56 * MIB),
        );
        let proc_cgroup = "12:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n";
        let found = cgroup_headrooms(&root.0, proc_cgroup);
        let tightest = found.iter().min_by_key(|h| h.bytes).unwrap();
        assert_eq!(tightest.bytes, 312 * MIB, "{found:?}");
        assert!(tightest.limit.contains("cgroup v1") && tightest.limit.contains("docker/abc/memory.limit_in_bytes"));

        // In a container the cgroup path does not exist under the mount, whose root is the container's cgroup;
        // the memory controller may share a hierarchy with others.
        let container = Scratch::new("v1-container");
        container.write("memory/memory.limit_in_bytes", &format!("{}", 128 * MIB));
        container.write("memory/memory.usage_in_bytes", &format!("{}", 28 * MIB));
        let found = cgroup_headrooms(&container.0, "7:cpuset,memory:/kubepods/pod1/ctr\n");
        assert_eq!(found.iter().map(|h| h.bytes).collect::<Vec<_>>(), [100 * MIB]);

        // Nothing outside the mount is read, whatever the path says; garbage lines and files are no limit.
        let found = cgroup_headrooms(&container.0, "4:memory:/../../etc\nnonsense\n3:memory:/x\n");
        assert!(found.iter().all(|h| h.bytes == 100 * MIB), "{found:?}");
        container.write("memory/memory.limit_in_bytes", "lots");
        assert!(cgroup_headrooms(&container.0, "4:memory:/\n").is_empty());
        assert!(cgroup_headrooms(Path::new("/nonexistent-cgroup-root"), "0::/\n4:memory:/\n").is_empty());
    }

    #[test]
    fn process_limits_are_read_against_the_address_space_and_data_in_use() {
        let status = "Name:\tpython\nVmPeak:\t 9999 kB\nVmSize:\t 1024 kB\nVmData:\t 256 kB\n";
        let found = rlimit_headrooms(status, Some(4 * MIB), Some(MIB));
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].bytes, 3 * MIB);
        assert!(found[0]
            .limit
            .starts_with("RLIMIT_AS (ulimit -v) of 4.0 MiB with 1.0 MiB"));
        assert_eq!(found[1].bytes, 768 * 1024);
        assert!(found[1].limit.starts_with("RLIMIT_DATA (ulimit -d) of 1.0 MiB"));
        // Usage above the limit leaves nothing; no limit, no headroom.
        assert_eq!(rlimit_headrooms(status, Some(1), None)[0].bytes, 0);
        assert!(rlimit_headrooms(status, None, None).is_empty());
        let meminfo = "MemTotal:  100 kB\nMemAvailable:   2048 kB\n";
        assert_eq!(meminfo_headroom(meminfo).unwrap().bytes, 2 * MIB);
        assert!(meminfo_headroom("MemTotal: 1 kB\n").is_none());
    }

    #[test]
    fn a_refused_buffer_is_a_memory_error_not_an_abort() {
        assert_eq!(try_filled(3, 1.5f32, "x").unwrap(), [1.5, 1.5, 1.5]);
        let e: LatteError = try_filled(usize::MAX / 8, 0f32, "the attention scores")
            .unwrap_err()
            .into();
        assert!(matches!(e, LatteError::Memory(_)), "{e}");
        assert!(e.to_string().contains("the attention scores needs about"), "{e}");
        // Found under the context candle adds on the way out.
        let e: LatteError = try_with_capacity::<f64>(1 << 60, "a buffer")
            .map_err(|e| e.context("while testing"))
            .unwrap_err()
            .into();
        assert!(matches!(e, LatteError::Memory(_)), "{e}");
    }
}
