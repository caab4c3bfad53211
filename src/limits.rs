//! Sizes checked before anything is allocated.
//!
//! Rust aborts the process when an allocation fails, and Linux's OOM killer ends it when an allocation succeeds
//! but the memory is then touched. Neither reaches the caller as an error, so every size that a user, a config or
//! a file controls goes through these checks first: a size that cannot be meant (its element count overflows, or
//! it exceeds [`MAX_ELEMENTS`]) is a [`LatteError::Value`] naming the argument, and a workload whose estimate is
//! more than the memory this process can still get is a [`LatteError::Memory`] with the estimate.

use crate::error::{LatteError, Result};

/// The most elements one tensor may have (2^40, 4 TiB of f32): beyond any machine, so a larger count is a typo or
/// an attack, not a workload.
pub const MAX_ELEMENTS: u128 = 1 << 40;

/// Bytes this process can still allocate: the smaller of the kernel's `MemAvailable` and the headroom left under
/// the cgroup's memory limit (containers, CI runners). Where neither can be read, no limit (`u64::MAX`).
pub fn available_bytes() -> u64 {
    let mut avail = u64::MAX;
    if let Ok(text) = std::fs::read_to_string("/proc/meminfo") {
        if let Some(kib) = text
            .lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            avail = kib.saturating_mul(1024);
        }
    }
    let read_u64 = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    if let (Some(max), Some(cur)) = (
        read_u64("/sys/fs/cgroup/memory.max"),
        read_u64("/sys/fs/cgroup/memory.current"),
    ) {
        avail = avail.min(max.saturating_sub(cur));
    }
    avail
}

/// Bytes as a short human-readable figure ("3.2 GiB").
pub fn human(bytes: u128) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

/// `Err(Memory)` when `bytes` (an estimate of what `what` allocates) is more than [`available_bytes`].
pub fn ensure_fits(bytes: u128, what: &str) -> Result<()> {
    let avail = available_bytes();
    if bytes > avail as u128 {
        return Err(LatteError::Memory(format!(
            "{what} needs about {} of memory, but only {} is available",
            human(bytes),
            human(avail as u128)
        )));
    }
    Ok(())
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
        assert!(sizes(&[("a", 1, 1, 4), ("b", 4, 0, 4)]).is_ok());
        let low = sizes(&[("a", 0, 1, 4)]).unwrap_err().to_string();
        let high = sizes(&[("a", 1, 1, 4), ("b", 5, 0, 4)]).unwrap_err().to_string();
        assert!(low.contains("a must be at least 1, got 0") && high.contains("b must be at most 4, got 5"));
    }
}
