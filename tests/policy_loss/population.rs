//! Populations: one pass over several agents (rows back to back, each agent's scales,
//! coefficients and loss slots) gives every agent bit for bit what its own pass gives alone,
//! for the policy loss, its divergence pass and the prior fit, through one workgroup per agent
//! and through partial sums; population requests that cannot work are errors.

use crate::common::{gpus, rng};
use crate::harness::*;
use pompc::kernels::loss::{GradOut, LossOut, RowWeights};
use pompc::kernels::policy_loss::{
    self as pl, EntropyForm, KlForm, Param, PolicyInputs, PolicyLossConfig, PriorFitConfig,
    PriorFitInputs, QInput, Rows, Scalar,
};
use pompc::kernels::two_hot::RowLayout;
use pompc::{Error, Gpu, GpuBuffer, Recorder};
use rand::Rng;

const AGENTS: usize = 3;
/// Elements between one agent's loss slots and the next's (5 slots each, 2 spare).
const SLOT_STRIDE: usize = 7;
/// Agent 0's first slot and first scale.
const FIRST: usize = 1;

fn mk(gpu: &Gpu, label: &str, v: &[f32]) -> GpuBuffer<f32> {
    GpuBuffer::from_slice(gpu, label, v).unwrap()
}

/// Agent `g`'s rows of `width` in a buffer of every agent's rows.
fn agent_rows(buf: &GpuBuffer<f32>, g: usize, rows: usize, width: usize) -> Rows<'_> {
    Rows::at(buf, RowLayout::at(g * rows * width, width))
}

/// Each agent's config: the shared structure with its own (c_q, alpha, c_kl, c_ll).
fn agent_config(cfg: &PolicyLossConfig, c: &[f32]) -> PolicyLossConfig {
    let mut own = *cfg;
    own.c_q = c[0];
    own.alpha = c[1];
    if let Some(k) = &mut own.kl {
        k.coef = c[2];
    }
    if let Some(l) = &mut own.ll {
        l.coef = c[3];
    }
    own
}

/// The inputs of every agent back to back, and the scales at `FIRST + g`.
struct Buffers {
    h: GpuBuffer<f32>,
    eps: GpuBuffer<f32>,
    q: GpuBuffer<f32>,
    dq: GpuBuffer<f32>,
    prior: GpuBuffer<f32>,
    planner: GpuBuffer<f32>,
    s_q: GpuBuffer<f32>,
    s_kl: GpuBuffer<f32>,
}

fn upload(gpu: &Gpu, data: &[Data]) -> Buffers {
    let cat = |f: &dyn Fn(&Data) -> &Vec<f32>| -> Vec<f32> {
        data.iter().flat_map(|d| f(d).iter().copied()).collect()
    };
    let scales = |f: &dyn Fn(&Data) -> f32| -> Vec<f32> {
        let mut v = vec![100.0; FIRST];
        v.extend(data.iter().map(f));
        v.push(100.0);
        v
    };
    Buffers {
        h: mk(gpu, "h", &cat(&|d| &d.h)),
        eps: mk(gpu, "eps", &cat(&|d| &d.eps)),
        q: mk(gpu, "q", &cat(&|d| &d.q)),
        dq: mk(gpu, "dq", &cat(&|d| &d.dq)),
        prior: mk(gpu, "prior", &cat(&|d| &d.prior)),
        planner: mk(gpu, "planner", &cat(&|d| &d.planner)),
        s_q: mk(gpu, "s_q", &scales(&|d| d.s_q)),
        s_kl: mk(gpu, "s_kl", &scales(&|d| d.s_kl)),
    }
}

/// The policy inputs of agent `g` alone (`None`), or of the whole population.
fn policy_inputs<'a>(
    cfg: &PolicyLossConfig,
    b: &'a Buffers,
    rows: usize,
    who: Option<usize>,
) -> PolicyInputs<'a> {
    let a = cfg.head.action_dim;
    let g = who.unwrap_or(0);
    let r = |buf, w| agent_rows(buf, g, rows, w);
    PolicyInputs {
        q: Some(QInput {
            values: r(&b.q, 1),
            grad: r(&b.dq, a),
        }),
        prior: cfg.kl.is_some().then(|| r(&b.prior, 2 * a)),
        planner: cfg.ll.is_some().then(|| r(&b.planner, 2 * a)),
        s_q: Some(Scalar {
            buf: &b.s_q,
            index: FIRST + g,
        }),
        s_kl: Some(Scalar {
            buf: &b.s_kl,
            index: FIRST + g,
        }),
        ..PolicyInputs::new(r(&b.h, 2 * a), r(&b.eps, a))
    }
}

