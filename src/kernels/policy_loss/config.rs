//! What the losses are: the policy head, the terms of the policy loss and their forms, the
//! prior fit, each with its checks.

use crate::kernels::loss::RowWeights;
use crate::{Error, Result};

/// How the raw output becomes an action distribution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Param {
    /// TD-MPC2: `a = tanh(m + sig eps)`, with the squash correction in the log-prob.
    Squashed,
    /// BMPC: `a = clamp(tanh(m) + sig eps, -1, 1)`, no correction.
    TanhMeanClamp,
}

/// A Gaussian policy head: the action dimension, the parameterisation, the log-std range.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PolicyHead {
    /// Action dimension `A` (the network outputs `2A` values per row).
    pub action_dim: usize,
    /// The parameterisation.
    pub param: Param,
    /// Lower end of the log-std range.
    pub log_std_min: f32,
    /// Upper end of the log-std range.
    pub log_std_max: f32,
}

impl PolicyHead {
    /// TD-MPC2's head: squashed, log-std in [-10, 2].
    pub fn tdmpc2(action_dim: usize) -> Self {
        PolicyHead {
            action_dim,
            param: Param::Squashed,
            log_std_min: -10.0,
            log_std_max: 2.0,
        }
    }

    /// BMPC's head: tanh mean, clamped sample, log-std in [-3, 1].
    pub fn bmpc(action_dim: usize) -> Self {
        PolicyHead {
            action_dim,
            param: Param::TanhMeanClamp,
            log_std_min: -3.0,
            log_std_max: 1.0,
        }
    }

    /// `Err` unless `1 <= action_dim < 2^30` and the log-std range is finite with min < max.
    pub fn check(&self) -> Result<()> {
        if self.action_dim == 0 {
            return Err(Error::InvalidArgument(
                "policy head with action dimension 0".into(),
            ));
        }
        if self.action_dim >= 1 << 30 {
            return Err(Error::Limit(format!(
                "policy head: action dimension {} over 2^30",
                self.action_dim
            )));
        }
        check_range("policy head", self.log_std_min, self.log_std_max)
    }
}

fn check_range(what: &str, lo: f32, hi: f32) -> Result<()> {
    if lo.is_finite() && hi.is_finite() && lo < hi {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{what}: the log-std range needs finite min < max, got [{lo}, {hi}]"
        )))
    }
}

fn check_finite(what: &str, name: &str, v: f32) -> Result<()> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{what}: {name} must be finite, got {v}"
        )))
    }
}

fn check_floor(what: &str, name: &str, v: f32) -> Result<()> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{what}: {name} must be finite and > 0 (it keeps divisions by the std finite), got {v}"
        )))
    }
}

/// The entropy term's form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntropyForm {
    /// TD-MPC2's current (and BMPC's) scaled entropy `-L A lp / (L + 1e-8)`.
    Scaled,
    /// TD-MPC2's original (Oct 2023) and TD-M(PC)²'s `-log pi` with the Gaussian part times A.
    Original,
}

/// Which divergence between the learned Gaussian and the prior.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KlForm {
    /// Closed-form `KL(learned || prior)` (BMPC's direction, mode-seeking).
    Reverse,
    /// Closed-form `KL(prior || learned)` (maximum likelihood, mass-covering).
    Forward,
    /// `log pi(a) - log pi_p(a)` at the policy's sample, both squashed densities
    /// ([`Param::Squashed`] only; policy loss only).
    SingleSample,
}

/// How the per-dimension divergences combine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DimReduce {
    /// Mean over the action dimensions (BMPC).
    Mean,
    /// Sum over the action dimensions.
    Sum,
}

impl DimReduce {
    pub(super) fn factor(self, a: usize) -> f32 {
        match self {
            DimReduce::Mean => (1.0 / a as f64) as f32,
            DimReduce::Sum => 1.0,
        }
    }
}

/// What the prior rows of the policy KL hold (`[R, 2A]` each).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PriorInput {
    /// `(mean, std)`: the stored planner Gaussian, or any prior already converted.
    Gaussian,
    /// A prior network's raw output `[m | s]`, mapped with the policy's [`Param`] and this
    /// log-std range.
    Network {
        /// Lower end of the prior's log-std range.
        log_std_min: f32,
        /// Upper end of the prior's log-std range.
        log_std_max: f32,
    },
}

