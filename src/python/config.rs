//! `LatteConfig` and `LatteT2VConfig` as Python classes: one mechanism for both. A config is immutable; keyword
//! arguments are checked one by one so an error names the key; fields read as attributes or, as diffusers'
//! config objects, as items (`cfg.video_length`, `cfg["video_length"]`, `dict(cfg)`), and a config equals a dict
//! of its fields; `replace` makes a changed copy; `to_dict`/`from_dict` and `to_json`/`from_json` round-trip;
//! configs pickle.

use pyo3::exceptions::{PyAttributeError, PyKeyError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use super::convert::{dict_to_json, from_json, to_json};
use super::IntoPy;
use crate::config::{latent_size, LatteConfig};
use crate::model::LatteT2VConfig;

/// What the shared methods need of a core config.
pub(crate) trait Config: Serialize + DeserializeOwned + Clone {
    /// The Python class name, for messages.
    const NAME: &'static str;
    /// Keyword arguments that are not fields but set some (LatteConfig's `image_size`), as (name, meaning).
    const ALIASES: &'static [(&'static str, &'static str)] = &[];

    fn validate(&self) -> crate::Result<()>;

    /// Applies the alias `key` to the fields in `value`; false when `key` is no alias.
    fn apply_alias(_key: &str, _arg: &Bound<'_, PyAny>, _value: &mut Value) -> PyResult<bool> {
        Ok(false)
    }
}

impl Config for LatteConfig {
    const NAME: &'static str = "LatteConfig";
    const ALIASES: &'static [(&'static str, &'static str)] =
        &[("image_size", "pixels; sets input_size = image_size / 8")];

    fn validate(&self) -> crate::Result<()> {
        LatteConfig::validate(self)
    }

    fn apply_alias(key: &str, arg: &Bound<'_, PyAny>, value: &mut Value) -> PyResult<bool> {
        if key != "image_size" {
            return Ok(false);
        }
        let size: usize = arg
            .extract()
            .map_err(|_| PyTypeError::new_err("image_size: expected an int"))?;
        value["input_size"] = Value::from(latent_size(size).py()?);
        Ok(true)
    }
}

impl Config for LatteT2VConfig {
    const NAME: &'static str = "LatteT2VConfig";

    fn validate(&self) -> crate::Result<()> {
        LatteT2VConfig::validate(self)
    }
}

fn fields<C: Config>(cfg: &C) -> PyResult<Map<String, Value>> {
    match serde_json::to_value(cfg).py()? {
        Value::Object(m) => Ok(m),
        _ => Err(PyValueError::new_err(format!("{}: not a JSON object", C::NAME))),
    }
}

/// `base` with keyword overrides, each key checked on its own so an error names the argument; then validated.
pub(crate) fn with_overrides<C: Config>(base: &C, kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<C> {
    let mut value = Value::Object(fields(base)?);
    let names: Vec<String> = fields(base)?.keys().cloned().collect();
    for (k, v) in kwargs.into_iter().flat_map(|d| d.iter()) {
        let key: String = k.extract()?;
        if C::apply_alias(&key, &v, &mut value)? {
            continue;
        }
        if !names.contains(&key) {
            let aliases: Vec<&str> = C::ALIASES.iter().map(|(a, _)| *a).collect();
            return Err(PyTypeError::new_err(format!(
                "{} got an unexpected keyword argument '{key}'; valid: {}",
                C::NAME,
                aliases
                    .into_iter()
                    .map(String::from)
                    .chain(names.iter().cloned())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let mut trial = value.clone();
        trial[&key] = to_json(&v, &key)?;
        if let Err(e) = crate::error::from_json_value::<C>(trial.clone()) {
            // The path already names the key when the value is the problem.
            let msg = if e.starts_with(&format!("{key}:")) {
                e
            } else {
                format!("{key}: {e}")
            };
            return Err(PyValueError::new_err(msg));
        }
        value = trial;
    }
    let cfg: C = serde_json::from_value(value).py()?;
    cfg.validate().py()?;
    Ok(cfg)
}

/// Generates a config class's Python methods (shared by every config) plus the class's own `$extra` methods.
macro_rules! config_class {
    ($py:ident, $core:ty, { $($extra:tt)* }) => {
        #[pymethods]
        impl $py {
            #[new]
            #[pyo3(signature = (**kwargs))]
            fn new(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
                crate::python::guard(move || Ok(Self { inner: with_overrides(&<$core>::default(), kwargs)? }))
            }

            /// A copy with some fields changed.
            #[pyo3(signature = (**kwargs))]
            fn replace(&self, kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
                crate::python::guard(move || Ok(Self { inner: with_overrides(&self.inner, kwargs)? }))
            }

            fn to_json(&self) -> PyResult<String> {
                crate::python::guard(move || serde_json::to_string(&self.inner).py())
            }

            /// Parses JSON (unknown keys are ignored, missing ones take the defaults) and validates it.
            #[staticmethod]
            fn from_json(s: &str) -> PyResult<Self> {
                crate::python::guard(move || {
                    let inner: $core = crate::error::parse_json_object(s.as_bytes())
                        .map_err(|e| PyValueError::new_err(format!("{}: {e}", <$core as Config>::NAME)))?;
                    inner.validate().py()?;
                    Ok(Self { inner })
                })
            }

            fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
                crate::python::guard(move || from_json(py, &Value::Object(fields(&self.inner)?)))
            }

            /// The config of a dict of fields (unknown keys are refused, missing ones take the defaults).
            #[staticmethod]
            fn from_dict(d: &Bound<'_, PyDict>) -> PyResult<Self> {
                crate::python::guard(move || Self::new(Some(d)))
            }

            fn __getattr__<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
                crate::python::guard(move || match fields(&self.inner)?.get(name) {
                    Some(v) => from_json(py, v),
                    None => Err(PyAttributeError::new_err(format!(
                        "{} has no attribute {name:?}",
                        <$core as Config>::NAME
                    ))),
                })
            }

            fn __getitem__<'py>(&self, py: Python<'py>, key: &str) -> PyResult<Bound<'py, PyAny>> {
                crate::python::guard(move || match fields(&self.inner)?.get(key) {
                    Some(v) => from_json(py, v),
                    None => Err(PyKeyError::new_err(key.to_string())),
                })
            }

            fn __contains__(&self, key: &str) -> PyResult<bool> {
                Ok(fields(&self.inner)?.contains_key(key))
            }

            /// The field names (a config reads as a mapping: `dict(cfg)`, `{**cfg}`).
            fn keys(&self) -> PyResult<Vec<String>> {
                Ok(fields(&self.inner)?.keys().cloned().collect())
            }

            fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
                Ok(self.keys()?.into_pyobject(py)?.into_any().try_iter()?.into_any())
            }

            fn __len__(&self) -> PyResult<usize> {
                Ok(fields(&self.inner)?.len())
            }

            /// Equal to a config with the same fields and, as diffusers' config objects, to a dict of them.
            fn __eq__(&self, other: &Bound<'_, PyAny>) -> PyResult<bool> {
                if let Ok(o) = other.extract::<PyRef<Self>>() {
                    return Ok(self.inner == o.inner);
                }
                if other.is_instance_of::<PyDict>() {
                    return self.to_dict(other.py())?.eq(other);
                }
                Ok(false)
            }

            fn __repr__(&self) -> String {
                let body = fields(&self.inner)
                    .map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", "))
                    .unwrap_or_default();
                format!("{}({body})", <$core as Config>::NAME)
            }

            fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<(Bound<'py, PyAny>, (String,))> {
                crate::python::guard(move || {
                    let cls = py.get_type::<Self>().getattr("from_json")?;
                    Ok((cls, (self.to_json()?,)))
                })
            }

            $($extra)*
        }
    };
}

