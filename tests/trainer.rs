//! The training loop end to end on a CI-sized task: learning must lift the return clearly
//! above a random policy's, checkpoints must round-trip every piece of state, and BMPC's lazy
//! reanalysis must write fresh planner Gaussians into the replay buffer.

mod common;

use pompc::env::{Env, Step, Tolerance};
use pompc::train::{Event, Method, Reanalyze, TrainConfig, Trainer};
use pompc::{Error, Precision, Result};
use rand::{Rng, SeedableRng};

/// A point mass on a line that must reach and hold x = 0.6 within 40 steps: dense reward,
/// so that a few hundred steps of learning show.
struct Reach {
    x: f64,
    v: f64,
    t: usize,
}

const LEN: usize = 40;

impl Env for Reach {
    fn name(&self) -> &str {
        "reach"
    }
    fn obs_dim(&self) -> usize {
        2
    }
    fn action_dim(&self) -> usize {
        1
    }
    fn episode_len(&self) -> usize {
        LEN
    }
    fn action_repeat(&self) -> usize {
        1
    }
    fn reset(&mut self, seed: u64) -> Vec<f32> {
        let mut r = rand::rngs::StdRng::seed_from_u64(seed);
        self.x = r.random_range(-0.6..-0.2);
        self.v = 0.0;
        self.t = 0;
        vec![self.x as f32, self.v as f32]
    }
    fn step(&mut self, action: &[f32]) -> Result<Step> {
        if action.len() != 1 {
            return Err(Error::Shape("one action".into()));
        }
        let u = (action[0] as f64).clamp(-1.0, 1.0);
        self.v = 0.8 * self.v + 0.1 * u;
        self.x = (self.x + self.v).clamp(-1.5, 1.5);
        self.t += 1;
        let reward = Tolerance::bounds(-0.05, 0.05)
            .margin(0.5)
            .reward(self.x - 0.6) as f32;
        Ok(Step {
            obs: vec![self.x as f32, self.v as f32],
            reward,
            done: self.t == LEN,
        })
    }
}

fn reach() -> Box<dyn Env> {
    Box::new(Reach {
        x: 0.0,
        v: 0.0,
        t: 0,
    })
}

fn config(method: Method, steps: usize, seed: u64) -> TrainConfig {
    let env = reach();
    // The quick preset (tiny model, 8 elites, 4 policy trajectories), smaller still.
    let mut c = TrainConfig::quick(env.as_ref(), method, steps, seed).unwrap();
    c.planner.num_samples = 32;
    c.planner.iterations = 2;
    c.batch = 16;
    c.seed_steps = 2 * LEN;
    c.eval_every = 0;
    c.log_every = 50;
    c
}

fn random_return(episodes: u64) -> f32 {
    let mut env = reach();
    let mut r = rand::rngs::StdRng::seed_from_u64(7);
    let mut total = 0.0;
    for e in 0..episodes {
        env.reset(1000 + e);
        loop {
            let s = env.step(&[r.random_range(-1.0..=1.0)]).unwrap();
            total += s.reward;
            if s.done {
                break;
            }
        }
    }
    total / episodes as f32
}

#[test]
fn learning_lifts_the_return_above_a_random_policy() {
    learns_at(Precision::F32);
}

/// The same with the planner's model in f16, its weights rounded from the trainer's after
/// every update (`TrainConfig::planner_precision`).
#[test]
fn learning_with_an_f16_planner() {
    let gpu = &common::gpus()[1];
    if let Err(e) = gpu.supports(Precision::F16) {
        let mut cfg = config(Method::Tdmpc2, 100, 3);
        cfg.planner_precision = Precision::F16;
        let r = Trainer::new(gpu, reach(), reach(), cfg);
        assert!(matches!(r, Err(Error::Unsupported(_))), "{e}");
        return;
    }
    learns_at(Precision::F16);
}

