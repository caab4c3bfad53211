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
//! What a save may replace: nothing but a latte-rs checkpoint (a folder whose `trainer.json` is our manifest) or an
//! empty folder. Anything else at the path (a file, a link, an experiment folder) is refused with an error naming
//! it, and nothing is deleted.
//!
//! The save protocol: the files are written into a hidden sibling directory `.<name>.tmp-<pid>-<n>` (unique per
//! save, so two saves to one path cannot collide), each synced, the manifest last (a directory with a manifest is
//! complete). An existing checkpoint is then swapped with it in one step (Linux's `renameat2(RENAME_EXCHANGE)`),
//! so there is no moment without a complete checkpoint at the path, and the old one is deleted. Where the file
//! system cannot exchange, the old one is renamed to `.<name>.old-<pid>-<n>` and the new one into place; a crash
//! between the two renames leaves both complete copies as hidden siblings, and [`load`] then resumes from the
//! newer one by itself.
//!
//! What a save may delete: the hidden copies it made itself (it holds their names), and the copies an earlier,
//! crashed save left beside the same checkpoint. Those are told by proof, never by their names alone: every hidden
//! copy a save makes holds a marker file, `.latte-rs-save.json`, written before anything else goes in (into the
//! old checkpoint before it is renamed), which names the checkpoint, the copy's own name, and the process and host
//! that made it. A sibling is a save's leftover only when its marker names that very folder and that checkpoint,
//! and it is removed only when that process is gone from this host. A user's `.ck.backup-1` (or a copy of a
//! leftover under another name) has no such marker and is never touched; a crash between creating a copy's
//! folder and writing its marker can leave one empty folder, which stays. Recovery ([`load`]) reads only marked
//! copies too. The marker travels into the new checkpoint with its files and is deleted once it is in place (a
//! crash in between leaves it naming another folder, so it proves nothing).
//!
//! Loading verifies every file against the manifest's checksum, so a truncated or corrupted file is reported by
//! name instead of resuming from garbage, and checks the values as the weights are checked: optimiser moments, EMA
//! and master weights finite, second moments non-negative, the loss scale usable, the diffusion tables those of
//! its betas.
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

/// What is at the path a save writes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Existing {
    /// Nothing, or an empty folder: a rename puts the new checkpoint there (replacing an empty folder).
    Nothing,
    /// A latte-rs checkpoint, which the save replaces.
    Checkpoint,
}

/// What is at `dir`, or the error for anything a save must not replace.
fn existing(dir: &Path) -> Result<Existing> {
    let meta = match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Existing::Nothing),
        other => other?,
    };
    if !meta.is_dir() {
        return Err(LatteError::Value(format!(
            "path: {} exists and is not a checkpoint directory ({}); refusing to replace it",
            dir.display(),
            if meta.file_type().is_symlink() {
                "a symbolic link: save to the folder it points to"
            } else {
                "a file"
            }
        )));
    }
    if CheckpointFolder::is_checkpoint(dir) {
        return Ok(Existing::Checkpoint);
    }
    if std::fs::read_dir(dir)?.next().is_none() {
        return Ok(Existing::Nothing);
    }
    Err(LatteError::Value(format!(
        "path: {} is a folder that is not a latte-rs checkpoint (no {MANIFEST} of format {FORMAT:?}) and not \
         empty; refusing to replace it, nothing was changed. Save into a new or empty folder, or over a checkpoint",
        dir.display()
    )))
}

/// The marker inside every hidden copy a save makes (see the module docs): what proves that a sibling folder is a
/// save's, and whose.
#[derive(Serialize, Deserialize, PartialEq, Eq, Debug)]
struct SaveMarker {
    /// The checkpoint's folder name.
    checkpoint: String,
    /// The hidden copy's own folder name: a marker found in a folder of another name proves nothing.
    copy: String,
    pid: u32,
    host: String,
}

const SAVE_MARKER: &str = ".latte-rs-save.json";

impl SaveMarker {
    fn new(checkpoint: &str, copy: &str) -> Self {
        Self {
            checkpoint: checkpoint.into(),
            copy: copy.into(),
            pid: std::process::id(),
            host: host_name(),
        }
    }