/// The gradient, divergence rows and loss slots that one pass writes.
struct Outs {
    grad: GpuBuffer<f32>,
    div: GpuBuffer<f32>,
    losses: GpuBuffer<f32>,
}

impl Outs {
    fn new(gpu: &Gpu, rows: usize, a: usize) -> Outs {
        let n = AGENTS * rows;
        Outs {
            grad: mk(gpu, "dh", &vec![poison(); n * 2 * a]),
            div: mk(gpu, "divergence", &vec![poison(); n]),
            losses: mk(gpu, "losses", &[poison(); FIRST + AGENTS * SLOT_STRIDE]),
        }
    }

    fn read(&self, gpu: &Gpu) -> [Vec<u32>; 3] {
        let bits = |b: &GpuBuffer<f32>| -> Vec<u32> {
            b.download(gpu)
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        };
        [bits(&self.grad), bits(&self.div), bits(&self.losses)]
    }
}

/// The divergence pass (with a KL term), then the loss pass with its gradient, of agent `g`
/// alone or of the population, into `o` at the agent's places.
#[allow(clippy::too_many_arguments)]
fn record_policy(
    rec: &mut Recorder,
    cfg: &PolicyLossConfig,
    x: &PolicyInputs,
    rows: usize,
    g: usize,
    o: &Outs,
    scratch: Option<&GpuBuffer<f32>>,
) -> pompc::Result<()> {
    let a = cfg.head.action_dim;
    if cfg.kl.is_some() {
        let d = agent_rows(&o.div, g, rows, 1);
        pl::record_policy_loss(rec, cfg, rows, x, pl::Pass::Divergence(d))?;
    }
    let grad = GradOut {
        buf: &o.grad,
        at: RowLayout::at(g * rows * 2 * a, 2 * a),
        accumulate: false,
    };
    let loss = LossOut {
        losses: &o.losses,
        index: FIRST + g * SLOT_STRIDE,
        accumulate: false,
    };
    let pass = pl::Pass::loss(Some(grad), None, loss, scratch);
    pl::record_policy_loss(rec, cfg, rows, x, pass)
}

fn check_policy_population(gpu: &Gpu, r: &mut impl Rng, cfg: &PolicyLossConfig, rows: usize) {
    let a = cfg.head.action_dim;
    let tag = format!(
        "{:?} kl={:?} ll={} A={a} rows={rows} checks={:?}",
        cfg.head.param,
        cfg.kl.map(|k| (k.form, k.prior)),
        cfg.ll.is_some(),
        gpu.shader_checks()
    );
    let data: Vec<Data> = (0..AGENTS).map(|_| random_data(r, cfg, rows)).collect();
    let b = upload(gpu, &data);
    let coefs: Vec<f32> = (0..4 * AGENTS)
        .map(|i| match i % 4 {
            1 => r.random_range(0.0..0.5),
            _ => r.random_range(-2.0..2.0),
        })
        .collect();
    let coef_buf = mk(gpu, "coefficients", &coefs);
    // The population: one pass (each), partials in a scratch of the caller's.
    let pop = Outs::new(gpu, rows, a);
    let scratch_len = AGENTS * pl::policy_loss_scratch_len(cfg, rows);
    let scratch = (scratch_len > 0).then(|| GpuBuffer::<f32>::new(gpu, "scratch", scratch_len));
    let scratch = scratch.map(|s| s.unwrap());
    let mut x = policy_inputs(cfg, &b, rows, None);
    x.agents = pl::Agents::new(AGENTS, SLOT_STRIDE).with_coefs(&coef_buf);
    let mut rec = Recorder::new(gpu);
    record_policy(&mut rec, cfg, &x, rows, 0, &pop, scratch.as_ref()).unwrap();
    rec.submit().unwrap();
    // Each agent alone with its coefficients in its config.
    let alone = Outs::new(gpu, rows, a);
    let mut rec = Recorder::new(gpu);
    for g in 0..AGENTS {
        let own = agent_config(cfg, &coefs[4 * g..4 * g + 4]);
        let x = policy_inputs(&own, &b, rows, Some(g));
        record_policy(&mut rec, &own, &x, rows, g, &alone, None).unwrap();
    }
    rec.submit().unwrap();
    let [pg, pd, pls] = pop.read(gpu);
    let [ag, ad, als] = alone.read(gpu);
    assert_eq!(pg, ag, "{tag}: gradients");
    assert_eq!(pd, ad, "{tag}: divergence rows");
    assert_eq!(pls, als, "{tag}: loss slots");
    // The spare slots between agents stay as they were.
    assert!(
        pls[FIRST + 5..FIRST + SLOT_STRIDE]
            .iter()
            .all(|&v| v == poison().to_bits())
    );
}

