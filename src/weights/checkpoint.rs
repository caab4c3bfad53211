//! A trainer checkpoint folder read as data: the manifest ([`MANIFEST_FILE`]) lists every file with its size and
//! CRC-32, and each read here is verified against it, so a truncated or corrupted file is named instead of loaded.
//! The names a manifest lists are plain file names inside the folder, never a path that leads elsewhere.
//!
//! This is the one reader of checkpoint folders: opening a model ([`crate::model::open_model`]) and resuming a
//! trainer (`train::checkpoint`, which also writes them) both go through it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::format::MANIFEST_FILE;
use crate::error::{LatteError, Result};

/// The manifest's `format` value.
pub const FORMAT: &str = "latte-rs-trainer";
/// The newest manifest version this build reads and the one it writes.
pub const VERSION: u32 = 1;

/// A listed file's size and checksum.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FileEntry {
    pub bytes: u64,
    pub crc32: u32,
}

impl FileEntry {
    /// The entry of a file holding `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self {
            bytes: bytes.len() as u64,
            crc32: crc32fast::hash(bytes),
        }
    }
}

/// The part of a manifest that makes the folder readable: its format and the files it lists. The trainer's own
/// fields (options, counters, random streams) are read by the trainer through [`CheckpointFolder::manifest`].
#[derive(Deserialize)]
struct Head {
    format: String,
    version: u32,
    files: BTreeMap<String, FileEntry>,
}

/// The error for a checkpoint file that is not what its manifest says.
pub fn corrupt(path: &Path, why: impl std::fmt::Display) -> LatteError {
    LatteError::Value(format!(
        "{}: corrupt or incomplete checkpoint file ({why}); resume from an earlier checkpoint",
        path.display()
    ))
}

/// An opened checkpoint folder: its manifest read and checked, its files read on demand and verified.
pub struct CheckpointFolder {
    dir: PathBuf,
    manifest_path: PathBuf,
    manifest: Vec<u8>,
    files: BTreeMap<String, FileEntry>,
}

impl CheckpointFolder {
    /// Whether `dir` has a manifest (a folder a trainer wrote completely).
    pub fn has_manifest(dir: &Path) -> bool {
        dir.join(MANIFEST_FILE).is_file()
    }

    /// Whether `dir` is a latte-rs trainer checkpoint: its manifest is a JSON object of our format (of any
    /// version, so that a newer build's checkpoint counts too). A file that merely has the manifest's name (another
    /// tool's `trainer.json`) does not make a folder one; this decides what saving may replace.
    pub fn is_checkpoint(dir: &Path) -> bool {
        #[derive(Deserialize)]
        struct Format {
            format: String,
        }
        crate::io::read(&dir.join(MANIFEST_FILE))
            .ok()
            .and_then(|bytes| crate::error::parse_json::<Format>(&bytes).ok())
            .is_some_and(|m| m.format == FORMAT)
    }

    /// Reads and checks the manifest of `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(LatteError::NotFound(format!("checkpoint directory {}", dir.display())));
        }
        let manifest_path = dir.join(MANIFEST_FILE);
        let manifest = crate::io::read(&manifest_path).map_err(|e| match e {
            LatteError::NotFound(p) => LatteError::NotFound(format!("{p} (not a latte-rs trainer checkpoint)")),
            e => e,
        })?;
        let head: Head = crate::error::parse_json(&manifest).map_err(|e| corrupt(&manifest_path, e))?;
        if head.format != FORMAT || head.version > VERSION {
            return Err(corrupt(
                &manifest_path,
                format!(
                    "format {:?} version {}, expected {FORMAT:?} <= {VERSION}",
                    head.format, head.version
                ),
            ));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest_path,
            manifest,
            files: head.files,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The whole manifest as `T` (the trainer's view of it).
    pub fn manifest<T: DeserializeOwned>(&self) -> Result<T> {
        crate::error::parse_json(&self.manifest).map_err(|e| corrupt(&self.manifest_path, e))
    }

    /// Whether the manifest lists `name`.
    pub fn lists(&self, name: &str) -> bool {
        self.files.contains_key(name)
    }

    /// The bytes of the listed file `name`, checked against its recorded size and CRC-32.
    pub fn read(&self, name: &str) -> Result<Vec<u8>> {
        let entry = self
            .files
            .get(name)
            .ok_or_else(|| corrupt(&self.manifest_path, format!("{name} is not listed")))?;
        // A manifest is data: its names must be plain file names inside the checkpoint, never a path that leads
        // elsewhere ("/dev/zero", "../../secret").
        let mut parts = Path::new(name).components();
        let plain = matches!(
            (parts.next(), parts.next()),
            (Some(std::path::Component::Normal(_)), None)
        );
        if !plain {
            return Err(corrupt(
                &self.manifest_path,
                format!("lists {name:?}, which is not a file name inside the checkpoint"),
            ));
        }
        let path = self.dir.join(name);
        let bytes = crate::io::read(&path)?;
        if bytes.len() as u64 != entry.bytes {
            return Err(corrupt(
                &path,
                format!("{} bytes, expected {}", bytes.len(), entry.bytes),
            ));
        }
        let crc = crc32fast::hash(&bytes);
        if crc != entry.crc32 {
            return Err(corrupt(
                &path,
                format!("CRC-32 {crc:08x}, expected {:08x}", entry.crc32),
            ));
        }
        Ok(bytes)
    }

    /// Every listed file, verified (a resume reads them all before trusting any).
    pub fn read_all(&self) -> Result<HashMap<String, Vec<u8>>> {
        self.files
            .keys()
            .map(|name| Ok((name.clone(), self.read(name)?)))
            .collect()
    }
}

/// One file of a checkpoint folder: verified against the manifest when the folder has one, read as it is when it
/// does not (a folder holding a model file alone).
pub fn read_checked(dir: &Path, name: &str) -> Result<Vec<u8>> {
    if !CheckpointFolder::has_manifest(dir) {
        return crate::io::read(&dir.join(name));
    }
    CheckpointFolder::open(dir)?.read(name)
}
