//! Timestep respacing: sampling with a subset of the training timesteps.

use crate::error::{LatteError, Result};

/// Python's `round`: halves go to the even neighbour. The reference rounds fractional strides this way, so the
/// chosen timesteps depend on it.
pub(crate) fn round_half_even(x: f64) -> i64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && (r as i64) % 2 != 0 {
        (r - x.signum()) as i64
    } else {
        r as i64
    }
}

/// The timesteps to keep from a process of `num_timesteps` steps, sorted. `spec` is "ddimN" (a uniform integer
/// stride giving exactly N steps, as DDIM), or comma-separated counts per equal section ("250", "10,10,10").
/// An empty spec keeps every step.
pub fn space_timesteps(num_timesteps: usize, spec: &str) -> Result<Vec<usize>> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Ok((0..num_timesteps).collect());
    }
    if let Some(count) = spec.strip_prefix("ddim") {
        let desired: usize = count.parse().map_err(|_| {
            LatteError::Value(format!(
                "timestep_respacing: expected \"ddimN\" with an integer N, got {spec:?}"
            ))
        })?;
        for stride in 1..num_timesteps.max(2) {
            if (0..num_timesteps).step_by(stride).count() == desired {
                return Ok((0..num_timesteps).step_by(stride).collect());
            }
        }
        return Err(LatteError::Value(format!(
            "timestep_respacing: cannot make exactly {desired} steps from {num_timesteps} with an integer stride"
        )));
    }
    let counts = spec
        .split(',')
        .map(|s| s.trim().parse::<usize>())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| {
            LatteError::Value(format!(
                "timestep_respacing: expected \"ddimN\" or comma-separated step counts like \"250\", got {spec:?}"
            ))
        })?;
    let size_per = num_timesteps / counts.len();
    let extra = num_timesteps % counts.len();
    let mut start = 0usize;
    let mut steps = Vec::new();
    for (i, &count) in counts.iter().enumerate() {
        let size = size_per + usize::from(i < extra);
        if size < count || count == 0 {
            return Err(LatteError::Value(format!(
                "timestep_respacing: cannot divide a section of {size} steps into {count}"
            )));
        }
        let stride = if count <= 1 {
            1.0
        } else {
            (size - 1) as f64 / (count - 1) as f64
        };
        let mut cur = 0.0;
        for _ in 0..count {
            steps.push(start + round_half_even(cur) as usize);
            cur += stride;
        }
        start += size;
    }
    steps.sort_unstable();
    steps.dedup();
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_like_python() {
        assert_eq!(
            [0.5, 1.5, 2.5, -0.5, 2.4999, 2.6].map(round_half_even),
            [0, 2, 2, 0, 2, 3]
        );
    }

    #[test]
    fn known_spacings() {
        assert_eq!(
            space_timesteps(1000, "ddim50").unwrap(),
            (0..1000).step_by(20).collect::<Vec<_>>()
        );
        assert_eq!(space_timesteps(1000, "250").unwrap().len(), 250);
        assert_eq!(space_timesteps(300, "10,15,20").unwrap().len(), 45);
        assert_eq!(space_timesteps(10, "").unwrap(), (0..10).collect::<Vec<_>>());
        assert!(space_timesteps(1000, "ddim7x").is_err());
        assert!(space_timesteps(10, "20").is_err());
        assert!(space_timesteps(10, "abc").is_err());
    }
}
