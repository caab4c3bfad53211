//! The TeaCache polynomial a model carries: the coefficients fitted for it (its `teacache.json`) and the range of
//! input changes they were fitted on. It belongs to the model (read with its weights, kept on it), so it lives
//! here, below the caching policy that uses it ([`crate::cache`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{value_error, LatteError, Result};

/// The file beside a model (in its folder, or `<stem>.teacache.json` beside a model file) that carries the
/// coefficients fitted for it.
pub const COEFFICIENTS_FILE: &str = "teacache.json";

/// A rescaling polynomial fitted for a model (what its `teacache.json` holds): the coefficients, highest power
/// first, and the range of input changes it was fitted on. A degree-4 fit swings outside its data (it can turn
/// negative, and a negative estimate would skip every step), so a change outside the range is clamped into it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TeaCacheFit {
    pub coefficients: Vec<f64>,
    #[serde(default)]
    pub input_range: Option<[f64; 2]>,
}

impl TeaCacheFit {
    /// A checked fit; `arg` names where it came from in errors.
    pub fn new(coefficients: Vec<f64>, input_range: Option<[f64; 2]>, arg: &str) -> Result<Self> {
        check_coefficients(&coefficients, arg)?;
        check_range(input_range, arg)?;
        Ok(Self {
            coefficients,
            input_range,
        })
    }

    /// The estimated output change for an input change: the polynomial at the change clamped into the range.
    pub fn rescale(&self, change: f64) -> f64 {
        let x = match self.input_range {
            Some([low, high]) => change.clamp(low, high),
            None => change,
        };
        polyval(&self.coefficients, x)
    }
}

/// Refuses an input range that is not `[low, high]` of finite numbers with low <= high, naming `arg`.
pub fn check_range(range: Option<[f64; 2]>, arg: &str) -> Result<()> {
    match range {
        Some([low, high]) if !(low.is_finite() && high.is_finite() && low <= high) => Err(value_error(
            arg,
            "an input range [low, high] of finite numbers with low <= high",
            format!("[{low}, {high}]"),
        )),
        _ => Ok(()),
    }
}

/// Refuses an empty or non-finite polynomial, naming `arg`.
pub fn check_coefficients(c: &[f64], arg: &str) -> Result<()> {
    if c.is_empty() || c.iter().any(|v| !v.is_finite()) {
        return Err(value_error(
            arg,
            "a non-empty list of finite polynomial coefficients, highest power first",
            format!("{c:?}"),
        ));
    }
    Ok(())
}

/// `numpy.polyval(coefficients, x)`: Horner's rule, highest power first.
pub fn polyval(coefficients: &[f64], x: f64) -> f64 {
    coefficients.iter().fold(0.0, |acc, &c| acc * x + c)
}

/// The `teacache.json` that belongs to a model at `path`: `path/teacache.json` for a folder (or, for a
/// diffusers pipeline folder, `path/transformer/teacache.json`), `<stem>.teacache.json` beside a file.
pub fn coefficients_file(path: &Path) -> Option<PathBuf> {
    let candidates = if path.is_dir() {
        vec![
            path.join(COEFFICIENTS_FILE),
            path.join("transformer").join(COEFFICIENTS_FILE),
        ]
    } else {
        let stem = path.file_stem()?.to_string_lossy().into_owned();
        vec![path.with_file_name(format!("{stem}.{COEFFICIENTS_FILE}"))]
    };
    candidates.into_iter().find(|p| p.is_file())
}

/// The fit carried beside the model at `path` (see [`coefficients_file`]), if any. A file that is there but
/// unreadable is an error naming it, not silently ignored.
pub fn read_fit_beside(path: &Path) -> Result<Option<TeaCacheFit>> {
    let Some(file) = coefficients_file(path) else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(&file)?;
    let name = file.display().to_string();
    let parsed: TeaCacheFit = serde_json::from_str(&text).map_err(|e| {
        LatteError::Value(format!(
            "{name}: {e} (expected {{\"coefficients\": [...], \"input_range\": [low, high]}})"
        ))
    })?;
    Ok(Some(TeaCacheFit::new(parsed.coefficients, parsed.input_range, &name)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polyval_is_numpys_order() {
        assert_eq!(polyval(&[2.0, 3.0, 4.0], 10.0), 234.0);
        assert_eq!(polyval(&[5.0], 3.0), 5.0);
    }

    #[test]
    fn a_fit_is_evaluated_inside_its_range() {
        let fit = TeaCacheFit::new(vec![1.0, 0.0, 0.0], Some([0.2, 0.5]), "fit").unwrap();
        assert_eq!(fit.rescale(0.3), 0.09);
        assert_eq!(fit.rescale(0.0), 0.04000000000000001);
        assert_eq!(fit.rescale(1.0), 0.25);
    }
}
