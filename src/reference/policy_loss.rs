//! Mirror of `shaders/policy_loss.wgsl` in f64: the policy sample, the PO-MPC policy loss and
//! the prior fit with their gradients, step by step like the kernels but with the textbook
//! formulas (TD-MPC2's `log_std`, `gaussian_logprob`, `squash`, torch's Normal KL) where the
//! shader uses rewrites that are equal in exact arithmetic. One difference of convention is
//! the kernels': `relu(1 - a^2)` is the exact `1 / cosh(x)^2`, not `1 - tanh(x)^2` rounded.
//!
//! Buffers are the logical arrays, rows back to back: `h`, prior and planner rows `[R, 2A]`,
//! `eps`, `dq` and actions `[R, A]`, `q` `[R]`.

use super::loss::row_weight;
use crate::kernels::policy_loss::{
    DimReduce, EntropyForm, KlForm, KlTerm, Param, PolicyHead, PolicyLossConfig, PriorFitConfig,
    PriorInput,
};

/// log(2 pi) / 2.
pub const HALF_LOG_2PI: f64 = 0.918_938_533_204_672_7;

/// `1 - tanh(x)^2`, exactly (no cancellation for large |x|).
fn sech2(x: f64) -> f64 {
    let c = x.cosh();
    1.0 / (c * c)
}

/// A Gaussian head from raw `(m, s)`: mean, d mean / d m, log-std, d log-std / d s.
#[derive(Clone, Copy, Debug)]
pub struct Head {
    /// `m` or `tanh(m)`.
    pub mu: f64,
    /// Its derivative.
    pub dmu: f64,
    /// `lo + (hi - lo) (tanh(s) + 1) / 2`.
    pub ls: f64,
    /// Its derivative.
    pub dls: f64,
}

/// The head of one dimension.
pub fn head(param: Param, m: f64, s: f64, lo: f64, hi: f64) -> Head {
    let (mu, dmu) = match param {
        Param::Squashed => (m, 1.0),
        Param::TanhMeanClamp => (m.tanh(), sech2(m)),
    };
    Head {
        mu,
        dmu,
        ls: lo + 0.5 * (hi - lo) * (s.tanh() + 1.0),
        dls: 0.5 * (hi - lo) * sech2(s),
    }
}

/// One action dimension of the policy sample.
#[derive(Clone, Copy, Debug)]
pub struct Elem {
    /// The head.
    pub hd: Head,
    /// `exp(log_std)`.
    pub sig: f64,
    /// The noise.
    pub e: f64,
    /// `mu + sig eps`.
    pub x: f64,
    /// The action.
    pub a: f64,
    /// `d a / d x`.
    pub fp: f64,
    /// `-eps^2 / 2 - log_std`.
    pub s: f64,
    /// The squash correction `log(relu(1 - a^2) + 1e-6)` (0 for the clamped head).
    pub sq: f64,
    /// `d(-sq) / d x`.
    pub k: f64,
}

/// Dimension `i` of a row: `h` is the row's `[m | s]` (2A), `eps` its noise (A).
pub fn elem(head_cfg: &PolicyHead, h: &[f64], eps: &[f64], i: usize) -> Elem {
    let a = head_cfg.action_dim;
    let hd = head(
        head_cfg.param,
        h[i],
        h[a + i],
        head_cfg.log_std_min as f64,
        head_cfg.log_std_max as f64,
    );
    let e = eps[i];
    let sig = hd.ls.exp();
    let x = hd.mu + sig * e;
    let (act, fp, sq, k) = match head_cfg.param {
        Param::Squashed => {
            let t = x.tanh();
            let c = sech2(x).max(0.0);
            (t, sech2(x), (c + 1e-6).ln(), 2.0 * t * c / (c + 1e-6))
        }
        Param::TanhMeanClamp => {
            let inside = if x.abs() <= 1.0 { 1.0 } else { 0.0 };
            (x.clamp(-1.0, 1.0), inside, 0.0, 0.0)
        }
    };
    Elem {
        hd,
        sig,
        e,
        x,
        a: act,
        fp,
        s: -0.5 * e * e - hd.ls,
        sq,
        k,
    }
}

