//! `VideoVAE` as a Python class: diffusers' AutoencoderKL applied to video frames in chunks.

use std::path::PathBuf;

use candle_core::{DType, Tensor};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use super::convert::{float_tensor, load_folder, to_numpy};
use super::hub::Location;
use super::IntoPy;
use crate::rng::Generator;
use crate::vae::AutoencoderKl;

/// The video VAE (diffusers' `AutoencoderKL`, the Stable Diffusion VAE Latte uses), frame by frame.
///
/// >>> vae = VideoVAE.from_pretrained("Latte/vae")  # config.json + diffusion_pytorch_model.safetensors  # doctest: +SKIP
/// >>> z = vae.encode(video, seed=0)        # (B, F, 3, H, W) in [-1, 1] -> (B, F, 4, H/8, W/8)  # doctest: +SKIP
/// >>> video = vae.decode(z)                # back to (B, F, 3, H, W)  # doctest: +SKIP
#[pyclass(name = "VideoVAE", module = "latte_rs", frozen)]
pub struct PyVideoVae {
    inner: AutoencoderKl,
}

/// (B, F, C, H, W) or (N, C, H, W) float → (N, C, H, W) and the leading dims to restore.
fn frames(obj: &Bound<'_, PyAny>, arg: &str, channels: usize) -> PyResult<(Tensor, Vec<usize>)> {
    let t = float_tensor(obj, arg)?;
    let dims = t.dims().to_vec();
    let ok = matches!(dims.len(), 4 | 5) && dims[dims.len() - 3] == channels && dims.iter().all(|d| *d > 0);
    if !ok {
        return Err(PyValueError::new_err(format!(
            "{arg}: expected shape (B, F, {channels}, H, W) or (N, {channels}, H, W), got {dims:?}"
        )));
    }
    let lead = dims[..dims.len() - 3].to_vec();
    let n: usize = lead.iter().product();
    let t = t
        .reshape((n, dims[dims.len() - 3], dims[dims.len() - 2], dims[dims.len() - 1]))
        .py()?;
    Ok((t, lead))
}

impl PyVideoVae {
    /// Runs `f` over chunks of `chunk_size` frames and concatenates, restoring the leading dims.
    fn chunked(
        &self,
        x: Tensor,
        lead: &[usize],
        chunk_size: usize,
        mut f: impl FnMut(&Tensor) -> crate::Result<Tensor>,
    ) -> crate::Result<Tensor> {
        if chunk_size == 0 {
            return Err(crate::error::value_error("chunk_size", "at least 1", 0));
        }
        let n = x.dim(0)?;
        let x = x.to_dtype(self.inner.dtype())?.to_device(self.inner.device())?;
        let mut parts = Vec::new();
        for start in (0..n).step_by(chunk_size) {
            let part = f(&x.narrow(0, start, chunk_size.min(n - start))?)?;
            parts.push(part.to_device(&candle_core::Device::Cpu)?.to_dtype(DType::F32)?);
        }
        let out = Tensor::cat(&parts, 0)?;
        let mut dims = lead.to_vec();
        dims.extend_from_slice(&out.dims()[1..]);
        Ok(out.reshape(dims)?)
    }
}

#[pymethods]
impl PyVideoVae {
    /// Loads a diffusers `vae/` folder (`config.json` + `diffusion_pytorch_model.safetensors`), local or a
    /// Hugging Face Hub id (`org/name`, with `subfolder` and `revision`; see `latte_rs.hub`).
    #[staticmethod]
    #[pyo3(signature = (path, device = "cpu", dtype = "float32", *, subfolder = None, revision = None))]
    fn from_pretrained(
        py: Python<'_>,
        path: PathBuf,
        device: &str,
        dtype: &str,
        subfolder: Option<&str>,
        revision: Option<&str>,
    ) -> PyResult<Self> {
        crate::python::guard(move || {
            let path = Location::folder(path, subfolder, revision).resolve(py, "path")?;
            let inner = load_folder(py, &path, device, Some(dtype), |path, device, dtype| {
                AutoencoderKl::from_pretrained(path, device, dtype.unwrap_or(DType::F32))
            })?;
            Ok(Self { inner })
        })
    }

    /// Latents × scaling_factor of frames in [-1, 1]: a sample (seeded by `seed`) or, with `sample=False`, the
    /// mean. Processes `chunk_size` frames at a time to bound memory.
    #[pyo3(signature = (video, sample = true, seed = 0, chunk_size = 16))]
    fn encode<'py>(
        &self,
        py: Python<'py>,
        video: &Bound<'py, PyAny>,
        sample: bool,
        #[pyo3(from_py_with = crate::python::convert::u64_arg)] seed: u64,
        #[pyo3(from_py_with = crate::python::convert::usize_arg)] chunk_size: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::python::guard(move || {
            let (x, lead) = frames(video, "video", self.inner.config().in_channels)?;
            let mut rng = Generator::new(seed);
            let out = py
                .detach(|| {
                    self.chunked(x, &lead, chunk_size, |c| {
                        self.inner.encode(c, if sample { Some(&mut rng) } else { None })
                    })
                })
                .py()?;
            to_numpy(py, &out)
        })
    }

    /// The latent distribution's (mean, logvar) of frames in [-1, 1], unscaled.
    #[pyo3(signature = (video, chunk_size = 16))]
    fn encode_moments<'py>(
        &self,
        py: Python<'py>,
        video: &Bound<'py, PyAny>,
        #[pyo3(from_py_with = crate::python::convert::usize_arg)] chunk_size: usize,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
        crate::python::guard(move || {
            let (x, lead) = frames(video, "video", self.inner.config().in_channels)?;
            let l = self.inner.config().latent_channels;
            let both = py
                .detach(|| {
                    self.chunked(x, &lead, chunk_size, |c| {
                        let (m, v) = self.inner.encode_moments(c)?;
                        Ok(Tensor::cat(&[&m, &v], 1)?)
                    })
                })
                .py()?;
            let axis = both.rank() - 3;
            let mean = both.narrow(axis, 0, l).py()?;
            let logvar = both.narrow(axis, l, l).py()?;
            Ok((to_numpy(py, &mean)?, to_numpy(py, &logvar)?))
        })
    }

    /// Frames from latents × scaling_factor (what `encode` returns), `chunk_size` frames at a time.
    #[pyo3(signature = (latents, chunk_size = 16))]
    fn decode<'py>(
        &self,
        py: Python<'py>,
        latents: &Bound<'py, PyAny>,
        #[pyo3(from_py_with = crate::python::convert::usize_arg)] chunk_size: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::python::guard(move || {
            let (z, lead) = frames(latents, "latents", self.inner.config().latent_channels)?;
            let scale = self.inner.config().scaling_factor;
            let out = py
                .detach(|| self.chunked(z, &lead, chunk_size, |c| self.inner.decode(&(c / scale)?)))
                .py()?;
            to_numpy(py, &out)
        })
    }

    #[getter]
    fn scaling_factor(&self) -> f64 {
        self.inner.config().scaling_factor
    }

    #[getter]
    fn latent_channels(&self) -> usize {
        self.inner.config().latent_channels
    }

    /// Spatial downsampling factor (8 for the Stable Diffusion VAE).
    #[getter]
    fn downsample_factor(&self) -> usize {
        1 << (self.inner.config().block_out_channels.len() - 1)
    }

    fn __repr__(&self) -> String {
        let c = self.inner.config();
        format!(
            "VideoVAE(block_out_channels={:?}, latent_channels={}, scaling_factor={})",
            c.block_out_channels, c.latent_channels, c.scaling_factor
        )
    }
}