fn learns_at(precision: Precision) {
    let gpu = &common::gpus()[1];
    let random = random_return(20);
    let steps = 8 * LEN;
    let mut cfg = config(Method::Pompc { lambda: 1.0 }, steps, 3);
    cfg.planner_precision = precision;
    let mut tr = Trainer::new(gpu, reach(), reach(), cfg).unwrap();
    let mut losses = Vec::new();
    tr.run(steps, &mut |e: &Event| {
        if let Event::Losses { world, policy, .. } = e {
            losses.push((*world, *policy));
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(tr.step(), steps);
    assert_eq!(
        tr.updates(),
        steps,
        "seed_steps pre-training updates, then one per step"
    );
    for (w, p) in &losses {
        assert!(w.total.is_finite() && w.grad_norm.is_finite(), "{w:?}");
        assert!(p.is_some_and(|p| p.total.is_finite()), "{p:?}");
    }
    let eval = tr.evaluate(4, 99).unwrap();
    let mean = eval.iter().sum::<f32>() / eval.len() as f32;
    eprintln!(
        "planner {precision:?}: random policy {random:.2}, trained {mean:.2} ({eval:?}) of at \
         most {LEN}"
    );
    assert!(
        mean > random + 0.4 * (LEN as f32 - random),
        "trained return {mean:.2} not clearly above the random policy's {random:.2}"
    );
}

#[test]
fn checkpoints_round_trip_and_resume() {
    let gpu = &common::gpus()[1];
    let dir = std::env::temp_dir().join(format!("pompc-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("run.safetensors");
    let steps = 3 * LEN + 5; // ends inside an episode
    let cfg = config(Method::Pompc { lambda: 1.0 }, 6 * LEN, 5);
    let mut tr = Trainer::new(gpu, reach(), reach(), cfg.clone()).unwrap();
    tr.run(steps, &mut |_| Ok(())).unwrap();
    tr.save(&path).unwrap();
    let back = Trainer::resume(gpu, reach(), reach(), cfg.clone(), &path).unwrap();
    assert_eq!(back.step(), tr.step());
    assert_eq!(back.updates(), tr.updates());
    assert_eq!(back.history(), tr.history());
    // The unfinished episode is not saved; every finished one is, bit for bit.
    let bits = |d: pompc::train::BufferData| {
        let b = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<u32>>();
        (b(d.obs), b(d.action), b(d.reward), b(d.planner), d.lengths)
    };
    assert!(
        bits(back.buffer().export()) == bits(tr.buffer().export()),
        "replay buffer"
    );
    assert_eq!(back.buffer().episodes(), 3);
    let (a, b) = (tr.weights().unwrap(), back.weights().unwrap());
    assert_eq!(a.tensors, b.tensors);
    assert_eq!(a.extra, b.extra, "Polyak target heads");
    let dl = |buf: &pompc::GpuBuffer<f32>| buf.download(gpu).unwrap();
    let pi = pompc::train::ParamLayout::new(&a.spec).net(pompc::model::Net::Policy);
    // The policy optimizers keep moments over the whole layout; only the policy's range is
    // used and saved.
    for (x, y, r) in [
        (
            tr.world().adam(),
            back.world().adam(),
            0..pi.end.max(tr.world().adam().len()),
        ),
        (tr.policy().adam(), back.policy().adam(), pi.clone()),
        (
            tr.policy().prior_adam().unwrap(),
            back.policy().prior_adam().unwrap(),
            pi.clone(),
        ),
    ] {
        assert_eq!(dl(x.m())[r.clone()], dl(y.m())[r.clone()]);
        assert_eq!(dl(x.v())[r.clone()], dl(y.v())[r]);
        assert_eq!(
            x.read_state(gpu).unwrap().step,
            y.read_state(gpu).unwrap().step
        );
    }
    assert_eq!(
        dl(tr.policy().prior_params().unwrap())[pi.clone()],
        dl(back.policy().prior_params().unwrap())[pi]
    );
    for (x, y) in tr.policy().scales().iter().zip(back.policy().scales()) {
        assert_eq!(x.read_value(gpu).unwrap(), y.read_value(gpu).unwrap());
    }
    // The resumed run goes on; a run of another method refuses the checkpoint.
    let mut back = back;
    back.run(steps + LEN, &mut |_| Ok(())).unwrap();
    assert_eq!(back.step(), steps + LEN);
    let other = Trainer::resume(gpu, reach(), reach(), config(Method::Tdmpc2, 100, 5), &path);
    assert!(matches!(other, Err(Error::InvalidArgument(m)) if m.contains("pompc.method")));
    // The checkpoint is also a model file.
    let w = pompc::model::Weights::from_bytes_with_spec(&std::fs::read(&path).unwrap(), &a.spec)
        .unwrap();
    assert_eq!(w.tensors, a.tensors);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bmpc_reanalysis_rewrites_the_buffer() {
    let gpu = &common::gpus()[1];
    let mut cfg = config(Method::Bmpc, 2 * LEN + 3, 11);
    cfg.reanalyze = Some(Reanalyze {
        interval: 1,
        sequences: 4,
    });
    let mut tr = Trainer::new(gpu, reach(), reach(), cfg).unwrap();
    tr.run(2 * LEN - 1, &mut |_| Ok(())).unwrap();
    // Seed phase only so far: no planner Gaussians stored.
    let before = tr.buffer().export();
    assert!(before.planner.iter().all(|v| v.is_nan()));
    tr.run(2 * LEN + 3, &mut |_| Ok(())).unwrap();
    let after = tr.buffer().export();
    let a = 1;
    let fresh = after
        .planner
        .chunks(2 * a)
        .filter(|g| g.iter().all(|v| v.is_finite()))
        .count();
    // Pre-training (80 updates) and 3 more, each re-planning 4 sequences x 3 states.
    assert!(fresh > 0, "reanalysis wrote no Gaussians");
    for g in after.planner.chunks(2 * a).filter(|g| g[0].is_finite()) {
        assert!(g[0].abs() <= 1.0 + 1e-6 && g[1] > 0.0, "{g:?}");
    }
    let bad = TrainConfig {
        reanalyze: Some(Reanalyze {
            interval: 0,
            sequences: 4,
        }),
        ..config(Method::Bmpc, 100, 1)
    };
    assert!(Trainer::new(gpu, reach(), reach(), bad).is_err());
}

/// The events that must repeat exactly: everything but wall-clock times.
fn replayable(e: &Event) -> Option<Event> {
    match e {
        Event::Pretrained { updates, .. } => Some(Event::Pretrained {
            updates: *updates,
            seconds: 0.0,
        }),
        e => Some(e.clone()),
    }
}

/// An agent trained inside a population gives what it gives alone with the same seed: the
/// same events (losses, returns, evaluations: the population's evaluate together, each agent
/// its own number of episodes), history and weights, bit for bit, also when the lone agent's
/// run is split into two calls. And the population's checkpoints resume every agent where it
/// stood.
#[test]
fn an_agent_in_a_population_trains_as_it_does_alone() {
    use pompc::train::{AgentSetup, Population};
    use std::sync::Mutex;
    let gpu = &common::gpus()[1];
    let steps = 3 * LEN + 5;
    let settings = [
        (Method::Pompc { lambda: 0.5 }, 3),
        (Method::Pompc { lambda: 4.0 }, 8),
        (Method::Tdmpc2, 5),
    ];
    let setups = || {
        settings
            .iter()
            .enumerate()
            .map(|(i, &(m, seed))| AgentSetup {
                env: reach(),
                eval_env: reach(),
                cfg: {
                    let mut c = config(m, 6 * LEN, seed);
                    // Losses read back every few updates: more to compare; evaluations,
                    // whose model a shared population refreshes before them.
                    c.log_every = 10;
                    c.eval_every = 2 * LEN;
                    // Agents done with their episodes wait for the others.
                    c.eval_episodes = [1, 2, 1][i];
                    c
                },
            })
            .collect::<Vec<_>>()
    };
    let mut population = Population::create(gpu, setups()).unwrap();
    // The agents plan in shared plan steps (a population model of all three); the two PO-MPC
    // agents update in shared dispatches, the TD-MPC2 agent in a group of its own.
    assert_eq!(population.shares_plan_steps(), Ok(()));
    let why = population.shares_updates().unwrap_err();
    assert!(why.contains("agent 2") && why.contains("method"), "{why}");
    assert_eq!(population.update_groups(), vec![vec![0, 1], vec![2]]);
    let events = Mutex::new(vec![Vec::new(); settings.len()]);
    population
        .run(steps, &|i, e| {
            events.lock().unwrap()[i].extend(replayable(e));
            Ok(())
        })
        .unwrap();
    let events = events.into_inner().unwrap();
    assert_eq!(population.steps(), 3 * steps);
    for (i, setup) in setups().into_iter().enumerate() {
        let mut alone = Trainer::new(gpu, setup.env, setup.eval_env, setup.cfg).unwrap();
        let mut own = Vec::new();
        // In two calls, the second's first step an evaluation's.
        for until in [2 * LEN, steps] {
            alone
                .run(until, &mut |e| {
                    own.extend(replayable(e));
                    Ok(())
                })
                .unwrap();
        }
        assert!(
            own.iter().any(|e| matches!(e, Event::Losses { .. })),
            "no update ran"
        );
        let evals = own.iter().filter(|e| matches!(e, Event::Eval { .. }));
        assert_eq!(evals.count(), 2, "agent {i}'s evaluations");
        assert_eq!(own, events[i], "agent {i}'s events");
        let agent = population.agent(i).unwrap();
        assert_eq!(alone.history(), agent.history(), "agent {i}'s history");
        let (a, b) = (alone.weights().unwrap(), agent.weights().unwrap());
        assert_eq!(a.tensors, b.tensors, "agent {i}'s weights");
    }
    // The settings really differ.
    assert_ne!(events[0], events[1]);
    assert_ne!(events[0], events[2]);
    // Agents with other planners cannot share plan steps: they run on threads, each still as
    // alone.
    let mut other = setups();
    other[1].cfg.planner.num_samples += 8;
    // Their step-0 evaluations add nothing to what this checks (CI time).
    for s in &mut other {
        s.cfg.eval_every = 0;
    }
    let mut apart = Population::create(gpu, other).unwrap();
    let why = apart.shares_plan_steps().unwrap_err();
    assert!(why.contains("agent 1") && why.contains("planner"), "{why}");
    apart.run(LEN + 3, &|_, _| Ok(())).unwrap();
    assert_eq!(apart.steps(), 3 * (LEN + 3));
    let dir = std::env::temp_dir().join(format!("pompc-population-{}", std::process::id()));
    population.save(&dir).unwrap();
    let mut back = Population::resume(gpu, &dir, setups()).unwrap();
    for (x, y) in back.agents().iter().zip(population.agents()) {
        assert_eq!((x.step(), x.updates()), (y.step(), y.updates()));
        assert_eq!(x.history(), y.history());
    }
    back.run(steps + 5, &|_, _| Ok(())).unwrap();
    assert_eq!(back.steps(), 3 * (steps + 5));
    // A population of other settings refuses the checkpoints, naming the agent.
    let mut wrong = setups();
    wrong[1].cfg = config(Method::Tdmpc2, 6 * LEN, 8);
    let e = Population::resume(gpu, &dir, wrong)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("agent 1"), "{e}");
    assert!(Population::new(Vec::new()).is_err());
    std::fs::remove_dir_all(&dir).ok();
}

/// Pre-training reports its progress and a handler can stop it between two updates: the
/// run then goes on where it stopped (the same updates as a run never stopped, bit for bit,
/// alone and in a population), and a checkpoint taken at the stop resumes the rest of it.
#[test]
fn pretraining_stops_between_updates_and_goes_on() {
    use pompc::train::{AgentSetup, PRETRAIN_REPORT_EVERY, Population};
    use std::sync::Mutex;
    let gpu = &common::gpus()[1];
    let seed_steps = 2 * LEN; // 80: one progress report, at 50 updates
    let at = PRETRAIN_REPORT_EVERY;
    assert!(seed_steps > at && seed_steps < 2 * at);
    let steps = seed_steps + 3;
    let cfg = |lambda: f32, seed: u64| {
        let mut c = config(Method::Pompc { lambda }, steps, seed);
        c.seed_steps = seed_steps;
        c.log_every = 10;
        c
    };
    let stop = || Error::InvalidArgument("stop here".into());
    let is_progress = |e: &Event| matches!(e, Event::Pretraining { .. });
    let record = |events: &mut Vec<Event>, e: &Event| events.extend(replayable(e));

    let mut a = Trainer::new(gpu, reach(), reach(), cfg(1.0, 5)).unwrap();
    let mut events_a = Vec::new();
    a.run(steps, &mut |e| {
        record(&mut events_a, e);
        Ok(())
    })
    .unwrap();
    let progress = Event::Pretraining {
        step: seed_steps,
        updates: at,
        total: seed_steps,
    };
    assert_eq!(events_a.iter().filter(|e| is_progress(e)).count(), 1);
    assert!(events_a.contains(&progress), "{events_a:?}");
    assert_eq!(a.updates(), seed_steps + 3);

    // Alone, stopped at the report and saved; resumed, the rest of the pre-training comes
    // first, then the steps.
    let dir = std::env::temp_dir().join(format!("pompc-pretrain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("stopped.safetensors");
    let mut b = Trainer::new(gpu, reach(), reach(), cfg(1.0, 5)).unwrap();
    let r = b.run(steps, &mut |e| {
        if is_progress(e) { Err(stop()) } else { Ok(()) }
    });
    assert!(matches!(r, Err(Error::InvalidArgument(m)) if m == "stop here"));
    assert_eq!((b.step(), b.updates()), (seed_steps, at));
    b.save(&path).unwrap();
    let mut c = Trainer::resume(gpu, reach(), reach(), cfg(1.0, 5), &path).unwrap();
    assert_eq!((c.step(), c.updates()), (seed_steps, at));
    let mut events_c = Vec::new();
    c.run(steps, &mut |e| {
        record(&mut events_c, e);
        Ok(())
    })
    .unwrap();
    let done = Event::Pretrained {
        updates: seed_steps,
        seconds: 0.0,
    };
    assert_eq!(events_c.first(), Some(&done));
    assert_eq!((c.step(), c.updates()), (steps, seed_steps + 3));

    // A population stopped at the report: every agent hears it and stops at the same update;
    // called again, agent 0 goes on exactly as alone; saved at the stop, it resumes.
    let setups = || {
        [(1.0, 5), (4.0, 8)]
            .into_iter()
            .map(|(l, s)| AgentSetup {
                env: reach(),
                eval_env: reach(),
                cfg: cfg(l, s),
            })
            .collect::<Vec<_>>()
    };
    let mut population = Population::create(gpu, setups()).unwrap();
    assert_eq!(population.shares_updates(), Ok(()));
    let events = Mutex::new(vec![Vec::new(); 2]);
    let r = population.run(steps, &|i, e| {
        record(&mut events.lock().unwrap()[i], e);
        if is_progress(e) { Err(stop()) } else { Ok(()) }
    });
    assert!(r.is_err());
    for t in population.agents() {
        assert_eq!((t.step(), t.updates()), (seed_steps, at));
    }
    let saved = dir.join("population");
    population.save(&saved).unwrap();
    population
        .run(steps, &|i, e| {
            record(&mut events.lock().unwrap()[i], e);
            Ok(())
        })
        .unwrap();
    let events = events.into_inner().unwrap();
    assert_eq!(events[0], events_a);
    assert!(events[1].contains(&progress) && events[1].contains(&done));
    let w = |t: &Trainer| t.weights().unwrap().tensors;
    assert_eq!(w(&population.agents()[0]), w(&a));
    let mut back = Population::resume(gpu, &saved, setups()).unwrap();
    back.run(steps, &|_, _| Ok(())).unwrap();
    for t in back.agents() {
        assert_eq!((t.step(), t.updates()), (steps, seed_steps + 3));
    }
    std::fs::remove_dir_all(&dir).ok();
}