/// Every option of a Latte model (see the docs' options table). Immutable; `replace` makes a changed copy.
#[pyclass(name = "LatteConfig", module = "latte_rs", frozen)]
#[derive(Clone, PartialEq)]
pub struct PyLatteConfig {
    pub inner: LatteConfig,
}

config_class!(PyLatteConfig, LatteConfig, {
    /// A preset by name ("Latte-S/2" ... "Latte-XL/8") with keyword overrides; `image_size` (pixels) sets
    /// `input_size` = image_size / 8.
    #[staticmethod]
    #[pyo3(signature = (name, **kwargs))]
    fn preset(name: &str, kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        crate::python::guard(move || {
            Ok(Self {
                inner: with_overrides(&LatteConfig::preset(name).py()?, kwargs)?,
            })
        })
    }

    #[staticmethod]
    fn preset_names() -> Vec<String> {
        LatteConfig::preset_names()
    }

    /// Parameter count (`trainable_only`: without the fixed sin-cos tables), without allocating the model.
    #[pyo3(signature = (trainable_only = true))]
    fn num_parameters(&self, trainable_only: bool) -> PyResult<usize> {
        crate::python::guard(move || self.inner.num_parameters(trainable_only).py())
    }

    #[getter]
    fn out_channels(&self) -> usize {
        self.inner.out_channels()
    }

    fn __dir__(&self) -> Vec<String> {
        let mut names = self.keys().unwrap_or_default();
        names.extend(
            [
                "preset",
                "preset_names",
                "replace",
                "to_json",
                "from_json",
                "to_dict",
                "from_dict",
                "keys",
                "num_parameters",
                "out_channels",
            ]
            .map(String::from),
        );
        names
    }
});

