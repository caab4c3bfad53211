//! The one parameter store behind every model of the crate (Latte, the text-to-video transformer, T5, the VAE):
//! named variables on one device in one dtype, their state dict, and the one strict loader with its report.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use candle_core::Shape;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};

use crate::error::{LatteError, Result};

/// What a load found besides the matching keys (PyTorch's `_IncompatibleKeys`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
}

/// Which mismatches a load tolerates. Mis-shaped keys are always an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadPolicy {
    /// Parameters the state dict lacks keep their values instead of being an error.
    pub allow_missing: bool,
    /// Keys the model lacks are reported instead of being an error (e.g. a full T5's decoder weights).
    pub allow_unexpected: bool,
}

impl LoadPolicy {
    /// Every parameter present, nothing else: the default for files.
    pub const STRICT: Self = Self {
        allow_missing: false,
        allow_unexpected: false,
    };

    /// PyTorch's `load_state_dict(strict=...)`.
    pub fn strict(strict: bool) -> Self {
        Self {
            allow_missing: !strict,
            allow_unexpected: !strict,
        }
    }
}

/// Models keep their parameters in one of the float dtypes.
pub fn check_float_dtype(dtype: DType) -> Result<()> {
    if matches!(dtype, DType::F32 | DType::F64 | DType::BF16 | DType::F16) {
        Ok(())
    } else {
        Err(LatteError::Type(format!(
            "dtype: expected a float dtype, got {dtype:?}"
        )))
    }
}

/// Named parameters on one device in one dtype. Clones share their variables (like two references to one
/// `torch.nn.Module`): an optimiser holding a clone updates the weights every other clone sees.
#[derive(Clone)]
pub struct ParamStore {
    varmap: VarMap,
    device: Device,
    dtype: DType,
    budget: Arc<Budget>,
    /// Readers are passes over the parameters (forwards, sampling); writers replace them (an optimiser step, a
    /// load). Shared by clones, so a forward on one clone never sees a half-applied step made through another.
    access: Arc<std::sync::RwLock<()>>,
}

/// The memory a store may allocate for its parameters, fixed when it is made (see [`crate::limits`]): a network
/// whose parameters would not fit is refused before its first large allocation, not aborted or killed part way.
struct Budget {
    limit: u128,
    /// The limit that set it, in words (see [`crate::limits::Headroom`]).
    limit_name: String,
    used: Mutex<u128>,
    /// The refusal, kept so that [`ParamStore::build`] can return it as a memory error (candle's error type
    /// carries only a message).
    refused: Mutex<Option<String>>,
}

/// Parameters from this size up check the live headroom as well as the budget (see [`Budget::take`]); the
/// smaller ones (biases, norms) would only slow the build down.
const LIVE_CHECK_BYTES: u128 = 1 << 20;

impl Budget {
    fn take(&self, name: &str, shape: &Shape, dtype: DType) -> candle_core::Result<()> {
        let bytes = crate::limits::elements(name, shape.dims()).map_err(|e| candle_core::Error::Msg(e.to_string()))?
            as u128
            * dtype.size_in_bytes() as u128;
        let mut used = self.used.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // The budget was the headroom when the store was made; a large parameter also checks the headroom now,
        // since other threads (or the allocator's own reserve) may have taken part of it since.
        let live = if bytes >= LIVE_CHECK_BYTES {
            crate::limits::headroom().filter(|h| (h.bytes as u128) < self.limit - *used)
        } else {
            None
        };
        let (free, limit_name) = match &live {
            Some(h) => (h.bytes as u128, h.limit.as_str()),
            None => (self.limit - *used, self.limit_name.as_str()),
        };
        if bytes > free {
            let msg = format!(
                "the model's parameters need more than {} of memory (at {name} {:?}), but only {} is available \
                 under {}",
                crate::limits::human(*used + bytes),
                shape.dims(),
                crate::limits::human(*used + free),
                limit_name
            );
            *self.refused.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(msg.clone());
            candle_core::bail!("{msg}");
        }
        *used += bytes;
        Ok(())
    }
}

impl ParamStore {
    /// An empty store; networks add their parameters (as zeros) through [`ParamStore::build`].
    pub fn new(device: &Device, dtype: DType) -> Result<Self> {
        check_float_dtype(dtype)?;
        let headroom = crate::limits::headroom();
        Ok(Self {
            varmap: VarMap::new(),
            device: device.clone(),
            dtype,
            budget: Arc::new(Budget {
                limit: headroom.as_ref().map_or(u128::MAX, |h| h.bytes as u128),
                limit_name: headroom.map_or_else(String::new, |h| h.limit),
                used: Mutex::new(0),
                refused: Mutex::new(None),
            }),
            access: Arc::new(std::sync::RwLock::new(())),
        })
    }

