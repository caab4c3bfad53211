//! File helpers: atomic writes and reads with clear errors.

use std::path::{Path, PathBuf};

use crate::error::{LatteError, Result};

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
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
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

/// Reads a whole file, mapping a missing file to [`LatteError::NotFound`].
pub fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => LatteError::NotFound(path.display().to_string()),
        _ => LatteError::Io(e),
    })
}
