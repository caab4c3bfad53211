//! Hub ids wherever a path is accepted: every path-taking binding hands its path to `latte_rs.hub.resolve` (the
//! package's one home for that policy: local paths win, `org/name` ids go through `huggingface_hub` and its cache)
//! and opens the local path it gets back. The core only ever sees local paths.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Where a loader's file or folder is: `path` (a local path or a Hub id `org/name[/path/in/repo]`) and the Hub
/// arguments every loader accepts beside it.
pub(crate) struct Location<'a> {
    pub path: PathBuf,
    pub subfolder: Option<&'a str>,
    pub revision: Option<&'a str>,
    pub filename: Option<&'a str>,
}

impl<'a> Location<'a> {
    /// A folder (`from_pretrained`): no file name.
    pub fn folder(path: PathBuf, subfolder: Option<&'a str>, revision: Option<&'a str>) -> Self {
        Self {
            path,
            subfolder,
            revision,
            filename: None,
        }
    }

    /// The local path, through `latte_rs.hub.resolve`; `arg` names the argument in its errors.
    pub fn resolve(&self, py: Python<'_>, arg: &str) -> PyResult<PathBuf> {
        let kwargs = PyDict::new(py);
        kwargs.set_item("subfolder", self.subfolder)?;
        kwargs.set_item("revision", self.revision)?;
        kwargs.set_item("filename", self.filename)?;
        kwargs.set_item("arg", arg)?;
        py.import("latte_rs.hub")?
            .getattr("resolve")?
            .call((&self.path,), Some(&kwargs))?
            .extract()
    }
}