fn check_prior_population(gpu: &Gpu, r: &mut impl Rng, cfg: &PriorFitConfig, rows: usize) {
    let a = cfg.head.action_dim;
    let tag = format!("prior fit {:?} A={a} rows={rows}", cfg.form);
    let n = AGENTS * rows;
    let out = mk(gpu, "prior output", &unif(r, n * 2 * a, -1.5, 1.5));
    let mut plan = Vec::with_capacity(n * 2 * a);
    for _ in 0..n {
        plan.extend(unif(r, a, -1.0, 1.0));
        plan.extend(unif(r, a, -0.2, 1.5));
    }
    let planner = mk(gpu, "planner", &plan);
    let mut sd = vec![100.0; FIRST];
    sd.extend(unif(r, AGENTS, 0.5, 3.0));
    let s_d = mk(gpu, "s_d", &sd);
    let run = |who: Option<usize>, o: &Outs| {
        let mut rec = Recorder::new(gpu);
        for g in who.map_or(0..1, |g| g..g + 1) {
            let mut x = PriorFitInputs::new(
                agent_rows(&out, g, rows, 2 * a),
                agent_rows(&planner, g, rows, 2 * a),
                Some(Scalar {
                    buf: &s_d,
                    index: FIRST + g,
                }),
            );
            if who.is_none() {
                x.agents = pl::Agents::new(AGENTS, SLOT_STRIDE);
            }
            let d = agent_rows(&o.div, g, rows, 1);
            pl::record_prior_fit(&mut rec, cfg, rows, &x, pl::Pass::Divergence(d)).unwrap();
            let grad = GradOut {
                buf: &o.grad,
                at: RowLayout::at(g * rows * 2 * a, 2 * a),
                accumulate: false,
            };
            let loss = LossOut {
                losses: &o.losses,
                index: FIRST + g * SLOT_STRIDE,
                accumulate: false,
            };
            let pass = pl::Pass::loss(Some(grad), None, loss, None);
            pl::record_prior_fit(&mut rec, cfg, rows, &x, pass).unwrap();
        }
        rec.submit().unwrap();
    };
    let pop = Outs::new(gpu, rows, a);
    run(None, &pop);
    let alone = Outs::new(gpu, rows, a);
    for g in 0..AGENTS {
        run(Some(g), &alone);
    }
    let [pg, pd, pls] = pop.read(gpu);
    let [ag, ad, als] = alone.read(gpu);
    assert_eq!(pg, ag, "{tag}: gradients");
    assert_eq!(pd, ad, "{tag}: divergence rows");
    assert_eq!(pls, als, "{tag}: loss slots");
}

#[test]
fn a_population_pass_is_each_agent_alone() {
    let mut r = rng("policy_loss population");
    for gpu in gpus() {
        // A = 6: 32 rows a workgroup (5 rows: one workgroup an agent; 70: partial sums);
        // A = 38: 4 rows a workgroup.
        for (a, rows) in [(6, 5), (6, 70), (38, 9)] {
            for head in heads(a) {
                for kl in kl_structures(head.param) {
                    let entropy = if r.random() {
                        EntropyForm::Scaled
                    } else {
                        EntropyForm::Original
                    };
                    let ll = head.param == Param::Squashed && r.random();
                    let cfg = random_config(&mut r, head, rows, entropy, kl, ll);
                    check_policy_population(gpu, &mut r, &cfg, rows);
                }
                for form in [KlForm::Reverse, KlForm::Forward] {
                    let cfg = PriorFitConfig {
                        form,
                        ..PriorFitConfig::new(head, random_weights(&mut r, rows))
                    };
                    check_prior_population(gpu, &mut r, &cfg, rows);
                }
            }
        }
    }
}