/// The KL term of the policy loss: `c_kl D_r / s_kl`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KlTerm {
    /// `c_kl` (PO-MPC's lambda).
    pub coef: f32,
    /// The divergence.
    pub form: KlForm,
    /// Mean or sum over dimensions.
    pub reduce: DimReduce,
    /// What the prior rows hold.
    pub prior: PriorInput,
    /// The prior's std is floored at this (> 0; keeps divisions finite).
    pub std_floor: f32,
    /// [`KlForm::SingleSample`]: the prior's pre-squash point is `atanh(a)` with `|a|` clamped
    /// to `1 - squash_clip`, i.e. `clamp(u, -atanh(1 - clip), atanh(1 - clip))` (no gradient
    /// beyond). In (0, 1).
    pub squash_clip: f32,
}

impl KlTerm {
    /// BMPC's term: reverse closed-form KL to the planner's `(mean, std)`, mean over
    /// dimensions, coefficient 1.
    pub fn bmpc() -> Self {
        KlTerm {
            coef: 1.0,
            form: KlForm::Reverse,
            reduce: DimReduce::Mean,
            prior: PriorInput::Gaussian,
            std_floor: 1e-6,
            squash_clip: 1e-6,
        }
    }

    fn check(&self, head: &PolicyHead) -> Result<()> {
        let what = "policy KL term";
        check_finite(what, "coefficient", self.coef)?;
        check_floor(what, "std_floor", self.std_floor)?;
        if !(self.squash_clip > 0.0 && self.squash_clip < 1.0) {
            return Err(Error::InvalidArgument(format!(
                "{what}: squash_clip must be in (0, 1), got {}",
                self.squash_clip
            )));
        }
        if let PriorInput::Network {
            log_std_min,
            log_std_max,
        } = self.prior
        {
            check_range("policy KL prior network", log_std_min, log_std_max)?;
        }
        if self.form == KlForm::SingleSample && head.param != Param::Squashed {
            return Err(Error::InvalidArgument(format!(
                "{what}: the single-sample estimate needs the squashed parameterisation (the \
                 clamped sample has no density); use a closed form with {:?}",
                head.param
            )));
        }
        Ok(())
    }
}

/// TD-M(PC)²'s planner log-likelihood term: `-g coef ell_r / s_q`, `g = [s_q > threshold]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LlTerm {
    /// `c_ll` (TD-M(PC)²: `prior_coef * A / 61`).
    pub coef: f32,
    /// The planner std is floored at this (TD-M(PC)²: 0.05).
    pub std_floor: f32,
    /// The term is on when `s_q > threshold` (TD-M(PC)²: 2).
    pub threshold: f32,
}

impl LlTerm {
    /// TD-M(PC)²'s defaults for `action_dim` actions: coefficient `A / 61`, floor 0.05,
    /// threshold 2.
    pub fn tdmpc_square(action_dim: usize) -> Self {
        LlTerm {
            coef: (action_dim as f64 / 61.0) as f32,
            std_floor: 0.05,
            threshold: 2.0,
        }
    }

    fn check(&self) -> Result<()> {
        let what = "policy LL term";
        check_finite(what, "coefficient", self.coef)?;
        check_floor(what, "std_floor", self.std_floor)?;
        check_finite(what, "threshold", self.threshold)
    }
}

/// The sampling-policy loss: every coefficient is a runtime value (a uniform), only the
/// presence of each term and the forms are pipeline constants.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PolicyLossConfig {
    /// The policy head.
    pub head: PolicyHead,
    /// Row weights `w_r = scale * rho^(r / B)` (TD-MPC2: `scale = 1 / (T' B)`, rho 0.5).
    pub weights: RowWeights,
    /// `c_q` of the Q term (needs [`PolicyInputs::q`](super::PolicyInputs::q) unless 0).
    pub c_q: f32,
    /// `alpha` of the entropy term (TD-MPC2, BMPC: 1e-4).
    pub alpha: f32,
    /// The entropy's form.
    pub entropy: EntropyForm,
    /// The KL term, if any (needs [`PolicyInputs::prior`](super::PolicyInputs::prior)).
    pub kl: Option<KlTerm>,
    /// The planner log-likelihood term, if any (needs
    /// [`PolicyInputs::planner`](super::PolicyInputs::planner)).
    pub ll: Option<LlTerm>,
}

impl PolicyLossConfig {
    /// TD-MPC2's policy loss: `-Q / s_q - 1e-4 H` with the scaled entropy, squashed head
    /// (TD-MPC2 uses T' = 4 states: `weights = RowWeights::new(1 / (4 B), 0.5, B)`).
    pub fn tdmpc2(action_dim: usize, weights: RowWeights) -> Self {
        PolicyLossConfig {
            head: PolicyHead::tdmpc2(action_dim),
            weights,
            c_q: 1.0,
            alpha: 1e-4,
            entropy: EntropyForm::Scaled,
            kl: None,
            ll: None,
        }
    }

