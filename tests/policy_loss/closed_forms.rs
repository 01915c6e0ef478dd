//! Closed forms and hand-computed cases: the KL's known values and quadrature, the
//! single-sample estimate's expectation, each preset's per-row loss by hand.

use crate::common::{gpus, rng};
use crate::harness::*;
use pompc::kernels::loss::{LossOut, RowWeights};
use pompc::kernels::policy_loss::{
    self as pl, DimReduce, KlForm, KlTerm, Param, PolicyHead, PolicyLossConfig, PriorFitConfig,
    PriorFitInputs, Rows,
};
use pompc::reference::policy_loss::{self as mirror, HALF_LOG_2PI};
use pompc::{GpuBuffer, Recorder};
use rand::Rng;

/// `E_p[log p - log q]` of two 1-D Gaussians by Simpson's rule over mu_p +- 12 sig_p.
fn kl_quadrature(mu_p: f64, sp: f64, mu_q: f64, sq: f64) -> f64 {
    let logn = |x: f64, m: f64, s: f64| -0.5 * ((x - m) / s).powi(2) - s.ln() - HALF_LOG_2PI;
    let n = 20_000;
    let (lo, hi) = (mu_p - 12.0 * sp, mu_p + 12.0 * sp);
    let hstep = (hi - lo) / n as f64;
    let f = |x: f64| logn(x, mu_p, sp).exp() * (logn(x, mu_p, sp) - logn(x, mu_q, sq));
    let mut s = f(lo) + f(hi);
    for k in 1..n {
        s += f(lo + k as f64 * hstep) * if k % 2 == 1 { 4.0 } else { 2.0 };
    }
    s * hstep / 3.0
}