#[test]
fn population_requests_that_cannot_work_are_errors() {
    let gpus = gpus();
    let gpu = &gpus[0];
    let mut r = rng("policy_loss population requests");
    let (a, rows) = (6, 40);
    let head = heads(a)[0];
    let cfg = random_config(
        &mut r,
        head,
        rows,
        EntropyForm::Scaled,
        Some((KlForm::SingleSample, true)),
        false,
    );
    let data: Vec<Data> = (0..AGENTS)
        .map(|_| random_data(&mut r, &cfg, rows))
        .collect();
    let b = upload(gpu, &data);
    let o = Outs::new(gpu, rows, a);
    let short_coefs = mk(gpu, "coefficients", &[1.0; 4 * AGENTS - 1]);
    let try_policy = |agents: pl::Agents| -> pompc::Result<()> {
        let mut x = policy_inputs(&cfg, &b, rows, None);
        x.agents = agents;
        let mut rec = Recorder::new(gpu);
        record_policy(&mut rec, &cfg, &x, rows, 0, &o, None)
    };
    type Case<'a> = (&'a str, pl::Agents<'a>, fn(&Error) -> bool);
    let cases: Vec<Case> = vec![
        ("no agents", pl::Agents::new(0, SLOT_STRIDE), |e| {
            matches!(e, Error::InvalidArgument(_))
        }),
        ("slots overlap", pl::Agents::new(AGENTS, 4), |e| {
            matches!(e, Error::InvalidArgument(_))
        }),
        (
            "short coefficients",
            pl::Agents::new(AGENTS, SLOT_STRIDE).with_coefs(&short_coefs),
            |e| matches!(e, Error::Shape(_)),
        ),
        // Rows, scales and slots sized for 3 agents.
        (
            "rows past the end",
            pl::Agents::new(AGENTS + 1, SLOT_STRIDE),
            |e| matches!(e, Error::Shape(_)),
        ),
        (
            "too many agents for a dispatch",
            pl::Agents::new(1 << 20, SLOT_STRIDE),
            |e| matches!(e, Error::Limit(_) | Error::Shape(_)),
        ),
    ];
    for (what, agents, kind) in cases {
        let e = try_policy(agents).expect_err(what);
        assert!(kind(&e), "{what}: {e}");
    }
    // Scales past the end for the population (one spare element after agent 2's).
    let mut x = policy_inputs(&cfg, &b, rows, None);
    x.agents = pl::Agents::new(AGENTS, SLOT_STRIDE);
    x.s_q = Some(Scalar {
        buf: &b.s_q,
        index: FIRST + 2,
    });
    let mut rec = Recorder::new(gpu);
    let e = record_policy(&mut rec, &cfg, &x, rows, 0, &o, None).unwrap_err();
    assert!(matches!(e, Error::Shape(_)), "scales: {e}");
    // Slots past the end of the losses buffer.
    let x = PolicyInputs {
        agents: pl::Agents::new(AGENTS, SLOT_STRIDE + 2),
        ..policy_inputs(&cfg, &b, rows, None)
    };
    let mut rec = Recorder::new(gpu);
    let e = record_policy(&mut rec, &cfg, &x, rows, 0, &o, None).unwrap_err();
    assert!(matches!(e, Error::Shape(_)), "slots: {e}");
    // A scratch sized for one agent.
    let one = pl::policy_loss_scratch_len(&cfg, rows);
    let scratch = GpuBuffer::<f32>::new(gpu, "scratch", one).unwrap();
    let x = PolicyInputs {
        agents: pl::Agents::new(AGENTS, SLOT_STRIDE),
        ..policy_inputs(&cfg, &b, rows, None)
    };
    let mut rec = Recorder::new(gpu);
    let e = record_policy(&mut rec, &cfg, &x, rows, 0, &o, Some(&scratch)).unwrap_err();
    assert!(matches!(e, Error::Shape(_)), "scratch: {e}");
    // Coefficients belong to the policy loss.
    let coefs = mk(gpu, "coefficients", &[1.0; 4 * AGENTS]);
    let mut x = PriorFitInputs::new(Rows::new(&b.h, 2 * a), Rows::new(&b.planner, 2 * a), None);
    x.agents = pl::Agents::new(AGENTS, SLOT_STRIDE).with_coefs(&coefs);
    let pcfg = PriorFitConfig::new(head, RowWeights::uniform(1.0));
    let mut rec = Recorder::new(gpu);
    let e = pl::record_prior_fit(
        &mut rec,
        &pcfg,
        rows,
        &x,
        pl::Pass::Divergence(Rows::new(&o.div, 1)),
    )
    .unwrap_err();
    assert!(
        matches!(e, Error::InvalidArgument(_)),
        "prior coefficients: {e}"
    );
}