/// The actions `[R, A]` of `rows` rows.
pub fn sample(head_cfg: &PolicyHead, rows: usize, h: &[f64], eps: &[f64]) -> Vec<f64> {
    let a = head_cfg.action_dim;
    let mut out = Vec::with_capacity(rows * a);
    for r in 0..rows {
        let (hr, er) = (&h[r * 2 * a..(r + 1) * 2 * a], &eps[r * a..(r + 1) * a]);
        out.extend((0..a).map(|i| elem(head_cfg, hr, er, i).a));
    }
    out
}

/// A diagonal Gaussian's dimension: mean, log-std, std.
#[derive(Clone, Copy, Debug)]
pub struct Gauss {
    /// Mean.
    pub mu: f64,
    /// Log-std.
    pub ls: f64,
    /// Std.
    pub sig: f64,
}

/// Dimension `i` of `(mean, std)` rows (`row` is 2A), the std floored.
pub fn gauss_row(row: &[f64], i: usize, floor: f64) -> Gauss {
    let a = row.len() / 2;
    let sig = row[a + i].max(floor);
    Gauss {
        mu: row[i],
        ls: sig.ln(),
        sig,
    }
}

/// Dimension `i` of the policy KL's prior row (`row` is 2A).
pub fn prior_gauss(kl: &KlTerm, param: Param, row: &[f64], i: usize) -> Gauss {
    match kl.prior {
        PriorInput::Gaussian => gauss_row(row, i, kl.std_floor as f64),
        PriorInput::Network {
            log_std_min,
            log_std_max,
        } => {
            let a = row.len() / 2;
            let hd = head(
                param,
                row[i],
                row[a + i],
                log_std_min as f64,
                log_std_max as f64,
            );
            let ls = hd.ls.max((kl.std_floor as f64).ln());
            Gauss {
                mu: hd.mu,
                ls,
                sig: ls.exp(),
            }
        }
    }
}

/// `KL(N(mu_p, sig_p) || N(mu_q, sig_q))` of one dimension (torch's `kl_divergence` of two
/// Normals).
pub fn gaussian_kl(mu_p: f64, sig_p: f64, mu_q: f64, sig_q: f64) -> f64 {
    let var_ratio = (sig_p / sig_q).powi(2);
    let t1 = ((mu_p - mu_q) / sig_q).powi(2);
    0.5 * (var_ratio + t1 - 1.0 - var_ratio.ln())
}

/// The closed-form KL of one dimension with the learned Gaussian `(mu, ls)` first (reverse)
/// or second (forward): `(d, d d / d mu, d d / d ls)`.
pub fn kl_closed(mu: f64, ls: f64, f: Gauss, forward: bool) -> (f64, f64, f64) {
    let sig = ls.exp();
    let dm = mu - f.mu;
    if forward {
        let d = gaussian_kl(f.mu, f.sig, mu, sig);
        (
            d,
            dm / (sig * sig),
            1.0 - (f.sig * f.sig + dm * dm) / (sig * sig),
        )
    } else {
        let d = gaussian_kl(mu, sig, f.mu, f.sig);
        (d, dm / (f.sig * f.sig), (sig * sig) / (f.sig * f.sig) - 1.0)
    }
}

/// `atanh(1 - clip)` rounded to f32 as the kernel's uniform holds it.
pub fn u_max(clip: f32) -> f64 {
    let c = clip as f64;
    (0.5 * ((2.0 - c) / c).ln()) as f32 as f64
}

/// The inputs of [`policy_loss`] (logical arrays).
#[derive(Clone, Copy, Debug)]
pub struct PolicyData<'a> {
    /// `[R, 2A]`.
    pub h: &'a [f64],
    /// `[R, A]`.
    pub eps: &'a [f64],
    /// `q` `[R]` and `dq/da` `[R, A]`, if the Q term is on.
    pub q: Option<(&'a [f64], &'a [f64])>,
    /// The prior rows `[R, 2A]`.
    pub prior: Option<&'a [f64]>,
    /// The planner `(mean, std)` rows `[R, 2A]`.
    pub planner: Option<&'a [f64]>,
    /// `s_q`.
    pub s_q: f64,
    /// `s_kl`.
    pub s_kl: f64,
}

