//! Helpers shared by the unit tests.

use candle_core::{DType, Tensor};

/// max |t| as f64, for any float tensor.
pub fn max_abs(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64)
        .and_then(|t| t.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>())
        .expect("max_abs of a float tensor")
}

/// max |a − b| as f64.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    max_abs(&(a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap()).unwrap())
}

/// The largest absolute difference relative to the largest magnitude of `b` (the reference).
pub fn max_rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    max_abs_diff(a, b) / max_abs(b).max(1e-30)
}

/// Runs `f` once on the fused CPU kernels and once on the device-generic path (what CUDA runs, forced on the
/// CPU), and asserts that every tensor it returns agrees to `tol` relative to its largest value.
pub fn assert_generic_matches_fused(what: &str, tol: f64, mut f: impl FnMut() -> Vec<(String, Tensor)>) {
    let fused = {
        let _auto = crate::nn::kernels::scope(crate::nn::kernels::KernelPath::Auto);
        f()
    };
    let generic = {
        let _g = crate::nn::kernels::force_generic();
        f()
    };
    assert_eq!(
        fused.len(),
        generic.len(),
        "{what}: the two paths return different outputs"
    );
    // A gradient that is zero in exact arithmetic (attention's key bias: softmax ignores a shift shared by all
    // keys) is rounding noise on both paths; it is compared against the largest value of the whole set instead.
    assert!(
        generic
            .iter()
            .zip(&fused)
            .any(|((_, a), (_, b))| max_abs_diff(a, b) > 0.0),
        "{what}: the two paths agree to the bit: the generic path did not run"
    );
    let largest = fused.iter().map(|(_, b)| max_abs(b)).fold(0.0, f64::max);
    for ((name, a), (_, b)) in generic.iter().zip(&fused) {
        let scale = max_abs(b).max(1e-3 * largest).max(f64::MIN_POSITIVE);
        let r = max_abs_diff(a, b) / scale;
        assert!(
            r <= tol,
            "{what}: {name} differs between the generic path and the fused kernels by {r:e} relative"
        );
    }
}

/// Central finite differences (step 1e-6) on `per_var` randomly drawn elements of each f64 variable, against
/// the analytic gradients in `grads`; `loss` recomputes the scalar loss with the variables as they are set.
/// Tolerance: 1e-6 + 1e-5 · max(|numeric|, |analytic|). `what` names the case in failure messages.
pub fn check_finite_differences(
    vars: &[(String, candle_core::Var)],
    grads: &candle_core::backprop::GradStore,
    loss: impl Fn() -> f64,
    per_var: usize,
    what: &str,
) {
    let eps = 1e-6;
    let mut pick = crate::rng::Generator::new(5);
    for (name, var) in vars {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient ({what})"))
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let original = var.as_tensor().copy().unwrap();
        for draw in pick.uniform(per_var, 0.0, g.len() as f64) {
            let i = draw as usize;
            let at = |delta: f64| {
                let mut v = original.flatten_all().unwrap().to_vec1::<f64>().unwrap();
                v[i] += delta;
                var.set(&Tensor::from_vec(v, original.dims(), original.device()).unwrap())
                    .unwrap();
                loss()
            };
            let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
            var.set(&original).unwrap();
            let tol = 1e-6 + 1e-5 * numeric.abs().max(g[i].abs());
            assert!(
                (numeric - g[i]).abs() <= tol,
                "{name}[{i}]: analytic {} vs numeric {numeric} ({what})",
                g[i]
            );
        }
    }
}
