//! The built-in environments: physics (energy conservation, gravity), reward ranges, episode
//! bookkeeping, determinism, error values and hand-written controllers. CPU only, fast.

use pompc::Error;
use pompc::env::acrobot::Acrobot;
use pompc::env::cartpole::{Cartpole, Task};
use pompc::env::pendulum::Pendulum;
use pompc::env::reacher::Reacher;
use pompc::env::{ACTION_REPEAT, EPISODE_LEN, Env, NAMES, SIM_STEPS, make};

/// Tiny deterministic action source so the tests need no RNG crate.
struct Lcg(u64);

impl Lcg {
    fn action(&mut self, dim: usize) -> Vec<f32> {
        (0..dim)
            .map(|_| {
                self.0 = self
                    .0
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                // Slightly past [-1, 1] so clipping is exercised too.
                ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.4 - 1.2
            })
            .collect()
    }
}

fn all_envs() -> Vec<Box<dyn Env>> {
    NAMES.iter().map(|n| make(n).unwrap()).collect()
}

#[test]
fn dims_and_names() {
    let expected = [
        ("pendulum-swingup", 3, 1),
        ("cartpole-swingup", 5, 1),
        ("cartpole-balance", 5, 1),
        ("acrobot-swingup", 6, 1),
        ("reacher-easy", 8, 2),
    ];
    for (name, obs_dim, action_dim) in expected {
        let mut env = make(name).unwrap();
        assert_eq!(env.name(), name);
        assert_eq!(env.obs_dim(), obs_dim, "{name}");
        assert_eq!(env.action_dim(), action_dim, "{name}");
        assert_eq!(env.action_repeat(), ACTION_REPEAT, "{name}");
        assert_eq!(env.episode_len(), 500, "{name}");
        let obs = env.reset(3);
        assert_eq!(obs.len(), obs_dim, "{name}");
        let step = env.step(&vec![0.0; action_dim]).unwrap();
        assert_eq!(step.obs.len(), obs_dim, "{name}");
        assert!(step.obs.iter().all(|v| v.is_finite()), "{name}");
    }
    let err = make("humanoid-run").err().unwrap();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    assert!(err.to_string().contains("cartpole-swingup"), "{err}");
}

#[test]
fn episode_length_and_done_flag() {
    for mut env in all_envs() {
        let name = env.name().to_string();
        let mut rng = Lcg(1);
        for episode in 0..2 {
            env.reset(episode);
            for t in 0..EPISODE_LEN {
                let step = env.step(&rng.action(env.action_dim())).unwrap();
                assert_eq!(step.done, t == EPISODE_LEN - 1, "{name} step {t}");
            }
            // Stepping past the end is an error until reset.
            let err = env.step(&vec![0.0; env.action_dim()]).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{name}: {err:?}");
        }
    }
    // Another action repeat keeps 1000 simulator steps per episode.
    let env = Pendulum::new().with_action_repeat(4).unwrap();
    assert_eq!(env.episode_len() * env.action_repeat(), SIM_STEPS);
    assert!(Pendulum::new().with_action_repeat(3).is_err());
    assert!(Pendulum::new().with_action_repeat(0).is_err());
}

#[test]
fn bad_actions_are_errors() {
    for mut env in all_envs() {
        let name = env.name().to_string();
        env.reset(0);
        let dim = env.action_dim();
        for len in [0, dim + 1, dim + 3] {
            let err = env.step(&vec![0.0; len]).unwrap_err();
            assert!(matches!(err, Error::Shape(_)), "{name} len {len}: {err:?}");
        }
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut a = vec![0.0; dim];
            a[dim - 1] = bad;
            let err = env.step(&a).unwrap_err();
            assert!(
                matches!(err, Error::InvalidArgument(_)),
                "{name} {bad}: {err:?}"
            );
        }
        // A failed step does not count against the episode.
        for _ in 0..EPISODE_LEN - 1 {
            assert!(!env.step(&vec![0.5; dim]).unwrap().done);
        }
        assert!(env.step(&vec![0.5; dim]).unwrap().done);
    }
}