/// The outputs of [`policy_loss`].
#[derive(Clone, Debug, Default)]
pub struct PolicyLossOut {
    /// Weighted sums: Q, entropy, KL, LL, total.
    pub terms: [f64; 5],
    /// `w_r d loss_r / d h_r`, `[R, 2A]`.
    pub grad: Vec<f64>,
    /// `D_r` (before the division by `s_kl`), `[R]` (0 without a KL term).
    pub divergence: Vec<f64>,
    /// Per-row unweighted terms (Q, entropy, KL, LL), for hand-computed checks.
    pub row_terms: Vec<[f64; 4]>,
    /// Per gradient element, the sum of the magnitudes of what it adds up (every difference
    /// taken as the sum of the magnitudes): a scale for rounding-error bounds.
    pub grad_mag: Vec<f64>,
}

/// One dimension of the policy KL: `(d, coefficient, d d / d log_std with x fixed)`; the
/// coefficient multiplies `d mu` (closed forms) or `d x` (single sample).
fn kl_policy(kl: &KlTerm, param: Param, prior_row: &[f64], i: usize, el: &Elem) -> (f64, f64, f64) {
    let f = prior_gauss(kl, param, prior_row, i);
    match kl.form {
        KlForm::SingleSample => {
            let um = u_max(kl.squash_clip);
            let u = el.x.clamp(-um, um);
            let z = (u - f.mu) / f.sig;
            // log pi(a) and log pi_p(a) of this dimension, each with its squash correction.
            let log_pi = el.s - HALF_LOG_2PI - el.sq;
            let log_pp = -0.5 * z * z - f.ls - HALF_LOG_2PI - el.sq;
            let inside = if el.x.abs() <= um { 1.0 } else { 0.0 };
            // d / dx: log_pi gives k, -log_pp gives z / sig_p (inside the clamp) - k.
            let dx = el.k + (inside * z / f.sig - el.k);
            (log_pi - log_pp, dx, -1.0)
        }
        KlForm::Reverse => kl_closed(el.hd.mu, el.hd.ls, f, false),
        KlForm::Forward => kl_closed(el.hd.mu, el.hd.ls, f, true),
    }
}

fn reduce_factor(r: DimReduce, a: usize) -> f64 {
    match r {
        DimReduce::Mean => 1.0 / a as f64,
        DimReduce::Sum => 1.0,
    }
}