#[test]
fn closed_form_kl_known_values_and_quadrature() {
    let mut r = rng("kl");
    // Identical Gaussians: 0, with zero gradient.
    let g = mirror::Gauss {
        mu: 0.3,
        ls: 0.4f64.ln(),
        sig: 0.4,
    };
    for fwd in [false, true] {
        let (d, dmu, dls) = mirror::kl_closed(0.3, 0.4f64.ln(), g, fwd);
        assert!(d.abs() < 1e-15 && dmu.abs() < 1e-15 && dls.abs() < 1e-15);
    }
    // By hand: KL(N(0.5, 0.5) || N(0, 1)) = ln 2 + (0.25 + 0.25) / 2 - 1/2 = ln 2 - 1/4;
    // KL(N(0, 1) || N(0.5, 0.5)) = ln(1/2) + (1 + 0.25) / (2 * 0.25) - 1/2 = 2 - ln 2.
    let ln2 = std::f64::consts::LN_2;
    assert!((mirror::gaussian_kl(0.5, 0.5, 0.0, 1.0) - (ln2 - 0.25)).abs() < 1e-15);
    assert!((mirror::gaussian_kl(0.0, 1.0, 0.5, 0.5) - (2.0 - ln2)).abs() < 1e-15);
    let unit = mirror::Gauss {
        mu: 0.0,
        ls: 0.0,
        sig: 1.0,
    };
    let (d, _, _) = mirror::kl_closed(0.5, 0.5f64.ln(), unit, false);
    assert!((d - (ln2 - 0.25)).abs() < 1e-15);
    let (d, _, _) = mirror::kl_closed(0.5, 0.5f64.ln(), unit, true);
    assert!((d - (2.0 - ln2)).abs() < 1e-15);
    // Quadrature of E_p[log p - log q].
    for _ in 0..20 {
        let (mp, sp) = (r.random_range(-2.0..2.0), r.random_range(0.1..2.0));
        let (mq, sqq) = (r.random_range(-2.0..2.0), r.random_range(0.1..2.0));
        let want = kl_quadrature(mp, sp, mq, sqq);
        let got = mirror::gaussian_kl(mp, sp, mq, sqq);
        assert!(
            (got - want).abs() < 1e-9 * (1.0 + want),
            "KL {got} quadrature {want}"
        );
    }
    // On the GPU through the prior fit: identical Gaussians give 0 (f32: within a few ulps of
    // the terms), the hand-computed pair its value. The BMPC head maps raw (atanh(0.5), s) to
    // mean 0.5 and log-std -3 + 2 (tanh s + 1) = ln 0.5.
    let s_half = (((0.5f64.ln() + 3.0) / 2.0) - 1.0).atanh();
    let m_half = 0.5f64.atanh();
    for gpu in gpus() {
        for (fwd, want) in [(false, ln2 - 0.25), (true, 2.0 - ln2)] {
            let cfg = PriorFitConfig {
                form: if fwd {
                    KlForm::Forward
                } else {
                    KlForm::Reverse
                },
                reduce: DimReduce::Sum,
                ..PriorFitConfig::new(PolicyHead::bmpc(2), RowWeights::uniform(1.0))
            };
            // Row 0: against N(0, 1) (the hand value); row 1: against itself (0).
            let out = [
                m_half, m_half, s_half, s_half, m_half, m_half, s_half, s_half,
            ];
            let out: Vec<f32> = out.iter().map(|&v| v as f32).collect();
            let (mh, sh) = (
                mirror::head(
                    Param::TanhMeanClamp,
                    out[0] as f64,
                    out[2] as f64,
                    -3.0,
                    1.0,
                )
                .mu,
                mirror::head(
                    Param::TanhMeanClamp,
                    out[0] as f64,
                    out[2] as f64,
                    -3.0,
                    1.0,
                )
                .ls
                .exp(),
            );
            let planner = [
                0.0, 0.0, 1.0, 1.0, mh as f32, mh as f32, sh as f32, sh as f32,
            ];
            let ob = GpuBuffer::from_slice(gpu, "out", &out).unwrap();
            let bb = GpuBuffer::from_slice(gpu, "planner", &planner).unwrap();
            let db = GpuBuffer::<f32>::new(gpu, "d", 2).unwrap();
            let losses = GpuBuffer::<f32>::new(gpu, "l", 1).unwrap();
            let inputs = PriorFitInputs {
                out: Rows::new(&ob, 4),
                planner: Rows::new(&bb, 4),
                s_d: None,
                agents: pl::Agents::ONE,
            };
            let mut rec = Recorder::new(gpu);
            let lo = LossOut {
                losses: &losses,
                index: 0,
                accumulate: false,
            };
            let div = Some(Rows::new(&db, 1));
            pl::record_prior_fit(
                &mut rec,
                &cfg,
                2,
                &inputs,
                pl::Pass::loss(None, div, lo, None),
            )
            .unwrap();
            let hd = rec.read(&db);
            let got = rec.finish().unwrap().get(&hd).unwrap();
            // Two dimensions summed; f32 inputs (0.5 is not exact after the map) cost ~1e-6.
            assert!(
                (got[0] as f64 - 2.0 * want).abs() < 1e-5,
                "fwd={fwd}: {} want {}",
                got[0],
                2.0 * want
            );
            assert!(
                got[1].abs() < 1e-6,
                "fwd={fwd}: identical Gaussians give {}",
                got[1]
            );
        }
    }
}

