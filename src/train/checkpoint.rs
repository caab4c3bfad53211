//! Trainer checkpoints: one directory per checkpoint, written whole or not at all.
//!
//! ```text
//! <dir>/model.safetensors      the weights, readable by LatteModel::load (config in the metadata)
//! <dir>/ema.safetensors        the EMA weights, same format
//! <dir>/optimizer.safetensors  AdamW moments `m/<name>`, `v/<name>` (and f32 master weights `master/<name>`)
//! <dir>/diffusion.json         the diffusion process (its f64 tables, exactly)
//! <dir>/null_caption.safetensors  text models: the null caption of caption dropout (when set)
//! <dir>/trainer.json           options, step counters, RNG position, loss scale, and a CRC-32 of every file
//! ```
//!
//! The save protocol: the files are written into a hidden sibling directory `.<name>.tmp-<pid>-<n>` (unique per
//! save, so two saves to one path cannot collide), each synced, the manifest last (a directory with a manifest is
//! complete). An existing checkpoint is then swapped with it in one step (Linux's `renameat2(RENAME_EXCHANGE)`),
//! so there is no moment without a complete checkpoint at the path, and the old one is deleted. Where the file
//! system cannot exchange, the old one is renamed to `.<name>.old-<pid>-<n>` and the new one into place; a crash
//! between the two renames leaves both complete copies as hidden siblings, and [`load`] then resumes from the
//! newer one by itself. After a successful save, siblings left by dead processes' interrupted saves are removed.
//!
//! Loading verifies every file against the manifest's checksum, so a truncated or corrupted file is reported by
//! name instead of resuming from garbage.
//!
//! Fault injection for the tests: `LATTE_RS_TEST_CRASH_AT` = `files`, `manifest`, `moved-old` or `swapped`
//! aborts the process at that point of the protocol; `LATTE_RS_TEST_NO_EXCHANGE=1` takes the two-rename path.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::host_state::Buffers;
use super::trainer::State;
use super::{LossScale, Trainer, TrainerOptions};
use crate::diffusion::GaussianDiffusion;
use crate::error::{LatteError, Result};
use crate::float::Float;
use crate::model::AnyModel;
use crate::rng::{Generator, GeneratorState};
use crate::weights::checkpoint::{corrupt, CheckpointFolder, FileEntry, FORMAT, VERSION};
use crate::weights::format::{
    safetensors_bytes, DIFFUSION_FILE, EMA_FILE, MANIFEST_FILE as MANIFEST, MODEL_FILE, NULL_CAPTION_FILE,
    OPTIMIZER_FILE,
};

