//! Elementary functions in straight-line f32 arithmetic, so the loops that call them vectorise.

/// e^x for f32 in straight-line arithmetic (no libm call), so the loops around it vectorise: x = n ln2 + r with
/// |r| <= ln2/2, e^r by its Taylor series to degree 7 (relative error < 1e-8 on that range), 2^n from the exponent
/// bits. Inputs are clamped to [-87, 88], where f32 neither overflows nor goes subnormal.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.0 / 5040.0;
    for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = p * r + c;
    }
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_is_accurate() {
        for i in -870..880 {
            let x = i as f32 / 10.0;
            let (ours, exact) = (exp_f32(x) as f64, (x as f64).exp());
            assert!(((ours - exact) / exact).abs() < 3e-7, "exp({x}): {ours} vs {exact}");
        }
    }
}