#[test]
fn single_sample_estimate_is_unbiased_for_the_closed_form() {
    // E_eps[log pi(a) - log pi_p(a)] = KL of the pre-squash Gaussians (KL is invariant under the
    // bijection tanh; the squash corrections cancel): Simpson over eps in +-12 per dimension.
    let kl = KlTerm {
        form: KlForm::SingleSample,
        reduce: DimReduce::Sum,
        ..KlTerm::bmpc()
    };
    let cfg = PolicyLossConfig {
        c_q: 0.0,
        alpha: 0.0,
        kl: Some(kl),
        ..PolicyLossConfig::tdmpc2(1, RowWeights::uniform(1.0))
    };
    let mut r = rng("single_sample");
    for _ in 0..10 {
        let (m, s) = (r.random_range(-1.0..1.0), r.random_range(-1.0..-0.3));
        let prior = [r.random_range(-1.0..1.0), r.random_range(0.2..1.0)];
        let hd = mirror::head(Param::Squashed, m, s, -10.0, 2.0);
        let closed = mirror::gaussian_kl(hd.mu, hd.ls.exp(), prior[0], prior[1]);
        let n = 4000;
        let step = 24.0 / n as f64;
        let mut acc = 0.0;
        for k in 0..=n {
            let e = -12.0 + k as f64 * step;
            let wgt = if k == 0 || k == n {
                1.0
            } else if k % 2 == 1 {
                4.0
            } else {
                2.0
            };
            let data = mirror::PolicyData {
                h: &[m, s],
                eps: &[e],
                q: None,
                prior: Some(&prior),
                planner: None,
                s_q: 1.0,
                s_kl: 1.0,
            };
            let d = mirror::policy_loss(&cfg, 1, &data).divergence[0];
            acc += wgt * d * (-0.5 * e * e - HALF_LOG_2PI).exp();
        }
        let expect = acc * step / 3.0;
        assert!(
            (expect - closed).abs() < 1e-7 * (1.0 + closed),
            "E[single sample] {expect} closed form {closed}"
        );
    }
}

/// Runs one row on both GPUs and the mirror and checks the total against `want` (and the slots
/// against `slots` where given).
fn check_hand(cfg: &PolicyLossConfig, d: &Data, want: [f64; 4], mag: f64, what: &str) {
    let total: f64 = want.iter().sum();
    let given = Given {
        q: cfg.c_q != 0.0,
        s_q: true,
        s_kl: true,
    };
    let m = mirror_of(cfg, d, given);
    for (k, (got, w)) in m.terms.iter().zip(&want).enumerate() {
        assert!(
            (got - w).abs() <= 1e-12 * mag,
            "{what}: mirror term {k} {got} by hand {w}"
        );
    }
    for gpu in gpus() {
        let (terms, _) = gpu_terms_and_grad(gpu, cfg, d);
        for k in 0..4 {
            assert!(
                (terms[k] as f64 - want[k]).abs() <= HAND_TOL * mag,
                "{what}: gpu term {k} {} by hand {}",
                terms[k],
                want[k]
            );
        }
        let worst = (0..5)
            .map(|k| {
                let w = if k == 4 { total } else { want[k] };
                (terms[k] as f64 - w).abs() / mag
            })
            .fold(0.0, f64::max);
        eprintln!("{what}: gpu error / magnitude {worst:.2e}");
        assert!(
            (terms[4] as f64 - total).abs() <= HAND_TOL * mag,
            "{what}: gpu total {} by hand {total}",
            terms[4]
        );
    }
}

/// Raw log-std giving `log_std = ls` in `[lo, hi]`.
fn raw_for(ls: f64, lo: f64, hi: f64) -> f64 {
    (2.0 * (ls - lo) / (hi - lo) - 1.0).atanh()
}