/// The policy loss over `rows` rows: the five weighted sums, the gradient and `D_r`.
/// Terms absent from `cfg` (or `q` absent from `x`) contribute 0.
pub fn policy_loss(cfg: &PolicyLossConfig, rows: usize, x: &PolicyData) -> PolicyLossOut {
    let a = cfg.head.action_dim;
    let af = a as f64;
    let (alpha, c_q) = (cfg.alpha as f64, cfg.c_q as f64);
    let mut out = PolicyLossOut {
        grad: vec![0.0; rows * 2 * a],
        divergence: vec![0.0; rows],
        grad_mag: vec![0.0; rows * 2 * a],
        ..Default::default()
    };
    for r in 0..rows {
        let hr = &x.h[r * 2 * a..(r + 1) * 2 * a];
        let er = &x.eps[r * a..(r + 1) * a];
        let els: Vec<Elem> = (0..a).map(|i| elem(&cfg.head, hr, er, i)).collect();
        let w = row_weight(&cfg.weights, r);
        // Row sums.
        let s_sum: f64 = els.iter().map(|e| e.s).sum();
        let sq_sum: f64 = els.iter().map(|e| e.sq).sum();
        let lp = s_sum - af * HALF_LOG_2PI;
        let big_l = lp - sq_sum;
        let (ent, hx, hls) = match cfg.entropy {
            EntropyForm::Scaled => {
                let den = big_l + 1e-8;
                let ent = -big_l * (af * lp / den);
                let phi_l = -af * lp * 1e-8 / (den * den);
                let phi_lp = -af * big_l / den;
                (ent, phi_l, -(phi_l + phi_lp))
            }
            EntropyForm::Original => {
                let log_pi = af * (s_sum - HALF_LOG_2PI) - sq_sum;
                (-log_pi, -1.0, af)
            }
        };
        let t_q = match x.q {
            Some((q, _)) => -c_q * q[r] / x.s_q,
            None => 0.0,
        };
        // KL.
        let mut kl_rows = vec![(0.0, 0.0, 0.0); a];
        let (mut d_row, mut kc, mut t_k) = (0.0, 0.0, 0.0);
        if let (Some(kl), Some(prior)) = (&cfg.kl, x.prior) {
            let pr = &prior[r * 2 * a..(r + 1) * 2 * a];
            for (i, el) in els.iter().enumerate() {
                kl_rows[i] = kl_policy(kl, cfg.head.param, pr, i, el);
            }
            let f = reduce_factor(kl.reduce, a);
            d_row = f * kl_rows.iter().map(|k| k.0).sum::<f64>();
            kc = kl.coef as f64 * f / x.s_kl;
            t_k = kl.coef as f64 * d_row / x.s_kl;
        }
        // Planner log-likelihood.
        let mut ll_rows = vec![(0.0, 0.0); a];
        let (mut cll, mut t_l) = (0.0, 0.0);
        if let (Some(ll), Some(plan)) = (&cfg.ll, x.planner) {
            let pr = &plan[r * 2 * a..(r + 1) * 2 * a];
            for (i, el) in els.iter().enumerate() {
                let g = gauss_row(pr, i, ll.std_floor as f64);
                let z = (el.a - g.mu) / g.sig;
                ll_rows[i] = (-0.5 * z * z - g.ls, z / g.sig);
            }
            let ell = af * (ll_rows.iter().map(|l| l.0).sum::<f64>() - HALF_LOG_2PI);
            if x.s_q > ll.threshold as f64 {
                cll = ll.coef as f64 / x.s_q;
            }
            t_l = -cll * ell;
        }
        let t_h = -alpha * ent;
        out.divergence[r] = d_row;
        out.row_terms.push([t_q, t_h, t_k, t_l]);
        for (k, t) in [t_q, t_h, t_k, t_l].iter().enumerate() {
            out.terms[k] += w * t;
        }
        out.terms[4] += w * (t_q + t_h + t_k + t_l);
        // Gradient: d loss / d a, then d / d x, d / d mu, d / d log_std (x fixed).
        for (i, el) in els.iter().enumerate() {
            let mut ga = 0.0;
            let mut ga_mag = 0.0;
            if let Some((_, dq)) = x.q {
                ga -= c_q * dq[r * a + i] / x.s_q;
                ga_mag += (c_q * dq[r * a + i] / x.s_q).abs();
            }
            ga += cll * af * ll_rows[i].1;
            if let (Some(ll), Some(plan)) = (&cfg.ll, x.planner) {
                let g = gauss_row(&plan[r * 2 * a..(r + 1) * 2 * a], i, ll.std_floor as f64);
                ga_mag += (cll * af).abs() * (el.a.abs() + g.mu.abs()) / (g.sig * g.sig);
            }
            let (mut kx_mag, mut kmu_mag, mut kls_mag) = (0.0, 0.0, 0.0);
            if let (Some(kl), Some(prior)) = (&cfg.kl, x.prior) {
                let f = prior_gauss(kl, cfg.head.param, &prior[r * 2 * a..(r + 1) * 2 * a], i);
                let kc = kc.abs();
                match kl.form {
                    KlForm::SingleSample => {
                        kx_mag = kc * (el.x.abs() + f.mu.abs()) / (f.sig * f.sig);
                        kls_mag = kc;
                    }
                    KlForm::Reverse => {
                        kmu_mag = kc * (el.hd.mu.abs() + f.mu.abs()) / (f.sig * f.sig);
                        kls_mag = kc * ((2.0 * (el.hd.ls - f.ls)).exp() + 1.0);
                    }
                    KlForm::Forward => {
                        let rr = (el.hd.mu.abs() + f.mu.abs()) / el.sig;
                        kmu_mag = kc * rr / el.sig;
                        kls_mag = kc * ((2.0 * (f.ls - el.hd.ls)).exp() + 1.0 + rr * rr);
                    }
                }
            }
            // Terms through 1 - tanh(x)^2 ~ 4 e^(-2|x|) carry twice the absolute error of x,
            // which is a few ulps of |mu| + sig |eps| (1 + |log_std| + the range's end).
            let cond = match cfg.head.param {
                Param::Squashed => {
                    let range = (cfg.head.log_std_min.abs()).max(cfg.head.log_std_max.abs());
                    1.0 + 2.0
                        * (el.hd.mu.abs()
                            + el.sig * el.e.abs() * (1.0 + el.hd.ls.abs() + range as f64))
                }
                Param::TanhMeanClamp => 1.0,
            };
            let gx_mag = (ga_mag * el.fp.abs() + (alpha * hx * el.k).abs()) * cond + kx_mag;
            let hls_mag = match cfg.entropy {
                EntropyForm::Scaled => {
                    let den = big_l + 1e-8;
                    (af * lp * 1e-8 / (den * den)).abs() + (af * big_l / den).abs()
                }
                EntropyForm::Original => af,
            };
            let gls_mag = alpha.abs() * hls_mag + kls_mag;
            out.grad_mag[r * 2 * a + i] = w.abs() * (gx_mag + kmu_mag) * el.hd.dmu.abs();
            out.grad_mag[r * 2 * a + a + i] =
                w.abs() * (gls_mag + gx_mag * el.sig * el.e.abs()) * el.hd.dls.abs();
            let mut gx = ga * el.fp - alpha * hx * el.k;
            let mut gmu = 0.0;
            let mut gls = -alpha * hls;
            if let Some(kl) = &cfg.kl {
                let (_, c, dls) = kl_rows[i];
                if kl.form == KlForm::SingleSample {
                    gx += kc * c;
                } else {
                    gmu += kc * c;
                }
                gls += kc * dls;
            }
            out.grad[r * 2 * a + i] = w * (gx + gmu) * el.hd.dmu;
            out.grad[r * 2 * a + a + i] = w * (gls + gx * el.sig * el.e) * el.hd.dls;
        }
    }
    out
}