#[test]
fn same_seed_same_episode() {
    for name in NAMES {
        let run = |seed: u64| {
            let mut env = make(name).unwrap();
            let mut rng = Lcg(7);
            let mut trace = env.reset(seed);
            for _ in 0..100 {
                let s = env.step(&rng.action(env.action_dim())).unwrap();
                trace.extend(s.obs);
                trace.push(s.reward);
            }
            trace
        };
        let a = run(42);
        assert_eq!(a, run(42), "{name}");
        assert_ne!(a, run(43), "{name}");
        // Resetting a used environment gives the same episode as a fresh one.
        let mut env = make(name).unwrap();
        env.reset(5);
        env.step(&vec![1.0; env.action_dim()]).unwrap();
        let mut fresh = make(name).unwrap();
        assert_eq!(env.reset(9), fresh.reset(9), "{name}");
    }
}

/// Every simulator step's reward lies in [0, 1]; with action repeat 1 a step is one simulator
/// step, so check it there and check sums in [0, 2] at the default repeat.
#[test]
fn rewards_in_unit_interval() {
    let single: Vec<Box<dyn Env>> = vec![
        Box::new(Pendulum::new().with_action_repeat(1).unwrap()),
        Box::new(Cartpole::new(Task::Swingup).with_action_repeat(1).unwrap()),
        Box::new(Cartpole::new(Task::Balance).with_action_repeat(1).unwrap()),
        Box::new(Acrobot::new().with_action_repeat(1).unwrap()),
        Box::new(Reacher::new().with_action_repeat(1).unwrap()),
    ];
    for mut env in single.into_iter() {
        let mut rng = Lcg(11);
        for seed in 0..3 {
            env.reset(seed);
            for _ in 0..env.episode_len() {
                let r = env.step(&rng.action(env.action_dim())).unwrap().reward;
                assert!((0.0..=1.0).contains(&r), "{}: {r}", env.name());
            }
        }
    }
    for mut env in all_envs() {
        let mut rng = Lcg(12);
        env.reset(0);
        let mut total = 0.0;
        for _ in 0..env.episode_len() {
            let r = env.step(&rng.action(env.action_dim())).unwrap().reward;
            assert!((0.0..=2.0).contains(&r), "{}: {r}", env.name());
            total += r;
        }
        eprintln!("{}: random-action return {total:.1}", env.name());
    }
}

/// Relative energy drift over 1000 simulator steps with no control and no friction, from
/// energetic starting states. `scale` is a characteristic energy of the system, since total
/// energy can pass through zero.
fn drift(mut energy_after_each_step: impl FnMut() -> f64, e0: f64, scale: f64) -> f64 {
    let mut worst: f64 = 0.0;
    for _ in 0..EPISODE_LEN {
        worst = worst.max((energy_after_each_step() - e0).abs() / scale);
    }
    worst
}

/// Measured: 2.0e-7 (pendulum), 5.5e-7 (cart-pole), 1.1e-6 (acrobot), 5.4e-6 (reacher).
const DRIFT_BOUND: f64 = 1e-5;

