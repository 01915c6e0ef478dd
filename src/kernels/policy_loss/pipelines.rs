//! The pipelines of `policy_loss.wgsl`: their flags, kernel specs and override constants, and
//! every combination the launch code can build.

use super::config::{EntropyForm, KlForm, Param};
use crate::gpu::Binding::{self, Read, ReadWrite, Uniform};
use crate::gpu::KernelSpec;
use crate::gpu::shader::Header;
use crate::kernels::launch::{extend_bindings, kernel};
use crate::kernels::policy::lanes;

/// The flags (pipeline constants) of one policy-loss pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PolicyFlags {
    /// The parameterisation.
    pub param: Param,
    /// The entropy's form.
    pub entropy: EntropyForm,
    /// The KL's form, if there is a KL term.
    pub kl: Option<KlForm>,
    /// The prior rows are a network's raw output.
    pub prior_net: bool,
    /// There is a Q term.
    pub q: bool,
    /// There is an LL term.
    pub ll: bool,
    /// What the pass writes.
    pub pass: PassFlags,
}

/// The flags of one prior-fit pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PriorFlags {
    /// The prior network's parameterisation.
    pub param: Param,
    /// [`KlForm::Reverse`] or [`KlForm::Forward`].
    pub form: KlForm,
    /// What the pass writes.
    pub pass: PassFlags,
}

/// What a pass of the policy loss or the prior fit writes (the flags both kernels share).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PassFlags {
    /// Only write the divergence rows.
    pub div_only: bool,
    /// Write the gradient.
    pub grad: bool,
    /// Add it instead.
    pub grad_add: bool,
    /// Write the divergence rows too.
    pub write_d: bool,
    /// Add the sums into their slots.
    pub loss_add: bool,
}

impl PassFlags {
    /// Every combination the launch code builds: the divergence pass, then the loss pass
    /// with no gradient, a written or an added one, writing the divergence rows or not,
    /// writing or adding the sums.
    fn all() -> Vec<PassFlags> {
        let mut passes = vec![PassFlags {
            div_only: true,
            ..Default::default()
        }];
        for g in 0..3 {
            for write_d in [false, true] {
                for loss_add in [false, true] {
                    passes.push(PassFlags {
                        div_only: false,
                        grad: g > 0,
                        grad_add: g == 2,
                        write_d,
                        loss_add,
                    });
                }
            }
        }
        passes
    }

    /// The flags the kernel reads: the divergence pass writes nothing else, and only a
    /// written gradient can be added.
    fn normalised(self) -> PassFlags {
        if self.div_only {
            PassFlags {
                div_only: true,
                ..Default::default()
            }
        } else {
            PassFlags {
                grad_add: self.grad && self.grad_add,
                ..self
            }
        }
    }

    /// Their override constants.
    fn constants(self) -> [(&'static str, f64); 5] {
        [
            ("DIV_ONLY", b(self.div_only)),
            ("GRAD", b(self.grad)),
            ("GRAD_ADD", b(self.grad_add)),
            ("WRITE_D", b(self.write_d)),
            ("LOSS_ADD", b(self.loss_add)),
        ]
    }
}

/// One pipeline of `policy_loss.wgsl`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PolicyLossKernel {
    /// The action sample.
    Sample {
        /// `A`.
        action_dim: usize,
        /// The parameterisation.
        param: Param,
    },
    /// The policy loss (or its divergence pass).
    PolicyLoss {
        /// `A`.
        action_dim: usize,
        /// The flags.
        flags: PolicyFlags,
    },
    /// The prior fit (or its divergence pass).
    PriorFit {
        /// `A`.
        action_dim: usize,
        /// The flags.
        flags: PriorFlags,
    },
    /// Partials summed into slots.
    Reduce {
        /// Add into the slots.
        loss_add: bool,
    },
}

/// The written bindings and the uniforms of the loss passes: gradient rows, divergence rows,
/// slots or partials.
const LOSS_OUTPUTS: [(u32, Binding); 4] = [
    (8, ReadWrite),
    (9, ReadWrite),
    (10, ReadWrite),
    (11, Uniform),
];
const SAMPLE: KernelSpec = kernel(
    "policy_loss",
    "sample",
    &[(0, Read), (1, Read), (8, ReadWrite), (11, Uniform)],
);
const POLICY_LOSS: KernelSpec = kernel(
    "policy_loss",
    "policy_loss",
    &extend_bindings::<12, 13>(
        &extend_bindings::<8, 12>(
            &[
                (0, Read),
                (1, Read),
                (2, Read),
                (3, Read),
                (4, Read),
                (5, Read),
                (6, Read),
                (7, Read),
            ],
            &LOSS_OUTPUTS,
        ),
        // The agents' coefficients.
        &[(12, Read)],
    ),
);
const PRIOR_FIT: KernelSpec = kernel(
    "policy_loss",
    "prior_fit",
    &extend_bindings::<3, 7>(&[(0, Read), (5, Read), (7, Read)], &LOSS_OUTPUTS),
);
const REDUCE: KernelSpec = kernel(
    "policy_loss",
    "reduce",
    &[(0, Read), (10, ReadWrite), (11, Uniform)],
);

