//! A population's plan step (issue 21): agents with their own weights and seeds, stacked in
//! one [`WorldModel::population`], plan in one step exactly what each plans alone (kept
//! samples and chosen samples equal; actions, means, stds, values and the warm start within
//! f32 round-off), over cold, mixed and warm starts, one and two environments per agent,
//! training and evaluation plans, an episodic model, and every precision the device has.
//! The single planner is itself checked against the f64 mirror (tests/planner.rs), so this
//! composes that reference.

mod common;

use common::gpus;
use pompc::model::{ModelSpec, Weights, WorldModel};
use pompc::planner::{PlanMode, Planner, PlannerConfig, PlannerMode};
use pompc::{Error, Gpu, Precision};
use rand::Rng;

const TOL: f64 = 1e-5;

fn fixture_weights() -> Weights {
    Weights::load(format!(
        "{}/tests/fixtures/tiny.safetensors",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// `base` with every parameter moved by up to `scale` (relative), seeded: another agent of
/// the same model, whose plans differ from `base`'s.
fn perturbed(base: &Weights, seed: u64, scale: f32) -> Weights {
    let mut w = base.clone();
    let mut r = common::rng(&format!("perturb {seed}"));
    for t in w.tensors.values_mut() {
        for v in &mut t.data {
            *v += scale * r.random_range(-1.0..1.0) * v.abs().max(0.05);
        }
    }
    w
}

fn small_cfg(mode: PlannerMode, plan_mode: PlanMode) -> PlannerConfig {
    PlannerConfig {
        horizon: 3,
        num_samples: 40,
        num_elites: 8,
        num_pi_trajs: 5,
        iterations: 3,
        mode,
        plan_mode,
        ..PlannerConfig::tdmpc2(3)
    }
}

fn close(tag: &str, what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{tag}: {what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let d = f64::from(*g - *w).abs();
        assert!(
            d <= TOL * f64::from(w.abs()).max(1.0),
            "{tag}: {what}[{i}]: population {g} alone {w} (difference {d:e})"
        );
    }
}

/// Plan three calls for a population of `agents` (each with `per` environments) and for each
/// agent alone; compare agent by agent.
fn population_plans_as_alone(
    gpu: &Gpu,
    agents: &[Weights],
    seeds: &[u64],
    cfg: &PlannerConfig,
    per: usize,
    precision: Precision,
) {
    let g = agents.len();
    let spec = &agents[0].spec;
    let (o, a) = (spec.obs_dim, spec.action_dim);
    let model = WorldModel::population(gpu, agents, precision).unwrap();
    assert_eq!(model.agents(), g);
    let mut together = Planner::new(gpu, &model, cfg.clone())
        .unwrap()
        .with_seeds(seeds)
        .unwrap();
    let alone_models: Vec<WorldModel> = agents
        .iter()
        .map(|w| WorldModel::with_precision(gpu, w, precision).unwrap())
        .collect();
    let mut alone: Vec<Planner> = alone_models
        .iter()
        .zip(seeds)
        .map(|(m, &seed)| {
            let cfg = PlannerConfig {
                seed,
                ..cfg.clone()
            };
            Planner::new(gpu, m, cfg).unwrap()
        })
        .collect();
    let mut r = common::rng(&format!("population obs {g} {per}"));
    let b = g * per;
    let firsts: [Vec<bool>; 3] = [
        vec![true; b],
        (0..b).map(|i| i % 2 == 1).collect(),
        vec![false; b],
    ];
    for (call, first) in firsts.iter().enumerate() {
        let obs: Vec<f32> = (0..b * o).map(|_| r.random_range(-1.5..1.5)).collect();
        let plan = together.plan(&obs, first).unwrap();
        assert_eq!(plan.batch, b);
        let (kept, weights) = together.last_kept().unwrap();
        let warm = together.warm_start().unwrap();
        let kw = kept.len() / b;
        let tw = warm.len() / b;
        for (i, single) in alone.iter_mut().enumerate() {
            let envs = i * per..(i + 1) * per;
            let tag = format!(
                "{:?} {:?} {precision:?}: agent {i} of {g}, {per} envs, call {call}",
                cfg.mode, cfg.plan_mode
            );
            let rows = |v: &[f32], w: usize| v[envs.start * w..envs.end * w].to_vec();
            let want = single.plan(&rows(&obs, o), &first[envs.clone()]).unwrap();
            let (want_kept, want_weights) = single.last_kept().unwrap();
            assert_eq!(
                kept[envs.start * kw..envs.end * kw],
                want_kept[..],
                "{tag}: kept samples"
            );
            assert_eq!(plan.chosen[envs.clone()], want.chosen[..], "{tag}: chosen");
            close(&tag, "elite weights", &rows(&weights, kw), &want_weights);
            close(&tag, "action", &rows(&plan.action, a), &want.action);
            close(&tag, "mean", &rows(&plan.mean, a), &want.mean);
            close(&tag, "std", &rows(&plan.std, a), &want.std);
            close(&tag, "value", &rows(&plan.value, 1), &want.value);
            close(
                &tag,
                "warm start",
                &rows(&warm, tw),
                &single.warm_start().unwrap(),
            );
        }
    }
}

#[test]
fn a_population_plans_what_each_agent_plans_alone() {
    let base = fixture_weights();
    let agents = [
        base.clone(),
        perturbed(&base, 1, 0.3),
        perturbed(&base, 2, 0.3),
    ];
    for gpu in gpus() {
        let cfg = small_cfg(PlannerMode::EliteMppi, PlanMode::Train);
        population_plans_as_alone(gpu, &agents[..2], &[3, 11], &cfg, 1, Precision::F32);
        population_plans_as_alone(gpu, &agents, &[5, 5, 9], &cfg, 2, Precision::F32);
        let cfg = small_cfg(PlannerMode::Mppi { lambda: 0.7 }, PlanMode::Eval);
        population_plans_as_alone(gpu, &agents[1..], &[0, 1], &cfg, 1, Precision::F32);
    }
}

#[test]
fn a_population_plans_as_alone_at_every_precision() {
    let base = fixture_weights();
    let agents = [perturbed(&base, 3, 0.2), perturbed(&base, 4, 0.2)];
    let cfg = small_cfg(PlannerMode::EliteMppi, PlanMode::Train);
    for gpu in gpus() {
        for precision in [Precision::F16, Precision::TensorCore] {
            if gpu.supports(precision).is_err() {
                continue;
            }
            population_plans_as_alone(gpu, &agents, &[21, 22], &cfg, 1, precision);
        }
    }
}

#[test]
fn an_episodic_population_plans_as_alone() {
    let spec = ModelSpec {
        episodic: true,
        ..fixture_weights().spec
    };
    let agents = [
        Weights::init(&spec, 1).unwrap(),
        perturbed(&Weights::init(&spec, 2).unwrap(), 7, 0.5),
    ];
    let cfg = small_cfg(PlannerMode::EliteMppi, PlanMode::Train);
    for gpu in gpus() {
        population_plans_as_alone(gpu, &agents, &[1, 2], &cfg, 2, Precision::F32);
    }
}

#[test]
fn bad_populations_are_errors() {
    let gpu = &gpus()[0];
    let base = fixture_weights();
    let other = Weights::init(
        &ModelSpec {
            obs_dim: base.spec.obs_dim + 1,
            ..base.spec.clone()
        },
        0,
    )
    .unwrap();
    let e = WorldModel::population(gpu, &[base.clone(), other], Precision::F32);
    assert!(matches!(e, Err(Error::InvalidArgument(_))));
    let e = WorldModel::population(gpu, &[], Precision::F32);
    assert!(matches!(e, Err(Error::InvalidArgument(_))));
    let model = WorldModel::population(gpu, &[base.clone(), base.clone()], Precision::F32).unwrap();
    let cfg = small_cfg(PlannerMode::EliteMppi, PlanMode::Train);
    let planner = Planner::new(gpu, &model, cfg.clone()).unwrap();
    assert_eq!(planner.seeds(), &[cfg.seed, cfg.seed + 1]);
    assert!(matches!(
        planner.with_seeds(&[1, 2, 3]),
        Err(Error::InvalidArgument(_))
    ));
    // Three environments do not split over two agents.
    let mut planner = Planner::new(gpu, &model, cfg).unwrap();
    let o = base.spec.obs_dim;
    let e = planner.plan(&vec![0.0; 3 * o], &[true; 3]);
    assert!(matches!(e, Err(Error::InvalidArgument(_))), "{e:?}");
    let plan = planner.plan(&vec![0.0; 2 * o], &[true; 2]).unwrap();
    assert_eq!(plan.batch, 2);
}
