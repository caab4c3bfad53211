//! File helpers: atomic writes and reads with clear errors.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{LatteError, Result};

/// A hidden sibling name for a temporary copy of `name` (`kind` "tmp" or "old"), unique in this process and
/// across processes: `.{name}.{kind}-{pid}-{n}`. Two saves to one path, from threads or processes, never share one.
pub(crate) fn sibling_name(name: &str, kind: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        ".{name}.{kind}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Whether the process `pid` may still be running (true where this cannot be told: only Linux's /proc is asked).
pub(crate) fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let proc = Path::new("/proc");
    !proc.join("self").exists() || proc.join(pid.to_string()).exists()
}

/// Runs `write` on a temporary file beside `path`, syncs it and renames it over `path`: readers see the old file
/// or the new one, never a partial one.
pub fn write_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(LatteError::NotFound(format!(
            "directory {} (for {})",
            dir.display(),
            path.display()
        )));
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(sibling_name(&name, "tmp"));
    let result = write(&tmp).and_then(|()| {
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Atomically swaps two directory entries (Linux's `renameat2(RENAME_EXCHANGE)`): afterwards `a` names what `b`
/// named and the other way round, with no moment at which either name is missing. `Ok(false)` where the system or
/// file system cannot (the caller falls back to two renames).
pub(crate) fn exchange(a: &Path, b: &Path) -> Result<bool> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes());
        let (Ok(ca), Ok(cb)) = (c(a), c(b)) else {
            return Ok(false);
        };
        // SAFETY: two NUL-terminated paths relative to the working directory; the call reads them only.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                libc::AT_FDCWD,
                ca.as_ptr(),
                libc::AT_FDCWD,
                cb.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        if rc == 0 {
            return Ok(true);
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ENOSYS | libc::EINVAL | libc::EOPNOTSUPP) => Ok(false),
            _ => Err(err.into()),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (a, b);
        Ok(false)
    }
}

/// Opens `path` for reading if it is a regular file. Named pipes, devices (`/dev/zero`) and sockets are refused
/// before anything is read (a pipe is opened without blocking, so a pipe with no writer cannot hang the caller);
/// a missing file is [`LatteError::NotFound`].
pub fn open_regular(path: &Path) -> Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(libc::O_NONBLOCK);
    }
    let file = opts.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => LatteError::NotFound(path.display().to_string()),
        _ => LatteError::Io(e),
    })?;
    let meta = file.metadata()?;
    if meta.is_dir() {
        return Err(LatteError::Value(format!(
            "{}: expected a file, got a directory",
            path.display()
        )));
    }
    if !meta.is_file() {
        return Err(LatteError::Value(format!(
            "{}: expected a regular file, got a named pipe, device or socket",
            path.display()
        )));
    }
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: fcntl on a descriptor this function owns; clears O_NONBLOCK for ordinary reads.
        unsafe {
            let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
            if flags >= 0 {
                libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK);
            }
        }
    }
    Ok(file)
}

/// Reads a whole regular file (see [`open_regular`]) whose size fits in the memory available, and no more than
/// that size even if the file grows meanwhile.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let file = open_regular(path)?;
    let len = file.metadata()?.len();
    crate::limits::ensure_fits(len as u128, &format!("reading {}", path.display()))?;
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(len).read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sibling_names_are_unique_and_name_their_process() {
        let (a, b) = (sibling_name("ckpt", "tmp"), sibling_name("ckpt", "tmp"));
        assert_ne!(a, b);
        let own = format!(".ckpt.tmp-{}-", std::process::id());
        assert!(a.starts_with(&own) && b.starts_with(&own), "{a} {b}");
        assert!(sibling_name("ckpt", "old").starts_with(&format!(".ckpt.old-{}-", std::process::id())));
        // A name says whose a copy is only to a reader; what may be deleted is decided by proof (train::checkpoint).
        assert!(process_alive(std::process::id()));
    }

    #[test]
    fn exchange_swaps_two_directories() {
        let root = std::env::temp_dir().join(sibling_name("latte-exchange-test", "tmp"));
        let (a, b) = (root.join("a"), root.join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(a.join("x"), b"a").unwrap();
        std::fs::write(b.join("x"), b"b").unwrap();
        if exchange(&a, &b).unwrap() {
            assert_eq!(std::fs::read(a.join("x")).unwrap(), b"b");
            assert_eq!(std::fs::read(b.join("x")).unwrap(), b"a");
        }
        #[cfg(target_os = "linux")]
        assert!(
            exchange(&root.join("missing"), &b).is_err(),
            "a missing entry is an error, not a fallback"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