#[test]
fn energy_is_conserved_without_friction_or_control() {
    // Pendulum: start just off upright so it swings through the bottom at full speed.
    let mut p = Pendulum::new().frictionless();
    p.set_state([0.3, 2.0]).unwrap();
    let (e0, scale) = (p.energy(), 1.0 * 9.81 * 0.5);
    let d = drift(
        || {
            p.step(&[0.0]).unwrap();
            p.energy()
        },
        e0,
        scale,
    );
    eprintln!("pendulum drift {d:.2e}");
    assert!(d < DRIFT_BOUND, "pendulum drift {d}");

    // Cart-pole: a spinning pole drags the cart back and forth.
    let mut c = Cartpole::new(Task::Swingup).frictionless();
    c.set_state([0.0, 0.5, 0.5, 6.0]).unwrap();
    let (e0, scale) = (c.energy(), 0.1 * 9.81 * 0.5);
    let d = drift(
        || {
            c.step(&[0.0]).unwrap();
            c.energy()
        },
        e0,
        scale,
    );
    eprintln!("cartpole drift {d:.2e}");
    assert!(d < DRIFT_BOUND, "cartpole drift {d}");

    // Acrobot: released from near the top, it tumbles chaotically.
    let mut a = Acrobot::new().frictionless();
    a.set_state([2.5, 0.7, 1.0, -2.0]).unwrap();
    let (e0, scale) = (a.energy(), (0.5 + 1.0 + 0.5) * 9.81);
    let d = drift(
        || {
            a.step(&[0.0]).unwrap();
            a.energy()
        },
        e0,
        scale,
    );
    eprintln!("acrobot drift {d:.2e}");
    assert!(d < DRIFT_BOUND, "acrobot drift {d}");

    // Reacher: kinetic energy only, exchanged between the joints.
    let mut r = Reacher::new().frictionless();
    r.set_state([0.0, 1.0, 4.0, -3.0]).unwrap();
    let e0 = r.energy();
    let d = drift(
        || {
            r.step(&[0.0, 0.0]).unwrap();
            r.energy()
        },
        e0,
        e0,
    );
    eprintln!("reacher drift {d:.2e}");
    assert!(d < DRIFT_BOUND, "reacher drift {d}");
}

#[test]
fn friction_dissipates_energy() {
    let mut p = Pendulum::new();
    p.set_state([0.3, 2.0]).unwrap();
    let e0 = p.energy();
    let mut c = Cartpole::new(Task::Swingup);
    c.set_state([0.0, 0.5, 0.5, 6.0]).unwrap();
    let c0 = c.energy();
    let mut a = Acrobot::new();
    a.set_state([2.5, 0.7, 1.0, -2.0]).unwrap();
    let a0 = a.energy();
    let mut r = Reacher::new();
    r.set_state([0.0, 1.0, 4.0, -3.0]).unwrap();
    let r0 = r.energy();
    for _ in 0..EPISODE_LEN {
        p.step(&[0.0]).unwrap();
        c.step(&[0.0]).unwrap();
        a.step(&[0.0]).unwrap();
        r.step(&[0.0, 0.0]).unwrap();
    }
    assert!(p.energy() < e0 - 0.1, "{} vs {e0}", p.energy());
    assert!(c.energy() < c0 - 1e-3, "{} vs {c0}", c.energy());
    assert!(a.energy() < a0 - 0.1, "{} vs {a0}", a.energy());
    assert!(r.energy() < 0.01 * r0, "{} vs {r0}", r.energy());
}

#[test]
fn gravity_pulls_down() {
    // Slightly off upright, the pendulum falls through the bottom.
    let mut p = Pendulum::new();
    p.set_state([0.01, 0.0]).unwrap();
    let mut lowest = 1.0f32;
    for _ in 0..100 {
        lowest = lowest.min(p.step(&[0.0]).unwrap().obs[0]);
    }
    assert!(lowest < -0.99, "lowest cos {lowest}");
    // Hanging with a small push, the cart-pole pole stays near the bottom.
    let mut c = Cartpole::new(Task::Swingup);
    c.set_state([0.0, std::f64::consts::PI - 0.1, 0.0, 0.0])
        .unwrap();
    for _ in 0..EPISODE_LEN {
        let s = c.step(&[0.0]).unwrap();
        assert!(s.obs[1] < -0.99, "cos {}", s.obs[1]);
        assert!(s.reward < 0.01);
    }
    // The acrobot at rest hanging straight down stays there and earns nothing.
    let mut a = Acrobot::new();
    a.set_state([0.0; 4]).unwrap();
    let s = a.step(&[0.0]).unwrap();
    assert!(
        a.tip()[1] < -1.99 && s.reward < 1e-6,
        "{:?} {}",
        a.tip(),
        s.reward
    );
}

