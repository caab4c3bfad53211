//! [`Graph`]: one forward pass kept for a backward pass with a given output gradient, the face an autograd engine
//! outside the crate (torch's, in `latte_rs.torch`) drives.

use candle_core::{Tensor, Var};

use super::backprop::{complete_grads, param_tensors};
use super::condition::Condition;
use super::denoiser::Denoiser;
use crate::error::{value_error, Result};
use crate::finite::{check_output, to_model_finite};

/// A forward pass that keeps its autograd graph for one backward pass with a given output gradient (a
/// vector-Jacobian product): what an autograd engine outside the crate (torch's) calls in its forward and backward.
pub struct Graph {
    out: Tensor,
    input: Option<Var>,
    params: Vec<Tensor>,
}

impl Graph {
    /// The network on checked inputs, keeping the graph; with `input_grad`, also towards the latents `x`. The
    /// gradients are those of the trainable parameters, in the order of [`Denoiser::trainable_vars`].
    pub fn forward(model: &dyn Denoiser, x: &Tensor, t: &Tensor, cond: &Condition, input_grad: bool) -> Result<Self> {
        let (x, t, cond) = model.check_inputs(x, t, cond, true)?;
        let input = if input_grad { Some(Var::from_tensor(&x)?) } else { None };
        let x = input.as_ref().map_or(x, |v| v.as_tensor().clone());
        let out = model.denoise(&x, &t, &cond, true)?;
        check_output(&out)?;
        Ok(Self {
            out,
            input,
            params: param_tensors(&model.trainable_vars()),
        })
    }

    /// The output (no graph attached).
    pub fn output(&self) -> Tensor {
        self.out.detach()
    }

    /// The gradients of `sum(output · grad_output)`: towards the latents (when asked for) and every trainable
    /// parameter (zeros where the output does not depend on one). The graph stays (for another backward pass)
    /// until it is dropped.
    pub fn backward(&self, grad_output: &Tensor) -> Result<(Option<Tensor>, Vec<Tensor>)> {
        if grad_output.dims() != self.out.dims() {
            return Err(value_error(
                "grad_output",
                format!("shape {:?} (the output's)", self.out.dims()),
                format!("shape {:?}", grad_output.dims()),
            ));
        }
        let g = to_model_finite(grad_output, "grad_output", self.out.dtype(), self.out.device())?;
        let store = (&self.out * &g)?.sum_all()?.backward()?;
        let input = match &self.input {
            Some(v) => Some(match store.get(v.as_tensor()) {
                Some(g) => g.clone(),
                None => v.as_tensor().zeros_like()?,
            }),
            None => None,
        };
        let grads = complete_grads(
            self.params.iter().map(|p| store.get(p).cloned()).collect(),
            &self.params,
        )?;
        Ok((input, grads))
    }
}