    /// Writes this marker into `dir` as a new file: whatever has its name there (a stale marker, or a link,
    /// which is not followed) is removed first, so nothing outside `dir` is ever written through it.
    fn write_into(&self, dir: &Path) -> Result<()> {
        use std::io::Write;
        let path = dir.join(SAVE_MARKER);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&path)?;
        f.write_all(&serde_json::to_vec(self)?)?;
        f.sync_all()?;
        Ok(())
    }

    /// Deletes this marker from `dir` where it is there (another's marker, or a file of the same name, stays).
    fn remove_from(&self, dir: &Path) {
        let path = dir.join(SAVE_MARKER);
        let ours = crate::io::read(&path)
            .ok()
            .and_then(|b| crate::error::parse_json::<Self>(&b).ok())
            .is_some_and(|m| m == *self);
        if ours {
            let _ = std::fs::remove_file(path);
        }
    }

    /// The marker of `copy` when it proves `copy` to be a hidden copy of checkpoint `name`: a real folder (not a
    /// link) whose marker names this folder and this checkpoint.
    fn of(copy: &Path, name: &str) -> Option<Self> {
        let own = copy.file_name()?.to_str()?;
        if !std::fs::symlink_metadata(copy).ok()?.is_dir() {
            return None;
        }
        let path = copy.join(SAVE_MARKER);
        // A marker is a few hundred bytes; anything larger is not one (and is not read whole).
        if std::fs::symlink_metadata(&path).ok()?.len() > 4096 {
            return None;
        }
        let marker: Self = crate::error::parse_json(&crate::io::read(&path).ok()?).ok()?;
        (marker.copy == own && marker.checkpoint == name).then_some(marker)
    }

    /// Whether the save that wrote this marker is certainly over: it ran on this host, and its process is gone.
    fn is_dead(&self) -> bool {
        self.host == host_name() && !crate::io::process_alive(self.pid)
    }
}

/// This machine's name (a process id means nothing on another host sharing the folder).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
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
    // Refused before anything is written (and checked again just before the path is replaced).
    existing(dir)?;
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
    let tmp_name = crate::io::sibling_name(&name, "tmp");
    let tmp = parent.join(&tmp_name);
    let placement = Placement {
        dir,
        parent: &parent,
        name: &name,
        tmp: &tmp,
        tmp_name: &tmp_name,
    };
    let mut created = false;
    let mut write_all = || -> Result<()> {
        std::fs::create_dir(&tmp)?;
        created = true;
        SaveMarker::new(&name, &tmp_name).write_into(&tmp)?;
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
            match placement.put_in_place() {
                Err(e) if attempts < 8 && raced(&e) => continue,
                other => break other,
            }
        }?;
        // The marker came along with the files; in the checkpoint it would only name a folder that is gone.
        SaveMarker::new(&name, &tmp_name).remove_from(dir);
        sync_dir(dir);
        sync_dir(&parent);
        Ok(())
    };
    let result = write_all();
    // `tmp` is this save's own name: on failure it holds the partial new copy, or the old checkpoint that was
    // swapped out of the path (which the save was replacing anyway).
    if result.is_err() && created {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    if result.is_ok() {
        remove_dead_saves_copies(&parent, &name);
    }
    result
}

/// The names one save works with: the checkpoint `dir` (`name` in `parent`) and its new copy `tmp` (`tmp_name`).
struct Placement<'a> {
    dir: &'a Path,
    parent: &'a Path,
    name: &'a str,
    tmp: &'a Path,
    tmp_name: &'a str,
}

impl Placement<'_> {
    /// Moves the complete checkpoint `tmp` to `dir`, replacing what is there when that may be replaced (see the
    /// module docs).
    fn put_in_place(&self) -> Result<()> {
        let Self {
            dir,
            parent,
            name,
            tmp,
            tmp_name,
        } = *self;
        if existing(dir)? == Existing::Nothing {
            // Onto nothing or an empty folder; a folder that filled up meanwhile fails the rename (and is seen on
            // the next attempt).
            std::fs::rename(tmp, dir)?;
            return Ok(());
        }
        // Something changed the path after the checks: put back what was there, take our marker out of it, and
        // look again (the next attempt replaces it, or refuses it by name).
        let changed = |marker: &SaveMarker| -> Result<()> {
            marker.remove_from(dir);
            existing(dir)?;
            Err(std::io::Error::from(std::io::ErrorKind::AlreadyExists).into())
        };
        if std::env::var_os("LATTE_RS_TEST_NO_EXCHANGE").is_none() {
            // The old checkpoint will be named `tmp_name`: marked so before, so that a crash after the exchange
            // leaves a copy that proves itself a save's.
            let marker = SaveMarker::new(name, tmp_name);
            marker.write_into(dir)?;
            let exchanged = crate::io::exchange(tmp, dir).inspect_err(|_| marker.remove_from(dir))?;
            if exchanged {
                // `tmp` now names what was at the path: checked again, in case it changed after the check above.
                if !CheckpointFolder::is_checkpoint(tmp) {
                    crate::io::exchange(tmp, dir)?;
                    return changed(&marker);
                }
                sync_dir(parent);
                crash_point("swapped");
                std::fs::remove_dir_all(tmp)?;
                return Ok(());
            }
            marker.remove_from(dir);
        }
        let old_name = crate::io::sibling_name(name, "old");
        let old = parent.join(&old_name);
        let marker = SaveMarker::new(name, &old_name);
        marker.write_into(dir)?;
        std::fs::rename(dir, &old).inspect_err(|_| marker.remove_from(dir))?;
        if !CheckpointFolder::is_checkpoint(&old) {
            std::fs::rename(&old, dir)?;
            return changed(&marker);
        }
        crash_point("moved-old");
        if let Err(e) = std::fs::rename(tmp, dir) {
            // Put the previous checkpoint back rather than leave the path empty.
            if std::fs::rename(&old, dir).is_ok() {
                marker.remove_from(dir);
            }
            return Err(e.into());
        }
        sync_dir(parent);
        crash_point("swapped");
        std::fs::remove_dir_all(&old)?;
        Ok(())
    }
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