/// The outputs of [`prior_fit`].
#[derive(Clone, Debug, Default)]
pub struct PriorFitOut {
    /// `sum_r w_r D_r / s_d`.
    pub loss: f64,
    /// Its gradient w.r.t. the prior network's raw output, `[R, 2A]`.
    pub grad: Vec<f64>,
    /// `D_r`, `[R]`.
    pub divergence: Vec<f64>,
    /// Per gradient element, the sum of the magnitudes of what it adds up.
    pub grad_mag: Vec<f64>,
}

/// The prior fit over `rows` rows of the prior network's raw output `out` and the planner's
/// `(mean, std)` rows.
pub fn prior_fit(
    cfg: &PriorFitConfig,
    rows: usize,
    out: &[f64],
    planner: &[f64],
    s_d: f64,
) -> PriorFitOut {
    let a = cfg.head.action_dim;
    let (lo, hi) = (cfg.head.log_std_min as f64, cfg.head.log_std_max as f64);
    let f = reduce_factor(cfg.reduce, a);
    let forward = cfg.form == KlForm::Forward;
    let mut res = PriorFitOut {
        grad: vec![0.0; rows * 2 * a],
        divergence: vec![0.0; rows],
        grad_mag: vec![0.0; rows * 2 * a],
        ..Default::default()
    };
    for r in 0..rows {
        let hr = &out[r * 2 * a..(r + 1) * 2 * a];
        let pr = &planner[r * 2 * a..(r + 1) * 2 * a];
        let w = row_weight(&cfg.weights, r);
        let mut sum = 0.0;
        for i in 0..a {
            let hd = head(cfg.head.param, hr[i], hr[a + i], lo, hi);
            let g = gauss_row(pr, i, cfg.std_floor as f64);
            let (d, dmu, dls) = kl_closed(hd.mu, hd.ls, g, forward);
            sum += d;
            let c = (w * f / s_d).abs();
            let (mu_mag, ls_mag) = if forward {
                let sig = hd.ls.exp();
                let rr = (hd.mu.abs() + g.mu.abs()) / sig;
                (rr / sig, (2.0 * (g.ls - hd.ls)).exp() + 1.0 + rr * rr)
            } else {
                (
                    (hd.mu.abs() + g.mu.abs()) / (g.sig * g.sig),
                    (2.0 * (hd.ls - g.ls)).exp() + 1.0,
                )
            };
            res.grad_mag[r * 2 * a + i] = c * mu_mag * hd.dmu.abs();
            res.grad_mag[r * 2 * a + a + i] = c * ls_mag * hd.dls.abs();
            res.grad[r * 2 * a + i] = w * f / s_d * dmu * hd.dmu;
            res.grad[r * 2 * a + a + i] = w * f / s_d * dls * hd.dls;
        }
        res.divergence[r] = f * sum;
        res.loss += w * f * sum / s_d;
    }
    res
}