    /// Runs a network's constructor on a [`ParamStore::builder`] (frozen or not) and returns a refusal of
    /// the memory budget as [`LatteError::Memory`] rather than as the constructor's error.
    pub fn build<T, E: Into<LatteError>>(
        &self,
        frozen: bool,
        construct: impl FnOnce(VarBuilder<'static>) -> std::result::Result<T, E>,
    ) -> Result<T> {
        construct(self.builder(frozen)).map_err(|e| {
            match self
                .budget
                .refused
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take()
            {
                Some(msg) => LatteError::Memory(msg),
                None => e.into(),
            }
        })
    }

    /// The builder a network's constructor reads its parameters from (paths mirror the checkpoint names), each
    /// new parameter charged to the budget. A `frozen` builder is for an inference-only network (the VAE, the text
    /// encoder): the same parameters, read without their autograd identity, so the network's forward passes
    /// record no graph and free each activation as soon as the next op has used it. (With variables among its
    /// inputs every op keeps its inputs alive for a backward pass, which holds a whole forward pass's activations
    /// until its output is dropped.)
    fn builder(&self, frozen: bool) -> VarBuilder<'static> {
        let backend = Budgeted {
            varmap: self.varmap.clone(),
            budget: self.budget.clone(),
            frozen,
        };
        VarBuilder::from_backend(Box::new(backend), self.dtype, self.device.clone())
    }

    /// Held for a whole pass that reads the parameters: an update waits until it ends, and it waits for an update
    /// in progress, so the pass sees the parameters of one step throughout. (A train step's own forward and
    /// backward do not hold it: loading weights from another thread during a step is not supported.)
    pub fn read_access(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.access.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Held while the parameters are replaced (see [`ParamStore::read_access`]).
    pub fn write_access(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.access.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    fn with_vars<R>(&self, f: impl FnOnce(&HashMap<String, Var>) -> R) -> R {
        let data = self
            .varmap
            .data()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&data)
    }

    /// The variables whose names pass `keep`, sorted by name.
    pub fn vars(&self, keep: impl Fn(&str) -> bool) -> Vec<(String, Var)> {
        let mut vars: Vec<_> = self.with_vars(|data| {
            data.iter()
                .filter(|(n, _)| keep(n))
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect()
        });
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }

    /// Number of values in the variables whose names pass `keep`.
    pub fn num_values(&self, keep: impl Fn(&str) -> bool) -> usize {
        self.with_vars(|data| data.iter().filter(|(n, _)| keep(n)).map(|(_, v)| v.elem_count()).sum())
    }

    /// Every parameter by name (detached views, no copies).
    pub fn state_dict(&self) -> BTreeMap<String, Tensor> {
        self.with_vars(|data| data.iter().map(|(n, v)| (n.clone(), v.as_tensor().detach())).collect())
    }

    /// Sets every variable, in name order, to `value(name, var)` (the seeded initialisers rely on the order).
    pub fn initialise(&self, mut value: impl FnMut(&str, &Var) -> Result<Tensor>) -> Result<()> {
        let _writing = self.write_access();
        for (name, var) in self.vars(|_| true) {
            let t = value(&name, &var)?;
            var.set(&t.to_device(&self.device)?.to_dtype(self.dtype)?)?;
        }
        Ok(())
    }

    /// Loads `state` by name after checking all of it: mis-shaped keys, and missing and unexpected ones unless
    /// `policy` allows them, are listed in one error. `source` (a file) and `model` name what did not match.
    pub fn load(
        &self,
        state: &HashMap<String, Tensor>,
        policy: LoadPolicy,
        source: Option<&str>,
        model: &str,
    ) -> Result<LoadReport> {
        let _writing = self.write_access();
        self.with_vars(|data| {
            let mut report = LoadReport::default();
            let mut mismatched = Vec::new();
            for (name, var) in data.iter() {
                match state.get(name) {
                    None => report.missing.push(name.clone()),
                    Some(t) if t.dims() != var.dims() => {
                        mismatched.push(format!("{name}: expected {:?}, got {:?}", var.dims(), t.dims()))
                    }
                    Some(_) => {}
                }
            }
            report.unexpected = state.keys().filter(|k| !data.contains_key(*k)).cloned().collect();
            report.missing.sort();
            report.unexpected.sort();
            mismatched.sort();
            let missing_bad = !policy.allow_missing && !report.missing.is_empty();
            let unexpected_bad = !policy.allow_unexpected && !report.unexpected.is_empty();
            if !mismatched.is_empty() || missing_bad || unexpected_bad {
                let mut msg = match source {
                    Some(s) => format!("{s}: state dict does not match the {model}:"),
                    None => format!("state dict does not match the {model}:"),
                };
                let mut list = |what: &str, keys: &[String], sep: &str| {
                    if !keys.is_empty() {
                        msg += &format!("\n  {what} keys ({}): {}", keys.len(), keys.join(sep));
                    }
                };
                list("missing", &report.missing, ", ");
                list("unexpected", &report.unexpected, ", ");
                list("mis-shaped", &mismatched, "; ");
                return Err(LatteError::StateDict(msg));
            }
            for (name, var) in data.iter() {
                if let Some(t) = state.get(name) {
                    var.set(&t.to_device(&self.device)?.to_dtype(var.dtype())?)?;
                }
            }
            Ok(report)
        })
    }
}

/// The backend of a store's builders: each new parameter is charged to the store's [`Budget`] before the variable
/// map allocates it; `frozen` builders read the parameters as plain tensors (see [`ParamStore::builder`]),
/// which share the variables' storage, so loading into the store updates them.
struct Budgeted {
    varmap: VarMap,
    budget: Arc<Budget>,
    frozen: bool,
}

impl SimpleBackend for Budgeted {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        if !self.contains_tensor(name) {
            self.budget.take(name, &s, dtype)?;
        }
        let t = self.varmap.get(s, name, h, dtype, dev)?;
        Ok(if self.frozen { t.detach() } else { t })
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("{name}: a parameter store is read with its shapes")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap
            .data()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(name)
    }
}
