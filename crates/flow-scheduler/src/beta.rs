//! The Beta(α, β) quantile function (`scipy.stats.beta.ppf`), for diffusers'
//! `use_beta_sigmas` spacing (α = β = 0.6).
//!
//! `I_x(a, b)`, the regularized incomplete beta function, is evaluated with its continued
//! fraction (modified Lentz), on the side of `x` where it converges fast (`I_x(a, b) =
//! 1 − I_{1−x}(b, a)`), with `ln B(a, b)` from a Lanczos `ln Γ`. The quantile is found by
//! bisection on `[0, 1]` to the last bit of an f64 (`I_x` is increasing in `x`). Accuracy is
//! that of `I_x` (about 1e-15): the sigmas are rounded to f32 afterwards.

/// `ln Γ(x)` for `x > 0` (Lanczos, g = 7, 9 coefficients; relative error ≈ 1e-15).
fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x)Γ(1−x) = π / sin(πx).
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + G + 0.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The continued fraction of `I_x(a, b)` (modified Lentz), for `x < (a + 1) / (a + b + 2)`.
fn beta_cf(x: f64, a: f64, b: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..10_000 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-16 {
            break;
        }
    }
    h
}

/// The regularized incomplete beta function `I_x(a, b)`, `a, b > 0`, `x ∈ [0, 1]`.
pub fn regularized_incomplete_beta(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    let front = ln_front.exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_cf(x, a, b) / a
    } else {
        1.0 - front * beta_cf(1.0 - x, b, a) / b
    }
}

/// The `q`-quantile of Beta(a, b): the `x` with `I_x(a, b) = q` (`0` for `q ≤ 0`, `1` for
/// `q ≥ 1`), as `scipy.stats.beta.ppf(q, a, b)`.
pub fn beta_ppf(q: f64, a: f64, b: f64) -> f64 {
    if q <= 0.0 {
        return 0.0;
    }
    if q >= 1.0 {
        return 1.0;
    }
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    // Each halving gains a bit; stop when the interval cannot shrink any more.
    for _ in 0..1100 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if regularized_incomplete_beta(mid, a, b) < q {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln_gamma_matches_known_values() {
        // Γ(1) = Γ(2) = 1, Γ(0.5) = √π, Γ(5) = 24, Γ(0.6) = 1.4891922488128171.
        assert!(ln_gamma(1.0).abs() < 1e-14);
        assert!(ln_gamma(2.0).abs() < 1e-14);
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-14);
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-13);
        assert!((ln_gamma(0.6) - 1.489_192_248_812_817f64.ln()).abs() < 1e-14);
    }

    #[test]
    fn incomplete_beta_closed_forms_and_symmetry() {
        // I_x(1, 1) = x; I_x(a, 1) = x^a; I_x(1/2, 1/2) = 2/π · asin(√x).
        for x in [0.01, 0.2, 0.5, 0.77, 0.99] {
            assert!((regularized_incomplete_beta(x, 1.0, 1.0) - x).abs() < 1e-14);
            assert!((regularized_incomplete_beta(x, 2.5, 1.0) - x.powf(2.5)).abs() < 1e-14);
            let arcsine = 2.0 / std::f64::consts::PI * x.sqrt().asin();
            assert!((regularized_incomplete_beta(x, 0.5, 0.5) - arcsine).abs() < 1e-14);
            // Symmetric Beta(0.6, 0.6): I_x + I_{1−x} = 1.
            let s = regularized_incomplete_beta(x, 0.6, 0.6)
                + regularized_incomplete_beta(1.0 - x, 0.6, 0.6);
            assert!((s - 1.0).abs() < 1e-14, "{x}: {s}");
        }
    }

    #[test]
    fn ppf_inverts_and_matches_the_arcsine_law() {
        for q in [1e-9, 0.001, 0.1, 0.25, 0.5, 0.9, 0.999_999] {
            let x = beta_ppf(q, 0.5, 0.5);
            let want = (q * std::f64::consts::PI / 2.0).sin().powi(2);
            assert!((x - want).abs() < 1e-13, "{q}: {x} vs {want}");
            // x brackets q to the last bits: I at a few ulps below x is ≤ q, a few above ≥ q
            // (near 1 the density is large, so I moves by more than q's precision per ulp).
            let x = beta_ppf(q, 0.6, 0.6);
            let i = |x: f64| regularized_incomplete_beta(x, 0.6, 0.6);
            let ulps = 8.0 * f64::EPSILON;
            assert!(i(x * (1.0 - ulps)) <= q + 1e-15, "{q}: {x}");
            assert!(i((x * (1.0 + ulps)).min(1.0)) >= q - 1e-15, "{q}: {x}");
        }
        assert_eq!(beta_ppf(0.0, 0.6, 0.6), 0.0);
        assert_eq!(beta_ppf(1.0, 0.6, 0.6), 1.0);
        assert!((beta_ppf(0.5, 0.6, 0.6) - 0.5).abs() < 1e-15);
    }
}