/// The hidden copies of checkpoint `name` in `parent` that saves made (interrupted or in progress), each with the
/// marker that proves it (see the module docs).
fn saves_copies(parent: &Path, name: &str) -> Vec<(PathBuf, SaveMarker)> {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    let prefix = format!(".{name}.");
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .filter_map(|e| SaveMarker::of(&e.path(), name).map(|m| (e.path(), m)))
        .collect()
}

/// Removes the copies that crashed saves of checkpoint `name` left in `parent`: only marked ones (see the module
/// docs) whose process is gone from this host (a live process's may be in progress).
fn remove_dead_saves_copies(parent: &Path, name: &str) {
    for (path, marker) in saves_copies(parent, name) {
        if marker.is_dead() {
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
    // Each tensor as the trainer's buffer of `len` values, checked as the weights are: the state is data, and one
    // impossible value (a negative second moment, a NaN) would make every later step's update NaN.
    let get = |map: &HashMap<String, Tensor>, key: &str, file: &str, len: usize, moment: bool| -> Result<Vec<T>> {
        let t = map
            .get(key)
            .ok_or_else(|| corrupt(&path.join(file), format!("missing tensor {key}")))?;
        let values = t.to_dtype(T::DTYPE)?.flatten_all()?.to_vec1::<T>()?;
        if values.len() != len {
            return Err(corrupt(
                &path.join(file),
                format!("tensor {key} has {} values, the model {len}", values.len()),
            ));
        }
        let bad = values.iter().position(|v| {
            let v = v.to_f64();
            !v.is_finite() || (moment && v < 0.0)
        });
        if let Some(i) = bad {
            let what = if moment {
                "a second moment, which is finite and never negative"
            } else {
                "expected a finite value"
            };
            return Err(corrupt(
                &path.join(file),
                format!("tensor {key} holds {} at index {i}; {what}", values[i].to_f64()),
            ));
        }
        Ok(values)
    };
    for (i, name) in trainer_names.iter().enumerate() {
        let len = b.m[i].len();
        b.m[i] = get(opt, &format!("m/{name}"), OPTIMIZER_FILE, len, false)?;
        b.v[i] = get(opt, &format!("v/{name}"), OPTIMIZER_FILE, len, true)?;
        b.ema[i] = get(ema, name, EMA_FILE, len, false)?;
        if let Some(master) = &mut b.master {
            master[i] = get(opt, &format!("master/{name}"), OPTIMIZER_FILE, len, false)?;
        }
    }
    Ok(())
}

/// Checks a loaded loss scale: present exactly for float16 models (the only ones trained with one), a usable
/// positive factor whose reciprocal unscales the gradients, and a clean-step count below the growth interval.
fn check_loss_scale(scale: &Option<LossScale>, model: candle_core::DType, manifest: &Path) -> Result<()> {
    let f16 = model == candle_core::DType::F16;
    match scale {
        None if f16 => Err(corrupt(
            manifest,
            "loss_scale: expected the dynamic loss scale of a float16 model, got none",
        )),
        Some(_) if !f16 => Err(corrupt(
            manifest,
            format!("loss_scale: a {model:?} model trains without loss scaling, got one"),
        )),
        Some(s) if !(s.scale.is_finite() && s.scale > 0.0 && (1.0 / s.scale).is_finite()) => Err(corrupt(
            manifest,
            format!(
                "loss_scale: expected a finite scale > 0 with a finite reciprocal, got {}",
                s.scale
            ),
        )),
        Some(s) if s.clean_steps >= super::trainer::GROWTH_INTERVAL => Err(corrupt(
            manifest,
            format!(
                "loss_scale.clean_steps: expected fewer than {} (the scale grows and the count restarts there), \
                 got {}",
                super::trainer::GROWTH_INTERVAL,
                s.clean_steps
            ),
        )),
        _ => Ok(()),
    }
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
    for (path, _) in saves_copies(parent, &name.to_string_lossy()) {
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
    check_loss_scale(&manifest.loss_scale, trainer.model.dtype(), &manifest_path)?;
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