/// The text-to-video transformer's config: diffusers' `LatteTransformer3DModel` `config.json` keys, Latte-1's
/// values by default. Immutable; `replace` makes a changed copy.
#[pyclass(name = "LatteT2VConfig", module = "latte_rs", frozen)]
#[derive(Clone, PartialEq)]
pub struct PyLatteT2VConfig {
    pub inner: LatteT2VConfig,
}

config_class!(PyLatteT2VConfig, LatteT2VConfig, {
    /// Reads a diffusers `config.json` (or the `transformer/` folder holding it); keys it does not know
    /// (`_class_name`, `_diffusers_version`) are ignored. `path` may be a Hugging Face Hub id (`org/name`, with
    /// `subfolder` and `revision`; only its `config.json` is fetched).
    #[staticmethod]
    #[pyo3(signature = (path, *, subfolder = None, revision = None))]
    fn from_pretrained(
        py: Python<'_>,
        path: std::path::PathBuf,
        subfolder: Option<&str>,
        revision: Option<&str>,
    ) -> PyResult<Self> {
        crate::python::guard(move || {
            // A folder (or an id, which names one) holds the file; a path to a file names it.
            let names_file = path.is_file() || path.extension().is_some_and(|e| e == "json");
            let file = super::hub::Location {
                path,
                subfolder,
                revision,
                filename: (!names_file).then_some("config.json"),
            }
            .resolve(py, "path")?;
            let inner: LatteT2VConfig = crate::weights::diffusers::read_config(&file).py()?;
            inner
                .validate()
                .map_err(|e| PyValueError::new_err(format!("{}: {e}", file.display())))?;
            Ok(Self { inner })
        })
    }

    #[getter]
    fn inner_dim(&self) -> usize {
        self.inner.inner_dim()
    }

    fn __dir__(&self) -> Vec<String> {
        let mut names = self.keys().unwrap_or_default();
        names.extend(
            [
                "replace",
                "to_json",
                "from_json",
                "to_dict",
                "from_dict",
                "from_pretrained",
                "keys",
                "inner_dim",
            ]
            .map(String::from),
        );
        names
    }
});

/// A text-to-video config argument: a `LatteT2VConfig`, a dict of diffusers keys (missing ones: Latte-1's), or
/// None (Latte-1).
pub(crate) fn t2v_config_arg(obj: Option<&Bound<'_, PyAny>>) -> PyResult<LatteT2VConfig> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok(LatteT2VConfig::default());
    };
    if let Ok(c) = obj.extract::<PyRef<PyLatteT2VConfig>>() {
        return Ok(c.inner.clone());
    }
    match obj.cast::<PyDict>() {
        // As a config.json: keys the transformer does not use (`_class_name`, diffusers' `dropout`) are ignored.
        Ok(d) => LatteT2VConfig::from_json(&Value::Object(dict_to_json(Some(d), "config")?).to_string()).py(),
        Err(_) => Err(PyTypeError::new_err(format!(
            "config: expected a LatteT2VConfig, a dict of diffusers config keys or None, got {}",
            obj.get_type()
        ))),
    }
}