    /// BMPC's: `KL(pi || b) / s_kl - 1e-4 H` with the reverse closed-form KL to the planner
    /// Gaussian, mean over dimensions, tanh-mean clamped head with log-std in [-3, 1], no Q
    /// (T' = 3).
    pub fn bmpc(action_dim: usize, weights: RowWeights) -> Self {
        PolicyLossConfig {
            head: PolicyHead::bmpc(action_dim),
            weights,
            c_q: 0.0,
            alpha: 1e-4,
            entropy: EntropyForm::Scaled,
            kl: Some(KlTerm::bmpc()),
            ll: None,
        }
    }

    /// TD-M(PC)²'s (`actor_mode = residual`): `1e-4 log pi - Q / s_q` with the original
    /// log-prob, plus `-(A / 61) ell / s_q` once `s_q > 2` (T' = 3).
    pub fn tdmpc_square(action_dim: usize, weights: RowWeights) -> Self {
        PolicyLossConfig {
            head: PolicyHead::tdmpc2(action_dim),
            weights,
            c_q: 1.0,
            alpha: 1e-4,
            entropy: EntropyForm::Original,
            kl: None,
            ll: Some(LlTerm::tdmpc_square(action_dim)),
        }
    }

    /// PO-MPC's (a.3.2): `-Q / s_q - 1e-4 H + lambda KL(pi || pi_psi) / s_kl` against the
    /// adaptive prior network (same head): the reverse closed form (mean over dimensions) for
    /// [`Param::TanhMeanClamp`], the single-sample estimate (sum) for [`Param::Squashed`].
    pub fn pompc(head: PolicyHead, lambda: f32, weights: RowWeights) -> Self {
        let (form, reduce) = match head.param {
            Param::Squashed => (KlForm::SingleSample, DimReduce::Sum),
            Param::TanhMeanClamp => (KlForm::Reverse, DimReduce::Mean),
        };
        PolicyLossConfig {
            head,
            weights,
            c_q: 1.0,
            alpha: 1e-4,
            entropy: EntropyForm::Scaled,
            kl: Some(KlTerm {
                coef: lambda,
                form,
                reduce,
                prior: PriorInput::Network {
                    log_std_min: head.log_std_min,
                    log_std_max: head.log_std_max,
                },
                ..KlTerm::bmpc()
            }),
            ll: None,
        }
    }

    /// `Err` on a bad head, weights, coefficient, range or floor.
    pub fn check(&self) -> Result<()> {
        self.head.check()?;
        self.weights.check()?;
        check_finite("policy loss", "c_q", self.c_q)?;
        check_finite("policy loss", "alpha", self.alpha)?;
        if let Some(k) = &self.kl {
            k.check(&self.head)?;
        }
        if let Some(l) = &self.ll {
            l.check()?;
        }
        Ok(())
    }
}

/// The adaptive prior's fitting loss `sum_r w_r D_r / s_d`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PriorFitConfig {
    /// The prior network's head (its parameterisation and log-std range).
    pub head: PolicyHead,
    /// [`KlForm::Reverse`]: `KL(pi_psi || b)`; [`KlForm::Forward`]: `KL(b || pi_psi)`.
    pub form: KlForm,
    /// Mean or sum over dimensions.
    pub reduce: DimReduce,
    /// The planner's std is floored at this (> 0).
    pub std_floor: f32,
    /// Row weights (PO-MPC: `1 / (T B)`, rho 0.5).
    pub weights: RowWeights,
}

impl PriorFitConfig {
    /// PO-MPC's default (a.7): reverse KL, mean over dimensions, std floor 1e-6.
    pub fn new(head: PolicyHead, weights: RowWeights) -> Self {
        PriorFitConfig {
            head,
            form: KlForm::Reverse,
            reduce: DimReduce::Mean,
            std_floor: 1e-6,
            weights,
        }
    }

    /// `Err` on a bad head, weights, form or floor.
    pub fn check(&self) -> Result<()> {
        self.head.check()?;
        self.weights.check()?;
        check_floor("prior fit", "std_floor", self.std_floor)?;
        if self.form == KlForm::SingleSample {
            return Err(Error::InvalidArgument(
                "prior fit: the divergence is a closed form, Reverse or Forward".into(),
            ));
        }
        Ok(())
    }
}