fn param_id(p: Param) -> f64 {
    match p {
        Param::Squashed => 0.0,
        Param::TanhMeanClamp => 1.0,
    }
}

fn kl_id(k: Option<KlForm>) -> f64 {
    match k {
        None => 0.0,
        Some(KlForm::Reverse) => 1.0,
        Some(KlForm::Forward) => 2.0,
        Some(KlForm::SingleSample) => 3.0,
    }
}

fn b(v: bool) -> f64 {
    v as u8 as f64
}

/// The header and override constants of one pipeline: exactly what the launch code builds
/// (flags that a pass ignores are normalised so equal pipelines share one cache entry).
pub fn pipeline_constants(
    kernel: &PolicyLossKernel,
) -> (KernelSpec, Header, Vec<(&'static str, f64)>) {
    match *kernel {
        PolicyLossKernel::Sample { action_dim, param } => (
            SAMPLE,
            Header::default(),
            vec![("A", action_dim as f64), ("PARAM", param_id(param))],
        ),
        PolicyLossKernel::PolicyLoss { action_dim, flags } => {
            let f = normalise_policy(flags);
            let mut ov = vec![
                ("A", action_dim as f64),
                ("LANES", lanes(action_dim) as f64),
                ("PARAM", param_id(f.param)),
                (
                    "ENTROPY",
                    match f.entropy {
                        EntropyForm::Scaled => 0.0,
                        EntropyForm::Original => 1.0,
                    },
                ),
                ("KL", kl_id(f.kl)),
                ("PRIOR_NET", b(f.prior_net)),
                ("Q_TERM", b(f.q)),
                ("LL_TERM", b(f.ll)),
            ];
            ov.extend(f.pass.constants());
            (POLICY_LOSS, Header::default(), ov)
        }
        PolicyLossKernel::PriorFit { action_dim, flags } => {
            let pass = flags.pass.normalised();
            let mut ov = vec![
                ("A", action_dim as f64),
                ("LANES", lanes(action_dim) as f64),
                ("PARAM", param_id(flags.param)),
                ("KL", kl_id(Some(flags.form))),
            ];
            ov.extend(pass.constants());
            (PRIOR_FIT, Header::default(), ov)
        }
        PolicyLossKernel::Reduce { loss_add } => (
            REDUCE,
            Header::default(),
            // A is unused by `reduce` but has no default.
            vec![("A", 1.0), ("LOSS_ADD", b(loss_add))],
        ),
    }
}

fn normalise_policy(f: PolicyFlags) -> PolicyFlags {
    let base = PolicyFlags {
        prior_net: f.prior_net && f.kl.is_some(),
        pass: f.pass.normalised(),
        ..f
    };
    if f.pass.div_only {
        // The divergence pass reads h, eps and the prior only.
        PolicyFlags {
            entropy: EntropyForm::Scaled,
            q: false,
            ll: false,
            ..base
        }
    } else {
        base
    }
}

/// Every pipeline the launch code can build for `action_dim` (for the shader tests).
pub fn all_kernels(action_dim: usize) -> Vec<PolicyLossKernel> {
    let mut out = vec![
        PolicyLossKernel::Reduce { loss_add: false },
        PolicyLossKernel::Reduce { loss_add: true },
    ];
    let params = [Param::Squashed, Param::TanhMeanClamp];
    let passes = PassFlags::all();
    for param in params {
        out.push(PolicyLossKernel::Sample { action_dim, param });
        for form in [KlForm::Reverse, KlForm::Forward] {
            for &pass in &passes {
                let flags = PriorFlags { param, form, pass };
                out.push(PolicyLossKernel::PriorFit { action_dim, flags });
            }
        }
        let mut kls = vec![
            (None, false),
            (Some(KlForm::Reverse), false),
            (Some(KlForm::Reverse), true),
            (Some(KlForm::Forward), false),
            (Some(KlForm::Forward), true),
        ];
        if param == Param::Squashed {
            kls.push((Some(KlForm::SingleSample), false));
            kls.push((Some(KlForm::SingleSample), true));
        }
        for &(kl, prior_net) in &kls {
            for &pass in &passes {
                if pass.div_only && kl.is_none() {
                    continue;
                }
                let terms: &[(EntropyForm, bool, bool)] = if pass.div_only {
                    &[(EntropyForm::Scaled, false, false)]
                } else {
                    &[
                        (EntropyForm::Scaled, false, false),
                        (EntropyForm::Scaled, true, false),
                        (EntropyForm::Scaled, false, true),
                        (EntropyForm::Scaled, true, true),
                        (EntropyForm::Original, false, false),
                        (EntropyForm::Original, true, false),
                        (EntropyForm::Original, false, true),
                        (EntropyForm::Original, true, true),
                    ]
                };
                for &(entropy, q, ll) in terms {
                    let flags = PolicyFlags {
                        param,
                        entropy,
                        kl,
                        prior_net,
                        q,
                        ll,
                        pass,
                    };
                    out.push(PolicyLossKernel::PolicyLoss { action_dim, flags });
                }
            }
        }
    }
    out
}
