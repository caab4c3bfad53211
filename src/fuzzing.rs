//! Entry points for fuzzing the file readers: each takes arbitrary bytes, reads them the way a user's file would
//! be read, and must return (an error is fine) without panicking, aborting or hanging.
//!
//! The cargo-fuzz targets in `fuzz/fuzz_targets/` call these under libFuzzer (`cargo +nightly fuzz run
//! model_file`); the tests below run them on stable Rust over seeded mutations of valid files, so every CI run
//! fuzzes a little.

use std::path::Path;

use candle_core::Device;

/// A latte-rs model file (safetensors with the config in its metadata), as `LatteModel.load` reads it.
pub fn model_file(bytes: &[u8]) {
    let _ = crate::LatteModel::from_model_file(bytes, Path::new("fuzz.safetensors"), &Device::Cpu);
}

/// A bare safetensors state dict, as the diffusers folders and `from_checkpoint` read it.
pub fn safetensors(bytes: &[u8]) {
    let _ = candle_core::safetensors::load_buffer(bytes, &Device::Cpu);
    let _ = crate::weights::format::config_metadata(bytes, Path::new("fuzz.safetensors"));
}

/// Config JSON: the Latte config, the text-to-video config, a scheduler config, a diffusion process.
pub fn config_json(bytes: &[u8]) {
    if let Ok(text) = std::str::from_utf8(bytes) {
        let _ = crate::LatteConfig::from_json(text);
        let _ = crate::model::t2v::LatteT2VConfig::from_json(text);
    }
    if let Ok(d) = crate::error::parse_json::<crate::diffusion::GaussianDiffusion>(bytes) {
        let _ = d.validate();
    }
    if let Ok(cfg) = crate::error::parse_json::<crate::diffusion::schedulers::SchedulerConfig>(bytes) {
        let _ = cfg.validate();
    }
}

/// A file on disk in `dir` holding `bytes`, read by `read` (the readers that take paths: PyTorch checkpoints,
/// trainer folders).
fn via_file(dir: &Path, name: &str, bytes: &[u8], read: impl FnOnce(&Path)) {
    let path = dir.join(name);
    if std::fs::write(&path, bytes).is_ok() {
        read(&path);
    }
}

/// A PyTorch zip checkpoint (the official `.pt`), as `from_checkpoint` reads it: the zip, then the pickle.
pub fn torch_checkpoint(bytes: &[u8]) {
    let dir = scratch_dir();
    via_file(&dir, "fuzz.pt", bytes, |p| {
        let _ = crate::weights::read_torch_state_dict(p, true);
    });
}

/// A trainer checkpoint whose manifest is `bytes` (the other files are absent or whatever the manifest names).
pub fn trainer_manifest(bytes: &[u8]) {
    let dir = scratch_dir().join("ckpt");
    let _ = std::fs::create_dir_all(&dir);
    via_file(&dir, crate::weights::format::MANIFEST_FILE, bytes, |_| {
        let _ = crate::train::checkpoint::load(&dir, &Device::Cpu);
        let _ = crate::weights::checkpoint::read_checked(&dir, crate::weights::format::MODEL_FILE);
    });
}

/// A per-thread scratch directory (libFuzzer runs one thread; the tests run several).
fn scratch_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "latte-rs-fuzz-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::create_dir_all(&dir);
    dir
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Generator;

    /// Seeded byte-level mutations of `seed` (bit flips, truncations, insertions, overwritten numbers), `n` of
    /// them, each fed to `target`; a panic fails the test with the case that caused it.
    fn mutate_and_feed(seed: &[u8], n: usize, target: fn(&[u8])) {
        let mut rng = Generator::new(15);
        for case in 0..n {
            let mut b = seed.to_vec();
            let pick = |rng: &mut Generator, m: usize| (rng.uniform(1, 0.0, 1.0)[0] * m as f64) as usize % m.max(1);
            match pick(&mut rng, 4) {
                0 => {
                    for _ in 0..1 + pick(&mut rng, 8) {
                        if !b.is_empty() {
                            let i = pick(&mut rng, b.len());
                            b[i] ^= 1 << pick(&mut rng, 8);
                        }
                    }
                }
                1 => b.truncate(pick(&mut rng, b.len() + 1)),
                2 => {
                    let i = pick(&mut rng, b.len() + 1);
                    let junk: Vec<u8> = (0..pick(&mut rng, 32)).map(|_| pick(&mut rng, 256) as u8).collect();
                    b.splice(i..i, junk);
                }
                _ => {
                    // A large number over the first digits of the header (sizes, offsets, config fields).
                    if let Some(i) = b.iter().take(2048).position(|c| c.is_ascii_digit()) {
                        let big = ["99999999999", "18446744073709551615", "4294967296", "0"][pick(&mut rng, 4)];
                        b.splice(i..i + 1, big.bytes());
                    }
                }
            }
            let result = std::panic::catch_unwind(|| target(&b));
            assert!(result.is_ok(), "case {case}: the target panicked on {} bytes", b.len());
        }
    }

    fn model_bytes() -> Vec<u8> {
        let cfg = crate::LatteConfig {
            depth: 2,
            hidden_size: 16,
            num_heads: 2,
            input_size: 4,
            num_frames: 2,
            ..crate::LatteConfig::preset("Latte-S/2").unwrap()
        };
        let model = crate::LatteModel::new(&cfg, &Device::Cpu, candle_core::DType::F32, 0).unwrap();
        let dir = scratch_dir();
        let path = dir.join("seed.safetensors");
        model.save(&path).unwrap();
        std::fs::read(&path).unwrap()
    }

    #[test]
    fn file_readers_survive_mutated_files() {
        let model = model_bytes();
        mutate_and_feed(&model, 2000, model_file);
        mutate_and_feed(&model, 1000, safetensors);
        let cfg = crate::LatteConfig::preset("Latte-S/2").unwrap().to_json().unwrap();
        mutate_and_feed(cfg.as_bytes(), 2000, config_json);
        let diffusion =
            serde_json::to_vec(&crate::diffusion::GaussianDiffusion::create(&Default::default()).unwrap()).unwrap();
        mutate_and_feed(&diffusion, 500, config_json);
        let manifest =
            br#"{"format":"latte-rs-trainer","version":1,"files":{"model.safetensors":{"bytes":10,"crc32":0}}}"#;
        mutate_and_feed(manifest, 1000, trainer_manifest);
        // A zip with a pickle in it is what torch.save writes; its mutations reach the pickle reader.
        let mut zip_bytes = Vec::new();
        {
            use std::io::Write;
            let mut zip = zip::ZipWriter::new(std::io::Cursor::new(&mut zip_bytes));
            zip.start_file("archive/data.pkl", zip::write::SimpleFileOptions::default())
                .unwrap();
            zip.write_all(b"\x80\x02}q\x00X\x05\x00\x00\x00modelq\x01}q\x02s.")
                .unwrap();
            zip.finish().unwrap();
        }
        mutate_and_feed(&zip_bytes, 2000, torch_checkpoint);
    }
}
