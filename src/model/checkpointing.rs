//! Activation checkpointing over a chain of stages, for any network shaped embed → stages → head.
//!
//! The forward pass keeps only each stage's input; the backward pass recomputes one stage at a time from it and
//! back-propagates through that stage alone. Peak memory is one stage's activations plus one hidden state per
//! stage instead of every activation of the network; the cost is a second forward pass. The gradients equal the
//! plain path's (the same ops, in the same order within each stage).

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

/// Sums gradients of a fixed list of parameters over several backward passes.
pub(crate) struct GradAccumulator<'a> {
    params: &'a [Tensor],
    grads: Vec<Option<Tensor>>,
}

impl<'a> GradAccumulator<'a> {
    pub(crate) fn new(params: &'a [Tensor]) -> Self {
        Self {
            params,
            grads: vec![None; params.len()],
        }
    }

    pub(crate) fn add(&mut self, store: &GradStore) -> Result<()> {
        for (p, slot) in self.params.iter().zip(self.grads.iter_mut()) {
            if let Some(g) = store.get(p) {
                *slot = Some(match slot.take() {
                    Some(prev) => (prev + g)?,
                    None => g.clone(),
                });
            }
        }
        Ok(())
    }

    pub(crate) fn into_grads(self) -> Vec<Option<Tensor>> {
        self.grads
    }
}

/// One stage of the body: `(i, hidden, conditioning) → hidden`.
pub(crate) type StageFn<'a> = dyn Fn(usize, &Tensor, &[Tensor]) -> Result<Tensor> + 'a;
/// The head: `(hidden, conditioning) → output`.
pub(crate) type HeadFn<'a> = dyn Fn(&Tensor, &[Tensor]) -> Result<Tensor> + 'a;

/// The loss `loss_fn(head(stage_{n-1}(… stage_0(h0))))` and its gradient with respect to every tensor of
/// `params`, with activation checkpointing (see the module docs).
///
/// `h0` is the body's input and `cond` the conditioning tensors every stage and the head read; both keep their
/// autograd graphs back to the embeddings (which are small and are not recomputed). `stage(i, h, cond)` and
/// `head(h, cond)` are called with leaf copies of the conditioning, whose gradients are summed over all stages
/// and then pulled through the embeddings in one last backward pass.
pub(crate) fn checkpointed_backprop(
    params: &[Tensor],
    h0: &Tensor,
    cond: &[Tensor],
    stages: usize,
    stage: &StageFn<'_>,
    head: &HeadFn<'_>,
    loss_fn: impl FnOnce(&Tensor) -> Result<Tensor>,
) -> Result<(Tensor, Vec<Option<Tensor>>)> {
    let mut acc = GradAccumulator::new(params);
    let leaves = cond
        .iter()
        .map(|c| Var::from_tensor(&c.detach()))
        .collect::<Result<Vec<_>>>()?;
    let leaf_cond: Vec<Tensor> = leaves.iter().map(|v| v.as_tensor().clone()).collect();
    let mut inputs = Vec::with_capacity(stages + 1);
    inputs.push(h0.detach());
    for i in 0..stages {
        let next = stage(i, &inputs[i], &leaf_cond)?.detach();
        inputs.push(next);
    }
    let mut g_cond: Vec<Option<Tensor>> = vec![None; cond.len()];
    let mut add_cond = |grads: &GradStore| -> Result<()> {
        for (slot, leaf) in g_cond.iter_mut().zip(&leaf_cond) {
            if let Some(g) = grads.get(leaf) {
                *slot = Some(match slot.take() {
                    Some(prev) => (prev + g)?,
                    None => g.clone(),
                });
            }
        }
        Ok(())
    };
    // The head and the loss.
    let h_last = Var::from_tensor(&inputs[stages])?;
    let loss = loss_fn(&head(h_last.as_tensor(), &leaf_cond)?)?;
    let grads = loss.backward()?;
    acc.add(&grads)?;
    add_cond(&grads)?;
    let mut g_h = grads.get(h_last.as_tensor()).cloned();
    drop(grads);
    // Each stage, last to first: recompute from its saved input, pull the output gradient through it.
    for i in (0..stages).rev() {
        let Some(g_out) = g_h.take() else { break };
        let h_in = Var::from_tensor(&inputs[i])?;
        let out = stage(i, h_in.as_tensor(), &leaf_cond)?;
        let grads = (out * g_out)?.sum_all()?.backward()?;
        acc.add(&grads)?;
        add_cond(&grads)?;
        g_h = grads.get(h_in.as_tensor()).cloned();
    }
    // The embeddings: their outputs' gradients are now complete.
    let mut surrogate: Option<Tensor> = None;
    for (value, g) in std::iter::once((h0, g_h)).chain(cond.iter().zip(g_cond)) {
        if let Some(g) = g {
            let term = (value * g)?.sum_all()?;
            surrogate = Some(match surrogate {
                Some(s) => (s + term)?,
                None => term,
            });
        }
    }
    if let Some(s) = surrogate {
        acc.add(&s.backward()?)?;
    }
    Ok((loss.detach(), acc.into_grads()))
}