#[test]
fn reset_distributions() {
    for seed in 0..20 {
        let mut c = Cartpole::new(Task::Swingup);
        let obs = c.reset(seed);
        assert!(obs[1] < -0.99, "swing-up starts hanging: {obs:?}");
        let mut c = Cartpole::new(Task::Balance);
        let obs = c.reset(seed);
        assert!(obs[1] > 0.99, "balance starts upright: {obs:?}");
        let mut r = Reacher::new();
        r.reset(seed);
        let [tx, ty] = r.target();
        let radius = tx.hypot(ty);
        assert!((0.05..=0.2).contains(&radius), "target radius {radius}");
    }
}

#[test]
fn pendulum_at_rest_upright_earns_full_reward() {
    let mut p = Pendulum::new();
    p.reset(0);
    p.set_state([0.0, 0.0]).unwrap();
    let mut total = 0.0;
    for _ in 0..EPISODE_LEN {
        total += p.step(&[0.0]).unwrap().reward;
    }
    assert!((total - 1000.0).abs() < 1e-3, "{total}");
}

#[test]
fn reacher_on_target_earns_full_reward() {
    let mut r = Reacher::new();
    r.reset(0);
    r.set_state([0.4, 1.1, 0.0, 0.0]).unwrap();
    r.set_target(r.tip()).unwrap();
    let s = r.step(&[0.0, 0.0]).unwrap();
    assert_eq!(s.reward, 2.0);
    assert!(
        s.obs[4].abs() < 1e-6 && s.obs[5].abs() < 1e-6,
        "{:?}",
        s.obs
    );
    // Far from the target there is nothing.
    r.set_target([-r.tip()[0], -r.tip()[1]]).unwrap();
    assert_eq!(r.step(&[0.0, 0.0]).unwrap().reward, 0.0);
}

/// Discrete LQR gains for the linearised cart-pole at the default constants (agent step
/// 0.02 s, Q = diag(1, 10, 1, 1), R = 1), in action units.
fn balance_action(obs: &[f32]) -> f32 {
    let (x, th, xd, thd) = (obs[0], obs[2].atan2(obs[1]), obs[3], obs[4]);
    (0.785 * x + 9.04 * th + 1.38 * xd + 2.39 * thd).clamp(-1.0, 1.0)
}

#[test]
fn linear_feedback_balances_the_cartpole() {
    let mut env = make("cartpole-balance").unwrap();
    for seed in 0..5 {
        let mut obs = env.reset(seed);
        let mut total = 0.0;
        loop {
            let s = env.step(&[balance_action(&obs)]).unwrap();
            assert!(s.obs[1] > 0.95, "seed {seed}: fell, cos {}", s.obs[1]);
            total += s.reward;
            obs = s.obs;
            if s.done {
                break;
            }
        }
        let mean = total / SIM_STEPS as f32;
        eprintln!("cartpole-balance LQR seed {seed}: mean reward per sim step {mean:.4}");
        assert!(mean > 0.9, "seed {seed}: {mean}");
    }
    // Doing nothing, the pole falls (it then swings nearly frictionlessly, lingering near
    // the top, so the mean reward stays around 0.6 rather than 0).
    let mut total = 0.0;
    let mut lowest = 1.0f32;
    env.reset(0);
    for _ in 0..EPISODE_LEN {
        let s = env.step(&[0.0]).unwrap();
        total += s.reward;
        lowest = lowest.min(s.obs[1]);
    }
    let mean = total / SIM_STEPS as f32;
    eprintln!("cartpole-balance with no control: mean reward {mean:.3}");
    assert!(
        lowest < -0.9 && mean < 0.8,
        "lowest cos {lowest}, mean {mean}"
    );
}