#[test]
fn hand_computed_presets() {
    // The presets' alpha, 1e-4 as the f32 uniform holds it.
    const ALPHA: f64 = 1e-4f32 as f64;
    let one = RowWeights::uniform(1.0);
    let blank = |a: usize| Data {
        rows: 1,
        h: vec![],
        eps: vec![],
        q: vec![0.0],
        dq: vec![0.0; a],
        prior: vec![0.0; 2 * a],
        planner: vec![0.0; 2 * a],
        s_q: 1.0,
        s_kl: 1.0,
    };

    // TD-MPC2, A = 1: mean 0.2, log_std -1, eps 0.7, q 1.5, s_q 1.25.
    // loss = -q / s_q - 1e-4 H, H = -L lp / (L + 1e-8), lp = -eps^2/2 - log_std - log(2pi)/2,
    // L = lp - log(1 - tanh(x)^2 + 1e-6), x = 0.2 + e^-1 0.7.
    {
        let mut d = blank(1);
        let s = raw_for(-1.0, -10.0, 2.0);
        d.h = vec![0.2, s as f32];
        d.eps = vec![0.7];
        d.q = vec![1.5];
        d.s_q = 1.25;
        // f32 inputs: recompute log_std from the stored raw value.
        let ls = -10.0 + 6.0 * ((d.h[1] as f64).tanh() + 1.0);
        let x = 0.2f32 as f64 + ls.exp() * 0.7f32 as f64;
        let a = x.tanh();
        let lp = -0.5 * (0.7f32 as f64).powi(2) - ls - HALF_LOG_2PI;
        let l = lp - (1.0 - a * a + 1e-6).ln();
        let h_ent = -l * lp / (l + 1e-8);
        let cfg = PolicyLossConfig::tdmpc2(1, one);
        let want = [-1.5 / 1.25, -ALPHA * h_ent, 0.0, 0.0];
        check_hand(&cfg, &d, want, 2.0, "TD-MPC2");
    }

    // BMPC, A = 2: means tanh(raw) = (0.5, 0), log_std (-1, -2), eps (0.3, -0.2); planner
    // N((0, 0.25), (1, 0.5)); s_kl 2. loss = mean_i KL_i / s_kl - 1e-4 H, H = -A lp^2 / (lp +
    // 1e-8), lp = sum(-eps^2/2 - log_std) - log(2pi), no squash correction.
    {
        let mut d = blank(2);
        let (lo, hi) = (-3.0, 1.0);
        d.h = vec![
            0.5f64.atanh() as f32,
            0.0,
            raw_for(-1.0, lo, hi) as f32,
            raw_for(-2.0, lo, hi) as f32,
        ];
        d.eps = vec![0.3, -0.2];
        d.prior = vec![0.0, 0.25, 1.0, 0.5];
        d.s_kl = 2.0;
        let mu = [(d.h[0] as f64).tanh(), 0.0];
        let ls: Vec<f64> = d.h[2..]
            .iter()
            .map(|&s| lo + 0.5 * (hi - lo) * ((s as f64).tanh() + 1.0))
            .collect();
        let kl = |mp: f64, sp: f64, mq: f64, sq: f64| {
            (sq / sp).ln() + (sp * sp + (mp - mq).powi(2)) / (2.0 * sq * sq) - 0.5
        };
        let dkl = 0.5 * (kl(mu[0], ls[0].exp(), 0.0, 1.0) + kl(mu[1], ls[1].exp(), 0.25, 0.5));
        let e = [0.3f32 as f64, -0.2f32 as f64];
        let lp = -0.5 * (e[0] * e[0] + e[1] * e[1]) - ls[0] - ls[1] - 2.0 * HALF_LOG_2PI;
        let h_ent = -lp * 2.0 * lp / (lp + 1e-8);
        let cfg = PolicyLossConfig::bmpc(2, one);
        let want = [0.0, -ALPHA * h_ent, dkl / 2.0, 0.0];
        check_hand(&cfg, &d, want, 2.0, "BMPC");
    }

    // TD-M(PC)², A = 2: means (0.1, -0.3), log_std (-1, 0.5), eps (0.4, 1.1), q -2, planner
    // N((0.2, -0.5), (0.01 -> 0.05, 0.3)); s_q 3 (gate on) and 1.5 (off).
    // loss = -q / s_q + 1e-4 log pi - (A / 61) ell / s_q [s_q > 2], log pi = A (sum(-eps^2/2 -
    // log_std) - log(2pi)/2) - sum log(1 - a^2 + 1e-6), ell = A (sum(-z^2/2 - log sig') -
    // log(2pi)/2).
    for s_q in [3.0f32, 1.5] {
        let mut d = blank(2);
        let (lo, hi) = (-10.0, 2.0);
        d.h = vec![
            0.1,
            -0.3,
            raw_for(-1.0, lo, hi) as f32,
            raw_for(0.5, lo, hi) as f32,
        ];
        d.eps = vec![0.4, 1.1];
        d.q = vec![-2.0];
        d.s_q = s_q;
        d.planner = vec![0.2, -0.5, 0.01, 0.3];
        let sq = s_q as f64;
        let mut log_pi_g = 0.0;
        let mut corr = 0.0;
        let mut ell = 0.0;
        for i in 0..2 {
            let ls = lo + 0.5 * (hi - lo) * ((d.h[2 + i] as f64).tanh() + 1.0);
            let e = d.eps[i] as f64;
            let a = (d.h[i] as f64 + ls.exp() * e).tanh();
            log_pi_g += -0.5 * e * e - ls;
            corr += (1.0 - a * a + 1e-6).ln();
            let sig = (d.planner[2 + i] as f64).max(0.05f32 as f64);
            let z = (a - d.planner[i] as f64) / sig;
            ell += -0.5 * z * z - sig.ln();
        }
        let log_pi = 2.0 * (log_pi_g - HALF_LOG_2PI) - corr;
        let ell = 2.0 * (ell - HALF_LOG_2PI);
        let gate = if sq > 2.0 { 1.0 } else { 0.0 };
        let cfg = PolicyLossConfig::tdmpc_square(2, one);
        let want = [
            2.0 / sq,
            ALPHA * log_pi,
            0.0,
            -gate * ((2.0f64 / 61.0) as f32 as f64) * ell / sq,
        ];
        check_hand(&cfg, &d, want, 2.0 + ell.abs(), "TD-M(PC)²");
    }

    // PO-MPC, A = 2, lambda 1, both heads, against a prior network's raw output (same head):
    // * BMPC head: reverse closed-form KL, mean over dimensions;
    // * TD-MPC2 head: the single-sample estimate sum_i [(-eps^2/2 - log_std) - (-z^2/2 -
    //   log sig_p)] with z = (x - m_p) / sig_p (the squash corrections cancel).
    // loss = -q / s_q - 1e-4 H + D / s_kl; q 0.8, s_q 1.6, s_kl 1.3.
    for head in [PolicyHead::bmpc(2), PolicyHead::tdmpc2(2)] {
        let mut d = blank(2);
        let (lo, hi) = (head.log_std_min as f64, head.log_std_max as f64);
        d.h = vec![
            0.3,
            -0.6,
            raw_for(-0.5, lo, hi) as f32,
            raw_for(-1.2, lo, hi) as f32,
        ];
        d.eps = vec![-0.5, 0.9];
        d.prior = vec![-0.2, 0.4, 0.55, 0.3];
        d.q = vec![0.8];
        d.s_q = 1.6;
        d.s_kl = 1.3;
        let squashed = head.param == Param::Squashed;
        let map = |m: f64| if squashed { m } else { m.tanh() };
        let (mut lp, mut corr, mut dsum) = (0.0, 0.0, 0.0);
        for i in 0..2 {
            let mu = map(d.h[i] as f64);
            let ls = lo + 0.5 * (hi - lo) * ((d.h[2 + i] as f64).tanh() + 1.0);
            let e = d.eps[i] as f64;
            let x = mu + ls.exp() * e;
            let mp = map(d.prior[i] as f64);
            let lsp = lo + 0.5 * (hi - lo) * ((d.prior[2 + i] as f64).tanh() + 1.0);
            lp += -0.5 * e * e - ls;
            if squashed {
                corr += (1.0 - x.tanh().powi(2) + 1e-6).ln();
                let z = (x - mp) / lsp.exp();
                dsum += (-0.5 * e * e - ls) - (-0.5 * z * z - lsp);
            } else {
                let (s, sp) = (ls.exp(), lsp.exp());
                dsum += 0.5 * ((sp / s).ln() + (s * s + (mu - mp).powi(2)) / (2.0 * sp * sp) - 0.5);
            }
        }
        let lp = lp - 2.0 * HALF_LOG_2PI;
        let l = lp - corr;
        let h_ent = -l * 2.0 * lp / (l + 1e-8);
        let cfg = PolicyLossConfig::pompc(head, 1.0, one);
        let (q, s_q, s_kl) = (d.q[0] as f64, d.s_q as f64, d.s_kl as f64);
        let want = [-q / s_q, -ALPHA * h_ent, dsum / s_kl, 0.0];
        check_hand(&cfg, &d, want, 2.0 + dsum.abs(), "PO-MPC");
    }
}