#[derive(Serialize, Deserialize)]
struct Manifest {
    format: String,
    version: u32,
    step: u64,
    skipped_steps: u64,
    loss_scale: Option<LossScale>,
    rng: GeneratorState,
    /// The random streams of all processes of a data-parallel run, by rank (empty for one process).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    rank_rngs: Vec<GeneratorState>,
    options: TrainerOptions,
    files: BTreeMap<String, FileEntry>,
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

fn sync_dir(dir: &Path) {
    // Persists the directory entries (renames); not supported everywhere, and only a durability refinement.
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

fn buffers_state<T: Float>(b: &Buffers<T>, trainer: &Trainer) -> Result<BTreeMap<String, Tensor>> {
    let mut out = BTreeMap::new();
    for (i, (name, var)) in trainer.names.iter().zip(&trainer.vars).enumerate() {
        let t = |v: &Vec<T>| Tensor::from_slice(v, var.shape(), &Device::Cpu);
        out.insert(format!("m/{name}"), t(&b.m[i])?);
        out.insert(format!("v/{name}"), t(&b.v[i])?);
        if let Some(master) = &b.master {
            out.insert(format!("master/{name}"), t(&master[i])?);
        }
    }
    Ok(out)
}

/// Writes `trainer` to the checkpoint directory `dir` atomically (see the module docs).
pub fn save(trainer: &Trainer, dir: &Path, rank_rngs: &[GeneratorState]) -> Result<()> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| LatteError::Value(format!("path: expected a directory name, got {}", dir.display())))?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)?;
    if dir.exists() && !dir.is_dir() {
        return Err(LatteError::Value(format!(
            "path: {} exists and is not a checkpoint directory; refusing to replace it",
            dir.display()
        )));
    }
    let mut files: Vec<(&str, Vec<u8>)> = vec![
        (MODEL_FILE, trainer.model.model_file_bytes(&trainer.model.state_dict())?),
        (EMA_FILE, trainer.model.model_file_bytes(&trainer.ema_state_dict()?)?),
    ];
    if let Some(null) = &trainer.null_caption {
        let state = BTreeMap::from([("null_caption".to_string(), null.to_device(&Device::Cpu)?)]);
        files.push((NULL_CAPTION_FILE, safetensors_bytes(&state, None)?));
    }
    let opt = match &trainer.state {
        State::F32(b) => buffers_state(b, trainer)?,
        State::F64(b) => buffers_state(b, trainer)?,
        State::Device(b) if b.dtype == candle_core::DType::F64 => buffers_state(&b.to_host::<f64>()?, trainer)?,
        State::Device(b) => buffers_state(&b.to_host::<f32>()?, trainer)?,
    };
    files.push((OPTIMIZER_FILE, safetensors_bytes(&opt, None)?));
    files.push((DIFFUSION_FILE, serde_json::to_vec(&trainer.diffusion)?));
    let manifest = Manifest {
        format: FORMAT.into(),
        version: VERSION,
        step: trainer.step,
        skipped_steps: trainer.skipped_steps,
        loss_scale: trainer.loss_scale.clone(),
        rng: trainer.rng.state(),
        rank_rngs: rank_rngs.to_vec(),
        options: trainer.opts.clone(),
        files: files.iter().map(|(n, b)| (n.to_string(), FileEntry::of(b))).collect(),
    };
    let tmp = parent.join(crate::io::sibling_name(&name, "tmp"));
    let write_all = || -> Result<()> {
        std::fs::create_dir(&tmp)?;
        for (n, bytes) in &files {
            write_synced(&tmp.join(n), bytes)?;
        }
        crash_point("files");
        // The manifest last: a directory with a manifest is complete.
        write_synced(&tmp.join(MANIFEST), &serde_json::to_vec_pretty(&manifest)?)?;
        sync_dir(&tmp);
        crash_point("manifest");
        // Another save to the same path (a thread, a process) may create or replace `dir` between the checks and
        // the renames below; each attempt that loses such a race sees the new state and tries again.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match put_in_place(&tmp, dir, &parent, &name) {
                Err(e) if attempts < 8 && raced(&e) => continue,
                other => break other,
            }
        }?;
        sync_dir(&parent);
        Ok(())
    };
    let result = write_all();
    if result.is_err() && tmp.exists() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    if result.is_ok() {
        remove_stale_siblings(&parent, &name);
    }
    result
}

/// Moves the complete checkpoint `tmp` to `dir`, replacing what is there (see the module docs).
fn put_in_place(tmp: &Path, dir: &Path, parent: &Path, name: &str) -> Result<()> {
    if !dir.exists() {
        std::fs::rename(tmp, dir)?;
    } else if std::env::var_os("LATTE_RS_TEST_NO_EXCHANGE").is_none() && crate::io::exchange(tmp, dir)? {
        // `tmp` now names the previous checkpoint.
        sync_dir(parent);
        crash_point("swapped");
        std::fs::remove_dir_all(tmp)?;
    } else {
        let old = parent.join(crate::io::sibling_name(name, "old"));
        std::fs::rename(dir, &old)?;
        crash_point("moved-old");
        if let Err(e) = std::fs::rename(tmp, dir) {
            // Put the previous checkpoint back rather than leave the path empty.
            let _ = std::fs::rename(&old, dir);
            return Err(e.into());
        }
        sync_dir(parent);
        crash_point("swapped");
        std::fs::remove_dir_all(&old)?;
    }
    Ok(())
}

/// Whether a rename failed because another save changed the path meanwhile (it appeared, or went away).
fn raced(e: &LatteError) -> bool {
    match e {
        LatteError::Io(e) => {
            use std::io::ErrorKind::*;
            matches!(e.kind(), NotFound | AlreadyExists | DirectoryNotEmpty)
        }
        _ => false,
    }
}

/// Aborts the process here when the tests ask for it (see the module docs).
fn crash_point(point: &str) {
    if std::env::var_os("LATTE_RS_TEST_CRASH_AT").is_some_and(|p| p == point) {
        std::process::abort();
    }
}

/// The hidden copies of checkpoint `name` in `parent` (interrupted or in-progress saves), with their pids.
fn siblings(parent: &Path, name: &str) -> Vec<(PathBuf, u32)> {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            crate::io::sibling_pid(&file, name).map(|pid| (e.path(), pid))
        })
        .collect()
}

/// Removes what interrupted saves of dead processes left beside checkpoint `name` (a finished save's own are
/// gone already; a live process's may be in progress).
fn remove_stale_siblings(parent: &Path, name: &str) {
    for (path, pid) in siblings(parent, name) {
        if !crate::io::process_alive(pid) {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

fn restore<T: Float>(
    b: &mut Buffers<T>,
    trainer_names: &[String],
    opt: &HashMap<String, Tensor>,
    ema: &HashMap<String, Tensor>,
    path: &Path,
) -> Result<()> {
    let get = |map: &HashMap<String, Tensor>, key: &str, file: &str| -> Result<Vec<T>> {
        let t = map
            .get(key)
            .ok_or_else(|| corrupt(&path.join(file), format!("missing tensor {key}")))?;
        Ok(t.to_dtype(T::DTYPE)?.flatten_all()?.to_vec1::<T>()?)
    };
    for (i, name) in trainer_names.iter().enumerate() {
        let check = |v: Vec<T>, len: usize, key: &str, file: &str| -> Result<Vec<T>> {
            if v.len() != len {
                return Err(corrupt(
                    &path.join(file),
                    format!("{key} has {} values, the model {len}", v.len()),
                ));
            }
            Ok(v)
        };
        let len = b.m[i].len();
        b.m[i] = check(
            get(opt, &format!("m/{name}"), OPTIMIZER_FILE)?,
            len,
            name,
            OPTIMIZER_FILE,
        )?;
        b.v[i] = check(
            get(opt, &format!("v/{name}"), OPTIMIZER_FILE)?,
            len,
            name,
            OPTIMIZER_FILE,
        )?;
        b.ema[i] = check(get(ema, name, EMA_FILE)?, len, name, EMA_FILE)?;
        if let Some(master) = &mut b.master {
            master[i] = check(
                get(opt, &format!("master/{name}"), OPTIMIZER_FILE)?,
                len,
                name,
                OPTIMIZER_FILE,
            )?;
        }
    }
    Ok(())
}

/// Reads a checkpoint written by [`save`] and returns the trainer exactly as it was. Where `dir` holds no
/// complete checkpoint because a save was interrupted between its renames, the newest complete hidden copy a
/// save left beside it is read instead (verified as fully).
pub fn load(dir: &Path, device: &Device) -> Result<Trainer> {
    match load_dir(dir, device) {
        Err(e) if !dir.join(MANIFEST).is_file() => recover(dir, device)?.ok_or(e),
        other => other,
    }
}

/// The trainer of the newest complete, verified copy an interrupted save left beside `dir`, if any.
fn recover(dir: &Path, device: &Device) -> Result<Option<Trainer>> {
    let (Some(name), Some(parent)) = (dir.file_name(), dir.parent()) else {
        return Ok(None);
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let mut best: Option<Trainer> = None;
    for (path, _) in siblings(parent, &name.to_string_lossy()) {
        if !path.join(MANIFEST).is_file() {
            continue;
        }
        if let Ok(t) = load_dir(&path, device) {
            if best.as_ref().is_none_or(|b| t.step > b.step) {
                best = Some(t);
            }
        }
    }
    Ok(best)
}

fn load_dir(dir: &Path, device: &Device) -> Result<Trainer> {
    let folder = CheckpointFolder::open(dir)?;
    let manifest: Manifest = folder.manifest()?;
    let manifest_path = dir.join(MANIFEST);
    let contents = folder.read_all()?;
    let file = |name: &str| -> Result<&Vec<u8>> {
        contents
            .get(name)
            .ok_or_else(|| corrupt(&manifest_path, format!("{name} is not listed")))
    };
    let model = AnyModel::from_model_file(file(MODEL_FILE)?, &dir.join(MODEL_FILE), device)?;
    let diffusion =
        GaussianDiffusion::from_json(file(DIFFUSION_FILE)?).map_err(|e| corrupt(&dir.join(DIFFUSION_FILE), e))?;
    let opt = candle_core::safetensors::load_buffer(file(OPTIMIZER_FILE)?, &Device::Cpu)?;
    let ema = candle_core::safetensors::load_buffer(file(EMA_FILE)?, &Device::Cpu)?;
    let mut trainer = Trainer::new(model, &diffusion, manifest.options)?;
    if let Ok(bytes) = file(NULL_CAPTION_FILE) {
        let path = dir.join(NULL_CAPTION_FILE);
        let state = candle_core::safetensors::load_buffer(bytes, &Device::Cpu).map_err(|e| corrupt(&path, e))?;
        let null = state
            .get("null_caption")
            .ok_or_else(|| corrupt(&path, "missing tensor null_caption"))?;
        trainer.set_null_caption(null, None).map_err(|e| corrupt(&path, e))?;
    }
    let names = trainer.names.clone();
    match &mut trainer.state {
        State::F32(b) => restore(b, &names, &opt, &ema, dir)?,
        State::F64(b) => restore(b, &names, &opt, &ema, dir)?,
        State::Device(b) if b.dtype == candle_core::DType::F64 => {
            let mut host = b.to_host::<f64>()?;
            restore(&mut host, &names, &opt, &ema, dir)?;
            b.load_host(&host)?;
        }
        State::Device(b) => {
            let mut host = b.to_host::<f32>()?;
            restore(&mut host, &names, &opt, &ema, dir)?;
            b.load_host(&host)?;
        }
    }
    trainer.rng = Generator::from_state(&manifest.rng)?;
    for state in &manifest.rank_rngs {
        Generator::from_state(state).map_err(|e| corrupt(&manifest_path, e))?;
    }
    trainer.rank_rngs = manifest.rank_rngs;
    trainer.step = manifest.step;
    trainer.skipped_steps = manifest.skipped_steps;
    trainer.loss_scale = manifest.loss_scale;
    Ok(trainer)
}

impl Trainer {
    /// Writes a resumable checkpoint directory atomically; see [`save`].
    pub fn save(&self, dir: &Path) -> Result<()> {
        save(self, dir, &[])
    }

    /// [`Trainer::save`] from the first process of a data-parallel run, recording every process's random stream
    /// (by rank) so that a resume with the same number of processes continues each of them exactly.
    pub fn save_with_ranks(&self, dir: &Path, rank_rngs: &[GeneratorState]) -> Result<()> {
        save(self, dir, rank_rngs)
    }

    /// The trainer saved in `dir`, ready to continue exactly where it stopped.
    pub fn resume(dir: &Path, device: &Device) -> Result<Self> {
        load(dir, device)
    }
}
