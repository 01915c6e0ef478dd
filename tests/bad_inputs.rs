//! A corpus of bad inputs (issue 20): files, API calls and command lines that must each get a
//! clear error, never a panic, an abort, a hang or an `Ok` with garbage.
//!
//! Each case runs in its own thread under `catch_unwind` with a time budget, so a panic or a
//! hang fails that case by name and the table goes on. Classes: 1 resumed training state,
//! 2 sizes from files or users, 3 non-finite values, 4 work that does not finish, 5 panics on
//! out-of-range arguments. The command line's bad inputs are in `cli/tests/cli.rs`, beside the
//! binary.

use pompc::env::acrobot::{Acrobot, AcrobotParams};
use pompc::env::cartpole::{Cartpole, CartpoleParams, Task};
use pompc::env::pendulum::{Pendulum, PendulumParams};
use pompc::env::reacher::{Reacher, ReacherParams};
use pompc::env::{Env, Sigmoid, Tolerance};
use pompc::gpu::shader::{Header, preprocess_with};
use pompc::kernels::linear::{Linear, LinearConfig, LinearInputs};
use pompc::kernels::optim::{Adam, AdamConfig, ParamGroup};
use pompc::model::{ModelSpec, Weights, Workspace, WorldModel};
use pompc::planner::config::chosen_heads;
use pompc::planner::custom::{Mppi, MppiConfig, Problem};
use pompc::planner::problems::{CartPole, DiffDrive, simulate_step};
use pompc::planner::{Plan, Planner, PlannerConfig, PlannerMode};
use pompc::train::{
    Method, PolicyTrainer, PolicyUpdateConfig, ReplayBuffer, TrainConfig, Trainer, UpdateConfig,
    WorldModelTrainer,
};
use pompc::{Error, Gpu, GpuBuffer, GpuOptions, Precision, Recorder};
use rand::SeedableRng;
use safetensors::Dtype;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

type R = Result<(), String>;

struct Case {
    class: u8,
    name: String,
    secs: u64,
    run: Box<dyn FnOnce() -> R + Send>,
}

/// The one device of this file (shader checks as built, f32).
fn gpu() -> &'static Gpu {
    static G: OnceLock<Gpu> = OnceLock::new();
    G.get_or_init(|| {
        Gpu::new(GpuOptions::default().with_precision(Some(Precision::F32)))
            .unwrap_or_else(|e| panic!("the corpus needs an adapter: {e}"))
    })
}

/// A second device with a short wait timeout, for user WGSL that never returns: lavapipe stops
/// such loops (the step reports the cut-short samples), a GPU that runs them for ever ends in
/// the timeout, on a device of its own so the other cases go on.
fn loop_gpu() -> &'static Gpu {
    static G: OnceLock<Gpu> = OnceLock::new();
    G.get_or_init(|| {
        Gpu::new(
            GpuOptions::default()
                .with_precision(Some(Precision::F32))
                .with_wait_timeout(Duration::from_secs(10)),
        )
        .unwrap()
    })
}

/// The error of a step whose rollouts loop for ever or too long: samples cut short, or a wait
/// past the timeout.
fn endless(body: &str) -> R {
    let mut m = Mppi::new(loop_gpu(), problem(body), mppi_cfg()).map_err(|e| e.to_string())?;
    match m.step(&[0.0]) {
        Err(e @ Error::Timeout { .. }) => expect_err::<()>(Err(e), &["did not finish"]),
        r => expect_err(r, &["whole horizon"]),
    }
}

/// A scratch directory of this test run.
fn scratch() -> &'static Path {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("pompc-bad-inputs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

/// A fresh empty directory for one case.
fn case_dir(tag: &str) -> PathBuf {
    let d = scratch().join(tag);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn files_in(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d)
        .map(|r| {
            r.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// `Err` whose message holds every needle.
fn expect_err<T>(r: pompc::Result<T>, needles: &[&str]) -> R {
    match r {
        Ok(_) => Err("returned Ok".into()),
        Err(e) => {
            let msg = e.to_string();
            for n in needles {
                if !msg.contains(n) {
                    return Err(format!("message lacks {n:?}: {msg}"));
                }
            }
            Ok(())
        }
    }
}

fn ensure(cond: bool, what: impl Into<String>) -> R {
    if cond { Ok(()) } else { Err(what.into()) }
}

// ---------------------------------------------------------------------------------------------
// safetensors files to mutate

#[derive(Clone)]
struct St {
    meta: HashMap<String, String>,
    tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)>,
}

impl St {
    fn parse(bytes: &[u8]) -> St {
        let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
        let (_, m) = safetensors::SafeTensors::read_metadata(bytes).unwrap();
        let mut tensors: Vec<_> = st
            .iter()
            .map(|(n, v)| {
                (
                    n.to_string(),
                    v.dtype(),
                    v.shape().to_vec(),
                    v.data().to_vec(),
                )
            })
            .collect();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        St {
            meta: m.metadata().clone().unwrap_or_default(),
            tensors,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let views: Vec<_> = self
            .tensors
            .iter()
            .map(|(n, d, s, b)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
                )
            })
            .collect();
        safetensors::serialize(views, Some(self.meta.clone())).unwrap()
    }

    fn idx(&self, name: &str) -> usize {
        self.tensors
            .iter()
            .position(|t| t.0 == name)
            .unwrap_or_else(|| panic!("no tensor {name}"))
    }

    fn f32(&self, name: &str) -> Vec<f32> {
        bytemuck::pod_collect_to_vec(&self.tensors[self.idx(name)].3)
    }

    fn u32(&self, name: &str) -> Vec<u32> {
        bytemuck::pod_collect_to_vec(&self.tensors[self.idx(name)].3)
    }

    fn set_f32(mut self, name: &str, v: Vec<f32>) -> St {
        let i = self.idx(name);
        let shape = if self.tensors[i].2.len() == 1 || v.len() != self.f32(name).len() {
            vec![v.len()]
        } else {
            self.tensors[i].2.clone()
        };
        self.tensors[i] = (
            name.into(),
            Dtype::F32,
            shape,
            bytemuck::cast_slice(&v).to_vec(),
        );
        self
    }

    fn set_u32(mut self, name: &str, v: Vec<u32>) -> St {
        let i = self.idx(name);
        self.tensors[i] = (
            name.into(),
            Dtype::U32,
            vec![v.len()],
            bytemuck::cast_slice(&v).to_vec(),
        );
        self
    }

    fn edit_f32(self, name: &str, f: impl FnOnce(&mut Vec<f32>)) -> St {
        let mut v = self.f32(name);
        f(&mut v);
        self.set_f32(name, v)
    }

    fn edit_u32(self, name: &str, f: impl FnOnce(&mut Vec<u32>)) -> St {
        let mut v = self.u32(name);
        f(&mut v);
        self.set_u32(name, v)
    }

    fn remove(mut self, name: &str) -> St {
        let i = self.idx(name);
        self.tensors.remove(i);
        self
    }

    fn meta(mut self, k: &str, v: &str) -> St {
        self.meta.insert(k.into(), v.into());
        self
    }

    fn drop_meta(mut self, k: &str) -> St {
        self.meta.remove(k);
        self
    }

    fn write(&self, tag: &str) -> PathBuf {
        let p = scratch().join(format!("{tag}.safetensors"));
        std::fs::write(&p, self.bytes()).unwrap();
        p
    }
}

// ---------------------------------------------------------------------------------------------
// fixtures

const ENV: &str = "pendulum-swingup";

fn train_config(steps: usize) -> TrainConfig {
    let env = pompc::env::make(ENV).unwrap();
    let mut c = TrainConfig::quick(env.as_ref(), Method::Pompc { lambda: 1.0 }, steps, 0).unwrap();
    // Random actions only: two finished episodes in the buffer, no update, no evaluation.
    c.seed_steps = 10_000;
    c.eval_every = 0;
    c
}

fn resume(path: &Path) -> pompc::Result<Trainer<'static>> {
    Trainer::resume(
        gpu(),
        pompc::env::make(ENV).unwrap(),
        pompc::env::make(ENV).unwrap(),
        train_config(4000),
        path,
    )
}

/// A checkpoint of 1000 random steps (two episodes), checked to resume.
fn checkpoint() -> &'static St {
    static C: OnceLock<St> = OnceLock::new();
    C.get_or_init(|| {
        let mut tr = Trainer::new(
            gpu(),
            pompc::env::make(ENV).unwrap(),
            pompc::env::make(ENV).unwrap(),
            train_config(1000),
        )
        .unwrap();
        tr.run(1000, &mut |_| Ok(())).unwrap();
        let p = scratch().join("base.ckpt.safetensors");
        tr.save(&p).unwrap();
        let back = resume(&p).unwrap_or_else(|e| panic!("the base checkpoint must resume: {e}"));
        assert_eq!(back.buffer().len(), 1000);
        assert_eq!(back.history().len(), 2);
        St::parse(&std::fs::read(&p).unwrap())
    })
}

/// Resume from `st` written as `tag`: an error naming the file and each needle.
fn bad_checkpoint(tag: &str, st: St, needles: &[&str]) -> R {
    let p = st.write(tag);
    let mut all = vec![tag];
    all.extend_from_slice(needles);
    expect_err(resume(&p), &all)
}

fn tiny_spec() -> ModelSpec {
    ModelSpec::tiny(3, 1)
}

/// A small weights file (the TD-MPC2 names and metadata), checked to load.
fn weights_file() -> &'static St {
    static W: OnceLock<St> = OnceLock::new();
    W.get_or_init(|| {
        let spec = ModelSpec {
            latent_dim: 32,
            mlp_dim: 48,
            ..tiny_spec()
        };
        let bytes = Weights::init(&spec, 0).unwrap().to_bytes().unwrap();
        Weights::from_bytes(&bytes).unwrap();
        St::parse(&bytes)
    })
}

fn bad_weights(tag: &str, st: St, needles: &[&str]) -> R {
    let p = st.write(tag);
    let mut all = vec![tag];
    all.extend_from_slice(needles);
    let t = Instant::now();
    let r = expect_err(Weights::load(&p), &all);
    ensure(
        t.elapsed() < Duration::from_secs(2),
        format!("took {:?}", t.elapsed()),
    )?;
    r
}

fn tiny_model() -> &'static WorldModel {
    static M: OnceLock<WorldModel> = OnceLock::new();
    M.get_or_init(|| WorldModel::new(gpu(), &Weights::init(&tiny_spec(), 0).unwrap()).unwrap())
}

fn planner_cfg() -> PlannerConfig {
    PlannerConfig {
        num_samples: 16,
        num_elites: 4,
        num_pi_trajs: 2,
        iterations: 1,
        ..PlannerConfig::tdmpc2(1)
    }
}

fn bad_planner(cfg: PlannerConfig, needles: &[&str]) -> R {
    expect_err(Planner::new(gpu(), tiny_model(), cfg), needles)
}

/// A 1-state, 1-control problem whose dynamics body is `body`.
fn problem(body: &str) -> Problem {
    Problem {
        name: "corpus".into(),
        state_dim: 1,
        control_dim: 1,
        param_len: 1,
        wgsl: format!(
            "fn dynamics(x: State, u: Control, t: u32) -> State {{ {body} }}\n\
             fn running_cost(x: State, u: Control, t: u32) -> f32 {{ return x[0] * x[0]; }}\n\
             fn terminal_cost(x: State) -> f32 {{ return 0.0; }}"
        ),
    }
}

fn mppi_cfg() -> MppiConfig {
    MppiConfig {
        horizon: 4,
        samples: 64,
        ..MppiConfig::new(1)
    }
}

fn good_problem() -> Problem {
    problem("return State(x[0] + DT * u[0]);")
}

fn bad_mppi_cfg(f: impl FnOnce(&mut MppiConfig), needles: &[&str]) -> R {
    let mut c = mppi_cfg();
    f(&mut c);
    expect_err(Mppi::new(gpu(), good_problem(), c), needles)
}

fn mppi() -> Mppi<'static> {
    let mut m = Mppi::new(gpu(), good_problem(), mppi_cfg()).unwrap();
    m.set_params(&[0.0]).unwrap();
    m
}

// ---------------------------------------------------------------------------------------------
// the corpus

fn cases() -> Vec<Case> {
    let mut v: Vec<Case> = Vec::new();
    macro_rules! case {
        ($class:expr, $name:expr, $body:expr) => {
            case!($class, $name, 30, $body)
        };
        ($class:expr, $name:expr, $secs:expr, $body:expr) => {
            v.push(Case {
                class: $class,
                name: $name.to_string(),
                secs: $secs,
                run: Box::new(move || $body),
            })
        };
    }

    // ---- 1. resumed training state ----------------------------------------------------------
    let c = || checkpoint().clone();
    case!(1, "checkpoint: missing file", {
        let p = scratch().join("no-such.ckpt.safetensors");
        expect_err(resume(&p), &["no-such.ckpt.safetensors"])
    });
    case!(1, "checkpoint: not safetensors", {
        let p = scratch().join("garbage.ckpt.safetensors");
        std::fs::write(&p, b"this is not a checkpoint").unwrap();
        expect_err(resume(&p), &["garbage.ckpt"])
    });
    case!(1, "checkpoint: empty file", {
        let p = scratch().join("empty.ckpt.safetensors");
        std::fs::write(&p, b"").unwrap();
        expect_err(resume(&p), &["empty.ckpt"])
    });
    case!(1, "checkpoint: truncated", {
        let b = checkpoint().bytes();
        let p = scratch().join("truncated.ckpt.safetensors");
        std::fs::write(&p, &b[..b.len() / 2]).unwrap();
        expect_err(resume(&p), &["truncated.ckpt"])
    });
    case!(1, "checkpoint: another environment", {
        bad_checkpoint(
            "other-env",
            c().meta("pompc.env", "cartpole-swingup"),
            &["pompc.env"],
        )
    });
    case!(1, "checkpoint: another seed", {
        bad_checkpoint("other-seed", c().meta("pompc.seed", "7"), &["pompc.seed"])
    });
    case!(1, "checkpoint: another method", {
        bad_checkpoint(
            "other-method",
            c().meta("pompc.method", "bmpc"),
            &["pompc.method"],
        )
    });
    case!(1, "checkpoint: no step counter", {
        bad_checkpoint("no-step", c().drop_meta("pompc.step"), &["pompc.step"])
    });
    case!(1, "checkpoint: step not a number", {
        bad_checkpoint("step-nan", c().meta("pompc.step", "lots"), &["pompc.step"])
    });
    case!(1, "checkpoint: more episodes than steps", {
        bad_checkpoint(
            "episodes",
            c().meta("pompc.episodes", "5000"),
            &["pompc.episodes"],
        )
    });
    case!(1, "checkpoint: step past u32", {
        bad_checkpoint(
            "step-huge",
            c().meta("pompc.step", "99999999999"),
            &["pompc.step"],
        )
    });
    case!(
        1,
        "checkpoint: NaN Adam second moments (issue 20's example)",
        {
            let st = c().edit_f32("pompc.opt.world.v", |v| {
                v.iter_mut().for_each(|x| *x = f32::NAN)
            });
            bad_checkpoint("adam-v-nan", st, &["pompc.opt.world.v", "NaN"])
        }
    );
    case!(1, "checkpoint: one NaN Adam second moment", {
        let st = c().edit_f32("pompc.opt.world.v", |v| v[7] = f32::NAN);
        bad_checkpoint("adam-v-one-nan", st, &["pompc.opt.world.v", "element 7"])
    });
    case!(1, "checkpoint: negative Adam second moment", {
        let st = c().edit_f32("pompc.opt.world.v", |v| v[0] = -1.0);
        bad_checkpoint("adam-v-neg", st, &["pompc.opt.world.v", ">= 0"])
    });
    case!(1, "checkpoint: infinite Adam first moment", {
        let st = c().edit_f32("pompc.opt.world.m", |v| v[3] = f32::INFINITY);
        bad_checkpoint("adam-m-inf", st, &["pompc.opt.world.m"])
    });
    case!(1, "checkpoint: short Adam moments", {
        let st = c().edit_f32("pompc.opt.world.m", |v| {
            v.pop();
        });
        bad_checkpoint("adam-m-short", st, &["pompc.opt.world.m", "needs"])
    });
    case!(1, "checkpoint: long Adam moments", {
        let st = c().edit_f32("pompc.opt.world.v", |v| v.push(0.0));
        bad_checkpoint("adam-v-long", st, &["pompc.opt.world.v"])
    });
    case!(1, "checkpoint: Adam moments as f64", {
        let mut st = c();
        let i = st.idx("pompc.opt.world.m");
        let vals: Vec<f64> = st
            .f32("pompc.opt.world.m")
            .iter()
            .map(|x| *x as f64)
            .collect();
        st.tensors[i].1 = Dtype::F64;
        st.tensors[i].3 = bytemuck::cast_slice(&vals).to_vec();
        bad_checkpoint("adam-m-f64", st, &["pompc.opt.world.m", "F32"])
    });
    case!(1, "checkpoint: Adam moments missing", {
        bad_checkpoint(
            "adam-missing",
            c().remove("pompc.opt.world.m"),
            &["pompc.opt.world.m"],
        )
    });
    case!(1, "checkpoint: Adam state of 7 words", {
        let st = c().edit_u32("pompc.opt.world.state", |v| {
            v.pop();
        });
        bad_checkpoint("adam-state-short", st, &["pompc.opt.world.state"])
    });
    case!(1, "checkpoint: Adam step count beyond the updates", {
        let st = c().edit_u32("pompc.opt.world.state", |v| v[0] = 5);
        bad_checkpoint("adam-steps", st, &["pompc.opt.world.state", "5"])
    });
    case!(1, "checkpoint: Adam step counter at u32::MAX", {
        let st = c().edit_u32("pompc.opt.policy.state", |v| v[0] = u32::MAX);
        bad_checkpoint("adam-steps-max", st, &["pompc.opt.policy.state"])
    });
    case!(1, "checkpoint: policy Adam NaN", {
        let st = c().edit_f32("pompc.opt.policy.m", |v| v[0] = f32::NAN);
        bad_checkpoint("policy-adam-nan", st, &["pompc.opt.policy.m"])
    });
    case!(1, "checkpoint: prior Adam negative", {
        let st = c().edit_f32("pompc.opt.prior.v", |v| v[1] = -0.5);
        bad_checkpoint("prior-adam-neg", st, &["pompc.opt.prior.v"])
    });
    case!(1, "checkpoint: prior NaN", {
        let st = c().edit_f32("pompc.prior", |v| v[2] = f32::NAN);
        bad_checkpoint("prior-nan", st, &["pompc.prior"])
    });
    case!(1, "checkpoint: prior short", {
        let st = c().edit_f32("pompc.prior", |v| v.truncate(3));
        bad_checkpoint("prior-short", st, &["pompc.prior"])
    });
    case!(1, "checkpoint: running scale NaN", {
        let st = c().edit_f32("pompc.scales", |v| v[0] = f32::NAN);
        bad_checkpoint("scale-nan", st, &["pompc.scales"])
    });
    case!(1, "checkpoint: running scale zero", {
        let st = c().edit_f32("pompc.scales", |v| v[1] = 0.0);
        bad_checkpoint("scale-zero", st, &["pompc.scales", "> 0"])
    });
    case!(1, "checkpoint: two running scales", {
        let st = c().edit_f32("pompc.scales", |v| {
            v.pop();
        });
        bad_checkpoint("scale-short", st, &["pompc.scales"])
    });
    case!(1, "checkpoint: NaN reward in the replay buffer", {
        let st = c().edit_f32("pompc.buffer.reward", |v| v[10] = f32::NAN);
        bad_checkpoint("buffer-reward-nan", st, &["pompc.buffer", "reward"])
    });
    case!(
        1,
        "checkpoint: infinite observation in the replay buffer",
        {
            let st = c().edit_f32("pompc.buffer.obs", |v| v[4] = f32::NEG_INFINITY);
            bad_checkpoint("buffer-obs-inf", st, &["pompc.buffer", "observation"])
        }
    );
    case!(1, "checkpoint: NaN action in the replay buffer", {
        let st = c().edit_f32("pompc.buffer.action", |v| v[999] = f32::NAN);
        bad_checkpoint("buffer-action-nan", st, &["pompc.buffer", "action"])
    });
    case!(
        1,
        "checkpoint: half-NaN planner row in the replay buffer",
        {
            let st = c().edit_f32("pompc.buffer.planner", |v| v[0] = 0.5);
            bad_checkpoint("buffer-planner-half", st, &["pompc.buffer", "planner"])
        }
    );
    case!(1, "checkpoint: negative planner std", {
        let st = c().edit_f32("pompc.buffer.planner", |v| {
            v[0] = 0.1;
            v[1] = -1.0;
        });
        bad_checkpoint("buffer-planner-std", st, &["pompc.buffer", "std"])
    });
    case!(1, "checkpoint: episode lengths that do not add up", {
        let st = c().edit_u32("pompc.buffer.lengths", |v| v[0] += 1);
        bad_checkpoint("buffer-lengths", st, &["pompc.buffer"])
    });
    case!(1, "checkpoint: episode lengths of u32::MAX", {
        let st = c().edit_u32("pompc.buffer.lengths", |v| {
            v.extend(std::iter::repeat_n(u32::MAX, 64))
        });
        bad_checkpoint("buffer-lengths-overflow", st, &["pompc.buffer"])
    });
    case!(1, "checkpoint: an episode of length 0", {
        let st = c().edit_u32("pompc.buffer.lengths", |v| v.push(0));
        bad_checkpoint("buffer-length-zero", st, &["pompc.buffer"])
    });
    case!(1, "checkpoint: buffer rewards short", {
        let st = c().edit_f32("pompc.buffer.reward", |v| {
            v.pop();
        });
        bad_checkpoint("buffer-reward-short", st, &["pompc.buffer"])
    });
    case!(1, "checkpoint: NaN history return", {
        let st = c().edit_f32("pompc.history.return", |v| v[0] = f32::NAN);
        bad_checkpoint("history-nan", st, &["pompc.history.return"])
    });
    case!(1, "checkpoint: history eval flag 2", {
        let st = c().edit_u32("pompc.history.eval", |v| v[1] = 2);
        bad_checkpoint("history-flag", st, &["pompc.history.eval"])
    });
    case!(1, "checkpoint: history steps out of order", {
        let st = c().edit_u32("pompc.history.step", |v| v.swap(0, 1));
        bad_checkpoint("history-order", st, &["pompc.history.step"])
    });
    case!(1, "checkpoint: history step past the run", {
        let st = c().edit_u32("pompc.history.step", |v| v[1] = 1_000_000);
        bad_checkpoint("history-future", st, &["pompc.history.step"])
    });
    case!(1, "checkpoint: history arrays of different lengths", {
        let st = c().edit_f32("pompc.history.return", |v| v.push(1.0));
        bad_checkpoint("history-lengths", st, &["pompc.history"])
    });
    case!(1, "checkpoint: history rows do not match the episodes", {
        let st = c().meta("pompc.episodes", "1");
        bad_checkpoint("history-episodes", st, &["pompc.episodes"])
    });
    case!(1, "checkpoint: NaN weight", {
        let st = c().edit_f32("_dynamics.0.weight", |v| v[5] = f32::NAN);
        bad_checkpoint("weight-nan", st, &["_dynamics.0.weight"])
    });
    case!(1, "checkpoint: weight missing", {
        bad_checkpoint("weight-missing", c().remove("_pi.2.bias"), &["_pi.2.bias"])
    });
    case!(1, "save refuses NaN Adam state and writes nothing", {
        let p = scratch().join("base.ckpt.safetensors");
        let tr = resume(&p).map_err(|e| e.to_string())?;
        let v = tr.policy().adam().v();
        v.upload(gpu(), &vec![f32::NAN; v.len()]).unwrap();
        let d = case_dir("save-nan");
        let out = d.join("run.ckpt.safetensors");
        expect_err(
            tr.save(&out),
            &["run.ckpt.safetensors", "pompc.opt.policy.v"],
        )?;
        ensure(files_in(&d).is_empty(), format!("left {:?}", files_in(&d)))
    });
    case!(1, "save refuses NaN weights and keeps the old file", {
        let p = scratch().join("base.ckpt.safetensors");
        let tr = resume(&p).map_err(|e| e.to_string())?;
        let d = case_dir("save-nan-weights");
        let out = d.join("run.ckpt.safetensors");
        tr.save(&out).map_err(|e| e.to_string())?;
        let before = std::fs::read(&out).unwrap();
        let params = tr.world().params();
        params.upload(gpu(), &vec![f32::NAN; params.len()]).unwrap();
        expect_err(tr.save(&out), &["run.ckpt.safetensors", "non-finite"])?;
        ensure(
            std::fs::read(&out).unwrap() == before,
            "the old checkpoint changed",
        )?;
        ensure(files_in(&d).len() == 1, format!("left {:?}", files_in(&d)))
    });
    case!(1, "save into a missing directory", {
        let p = scratch().join("base.ckpt.safetensors");
        let tr = resume(&p).map_err(|e| e.to_string())?;
        let d = case_dir("save-missing-dir");
        expect_err(tr.save(d.join("no/dir/x.ckpt")), &["no/dir/x.ckpt"])?;
        ensure(files_in(&d).is_empty(), format!("left {:?}", files_in(&d)))
    });
    case!(1, "save over a directory leaves no temporary file", {
        let p = scratch().join("base.ckpt.safetensors");
        let tr = resume(&p).map_err(|e| e.to_string())?;
        let d = case_dir("save-over-dir");
        std::fs::create_dir(d.join("x.ckpt")).unwrap();
        std::fs::write(d.join("x.ckpt").join("keep"), b"1").unwrap();
        expect_err(tr.save(d.join("x.ckpt")), &["x.ckpt"])?;
        ensure(
            files_in(&d) == vec!["x.ckpt".to_string()],
            format!("left {:?}", files_in(&d)),
        )
    });
    case!(1, "running scale set to NaN", {
        let p = scratch().join("base.ckpt.safetensors");
        let tr = resume(&p).map_err(|e| e.to_string())?;
        expect_err(
            tr.policy().scales()[0].set_value(gpu(), f32::NAN),
            &["RunningScale"],
        )
    });

    // ---- 2. sizes from files or users -------------------------------------------------------
    let w = || weights_file().clone();
    case!(
        2,
        "weights: num_enc_layers = 10000000 (issue 20's example)",
        {
            bad_weights(
                "enc-layers",
                w().meta("num_enc_layers", "10000000"),
                &["num_enc_layers"],
            )
        }
    );
    for (k, val) in [
        ("mlp_dim", "1000000000"),
        ("latent_dim", "4294967296"),
        ("enc_dim", "18446744073709551615"),
        ("obs_dim", "10000000"),
        ("action_dim", "100000"),
        ("num_bins", "100000000"),
        ("num_q", "1000000"),
        ("num_q", "0"),
        ("enc_dim", "0"),
        ("latent_dim", "12"),
        ("simnorm_dim", "4"),
        ("num_enc_layers", "-1"),
        ("mlp_dim", "lots"),
        ("num_bins", "1"),
        ("episodic", "maybe"),
        ("format", "something-else"),
    ] {
        case!(2, format!("weights: metadata {k} = {val}"), {
            bad_weights(&format!("meta-{k}-{val}"), w().meta(k, val), &[k])
        });
    }
    case!(2, "weights: metadata lacks obs_dim", {
        bad_weights("meta-no-obs", w().drop_meta("obs_dim"), &["obs_dim"])
    });
    case!(
        2,
        "weights: mlp_dim 16384 x 64 layers (over the parameter bound)",
        {
            bad_weights(
                "meta-params",
                w().meta("mlp_dim", "16384")
                    .meta("enc_dim", "16384")
                    .meta("num_enc_layers", "64"),
                &["parameters"],
            )
        }
    );
    case!(2, "weights: tensor of the wrong shape", {
        let mut st = w();
        let i = st.idx("_reward.2.bias");
        st.tensors[i].2 = vec![st.tensors[i].2[0], 1];
        bad_weights("tensor-shape", st, &["_reward.2.bias"])
    });
    case!(2, "weights: integer tensor", {
        let mut st = w();
        let i = st.idx("_pi.0.bias");
        st.tensors[i].1 = Dtype::I32;
        bad_weights("tensor-dtype", st, &["_pi.0.bias"])
    });
    case!(2, "weights: an extra tensor", {
        let mut st = w();
        st.tensors
            .push(("_extra.weight".into(), Dtype::F32, vec![1], vec![0; 4]));
        bad_weights("tensor-extra", st, &["_extra.weight"])
    });
    for (name, spec) in [
        (
            "mlp_dim 2^20",
            ModelSpec {
                mlp_dim: 1 << 20,
                ..tiny_spec()
            },
        ),
        (
            "latent_dim 2^40",
            ModelSpec {
                latent_dim: 1 << 40,
                ..tiny_spec()
            },
        ),
        (
            "mlp_dim usize::MAX / 2",
            ModelSpec {
                mlp_dim: usize::MAX / 2,
                ..tiny_spec()
            },
        ),
        (
            "obs_dim usize::MAX",
            ModelSpec {
                obs_dim: usize::MAX,
                ..tiny_spec()
            },
        ),
        (
            "num_enc_layers 10^7",
            ModelSpec {
                num_enc_layers: 10_000_000,
                ..tiny_spec()
            },
        ),
        (
            "num_bins 10^9",
            ModelSpec {
                num_bins: 1_000_000_000,
                ..tiny_spec()
            },
        ),
    ] {
        case!(2, format!("Weights::init with {name}"), {
            let t = Instant::now();
            let r = expect_err(Weights::init(&spec, 0), &["model spec"]);
            ensure(
                t.elapsed() < Duration::from_secs(1),
                format!("took {:?}", t.elapsed()),
            )?;
            r
        });
    }
    case!(2, "ModelSpec::tdmpc2 of an unknown size", {
        expect_err(ModelSpec::tdmpc2(3, 4, 1), &["size 3"])
    });
    case!(
        2,
        "GpuBuffer whose byte size overflows (issue 20's example)",
        {
            expect_err(
                GpuBuffer::<f32>::new(gpu(), "huge", usize::MAX / 4 + 2),
                &["huge"],
            )
        }
    );
    case!(2, "GpuBuffer of usize::MAX elements", {
        expect_err(GpuBuffer::<u32>::new(gpu(), "max", usize::MAX), &["max"])
    });
    case!(2, "GpuBuffer past the device's largest binding", {
        let max = gpu().limits().max_buffer_size;
        expect_err(
            GpuBuffer::<u8>::new(gpu(), "big", max as usize + 16),
            &["big"],
        )
    });
    case!(2, "upload past the end with an overflowing offset", {
        let b = GpuBuffer::<f32>::new(gpu(), "small", 4).unwrap();
        expect_err(b.upload_at(gpu(), usize::MAX, &[1.0]), &["small"])
    });
    case!(2, "copy_range with an overflowing offset", {
        let a = GpuBuffer::<f32>::new(gpu(), "a", 4).unwrap();
        let b = GpuBuffer::<f32>::new(gpu(), "b", 4).unwrap();
        let mut rec = Recorder::new(gpu());
        expect_err(rec.copy_range(&a, usize::MAX - 1, &b, 0, 4), &["copy"])
    });
    case!(2, "#for of 4e9 in user WGSL (issue 20's example)", {
        let t = Instant::now();
        let mut p = good_problem();
        p.wgsl
            .push_str("\n#for I in 0..4000000000\nconst C{I}: f32 = 1.0;\n#endfor\n");
        let r = expect_err(Mppi::new(gpu(), p, mppi_cfg()), &["#for"]);
        ensure(
            t.elapsed() < Duration::from_secs(2),
            format!("took {:?}", t.elapsed()),
        )?;
        r
    });
    case!(2, "#for nested 9 deep", {
        let mut text = String::new();
        for i in 0..9 {
            text.push_str(&format!("#for V{i} in 0..2\n"));
        }
        text.push_str("// x\n");
        for _ in 0..9 {
            text.push_str("#endfor\n");
        }
        expect_err(
            preprocess_with("nest", &text, &Header::default(), &|_| None),
            &["nested"],
        )
    });
    case!(2, "#for expanding past the byte bound", {
        let line = format!("// {}\n", "x".repeat(4000));
        let text = format!("#for I in 0..4096\n#for J in 0..4096\n{line}#endfor\n#endfor\n");
        let t = Instant::now();
        let r = expect_err(
            preprocess_with("wide", &text, &Header::default(), &|_| None),
            &["expands past"],
        );
        ensure(
            t.elapsed() < Duration::from_secs(5),
            format!("took {:?}", t.elapsed()),
        )?;
        r
    });
    case!(2, "MPPI state of 10000 (issue 20's example)", {
        let t = Instant::now();
        let p = Problem {
            state_dim: 10_000,
            ..good_problem()
        };
        let r = expect_err(Mppi::new(gpu(), p, mppi_cfg()), &["state_dim", "10000"]);
        ensure(
            t.elapsed() < Duration::from_secs(1),
            format!("took {:?}", t.elapsed()),
        )?;
        r
    });
    case!(2, "MPPI control dimension 1000", {
        let p = Problem {
            control_dim: 1000,
            ..good_problem()
        };
        expect_err(Mppi::new(gpu(), p, MppiConfig::new(1000)), &["control_dim"])
    });
    case!(2, "MPPI parameter buffer of 2^40", {
        let p = Problem {
            param_len: 1 << 40,
            ..good_problem()
        };
        expect_err(Mppi::new(gpu(), p, mppi_cfg()), &["param_len"])
    });
    case!(
        2,
        "MPPI horizon 0",
        bad_mppi_cfg(|c| c.horizon = 0, &["horizon"])
    );
    case!(
        2,
        "MPPI horizon 1001",
        bad_mppi_cfg(|c| c.horizon = 1001, &["horizon"])
    );
    case!(
        2,
        "MPPI 0 samples",
        bad_mppi_cfg(|c| c.samples = 0, &["samples"])
    );
    case!(
        2,
        "MPPI usize::MAX samples",
        bad_mppi_cfg(|c| c.samples = usize::MAX, &["samples"])
    );
    case!(
        2,
        "MPPI sigma for 2 controls of 1",
        bad_mppi_cfg(|c| c.sigma = vec![0.2; 2], &["sigma"])
    );
    for (name, f) in [
        (
            "0 samples",
            (|c: &mut PlannerConfig| c.num_samples = 0) as fn(&mut PlannerConfig),
        ),
        ("1 sample", |c| c.num_samples = 1),
        ("4096 samples", |c| c.num_samples = 4096),
        ("horizon 0", |c| c.horizon = 0),
        ("horizon 65", |c| c.horizon = 65),
        ("0 iterations", |c| c.iterations = 0),
        ("usize::MAX iterations", |c| c.iterations = usize::MAX),
        ("0 elites", |c| c.num_elites = 0),
        ("more elites than samples", |c| c.num_elites = 17),
        ("only policy trajectories", |c| c.num_pi_trajs = 16),
    ] {
        case!(
            2,
            format!("planner config: {name}"),
            bad_planner(
                {
                    let mut c = planner_cfg();
                    f(&mut c);
                    c
                },
                &["planner config"]
            )
        );
    }
    case!(2, "replay buffer sample of usize::MAX", {
        let mut b = ReplayBuffer::new(3, 1, 100).unwrap();
        b.start(&[0.0; 3]).unwrap();
        b.push(&[0.0], 0.0, &[0.0; 3], None).unwrap();
        b.finish().unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        expect_err(b.sample(&mut rng, usize::MAX, 1), &["sample"])
    });
    case!(2, "replay buffer sample of horizon usize::MAX", {
        let b = ReplayBuffer::new(3, 1, 100).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        expect_err(b.sample(&mut rng, 4, usize::MAX), &["sample"])
    });
    case!(2, "replay buffer for usize::MAX observations", {
        expect_err(ReplayBuffer::new(usize::MAX, 1, 10), &["obs"])
    });
    case!(2, "replay buffer for 2^62 actions", {
        expect_err(ReplayBuffer::new(3, 1 << 62, 10), &["action"])
    });
    case!(2, "evaluation of usize::MAX episodes on a trainer", {
        let p = scratch().join("base.ckpt.safetensors");
        let mut tr = resume(&p).map_err(|e| e.to_string())?;
        expect_err(tr.evaluate(usize::MAX, 0), &["evaluation episodes"])
    });
    case!(2, "replay buffer of capacity 0", {
        expect_err(ReplayBuffer::new(3, 1, 0), &["capacity"])
    });
    case!(2, "Workspace for usize::MAX rows", {
        expect_err(Workspace::new(gpu(), &tiny_spec(), usize::MAX), &["rows"])
    });
    case!(2, "world-model update of usize::MAX sub-trajectories", {
        let w = Weights::init(&tiny_spec(), 0).unwrap();
        expect_err(
            WorldModelTrainer::new(gpu(), &w, UpdateConfig::tdmpc2(), usize::MAX),
            &["batch"],
        )
    });
    case!(2, "world-model update of horizon 10^6", {
        let w = Weights::init(&tiny_spec(), 0).unwrap();
        let cfg = UpdateConfig {
            horizon: 1_000_000,
            ..UpdateConfig::tdmpc2()
        };
        expect_err(WorldModelTrainer::new(gpu(), &w, cfg, 8), &["horizon"])
    });
    case!(2, "policy update over usize::MAX states", {
        let cfg = PolicyUpdateConfig {
            states: usize::MAX,
            ..PolicyUpdateConfig::tdmpc2(1)
        };
        expect_err(PolicyTrainer::new(gpu(), &tiny_spec(), cfg, 8), &["states"])
    });
    case!(2, "training batch of 2^20", {
        let mut cfg = train_config(10);
        cfg.batch = 1 << 20;
        let env = pompc::env::make(ENV).unwrap();
        expect_err(
            Trainer::new(gpu(), env, pompc::env::make(ENV).unwrap(), cfg),
            &["batch"],
        )
    });
    case!(2, "training for 2^40 steps", {
        let mut cfg = train_config(10);
        cfg.steps = 1 << 40;
        let env = pompc::env::make(ENV).unwrap();
        expect_err(
            Trainer::new(gpu(), env, pompc::env::make(ENV).unwrap(), cfg),
            &["steps"],
        )
    });
    case!(2, "evaluation of usize::MAX episodes", {
        let mut cfg = train_config(10);
        cfg.eval_episodes = usize::MAX;
        let env = pompc::env::make(ENV).unwrap();
        expect_err(
            Trainer::new(gpu(), env, pompc::env::make(ENV).unwrap(), cfg),
            &["evaluation episodes"],
        )
    });
    case!(2, "action repeat 0", {
        expect_err(Pendulum::new().with_action_repeat(0), &["action repeat"])
    });
    case!(2, "action repeat 3 (not a divisor of 1000)", {
        expect_err(
            Cartpole::new(Task::Balance).with_action_repeat(3),
            &["action repeat"],
        )
    });

    // ---- 3. non-finite values at the boundary -----------------------------------------------
    case!(3, "MPPI set_params NaN (issue 20's example)", {
        expect_err(mppi().set_params(&[f32::NAN]), &["parameter 0"])
    });
    case!(3, "MPPI set_params infinity", {
        expect_err(mppi().set_params(&[f32::INFINITY]), &["parameter 0"])
    });
    case!(3, "MPPI set_controls NaN", {
        let mut m = mppi();
        expect_err(m.set_controls(&[0.0, f32::NAN, 0.0, 0.0]), &["step 1"])
    });
    case!(3, "MPPI set_controls outside the bounds", {
        let mut m = mppi();
        expect_err(m.set_controls(&[0.0, 0.0, 0.0, 7.0]), &["step 3", "u_min"])
    });
    case!(3, "MPPI step from a NaN state", {
        expect_err(mppi().step(&[f32::NAN]), &["state"])
    });
    case!(3, "MPPI step from an infinite state", {
        expect_err(mppi().step(&[f32::INFINITY]), &["state"])
    });
    for (name, f, needle) in [
        (
            "sigma 1e-30 (issue 20's example)",
            (|c: &mut MppiConfig| c.sigma = vec![1e-30]) as fn(&mut MppiConfig),
            "sigma",
        ),
        ("sigma 0", |c| c.sigma = vec![0.0], "sigma"),
        ("sigma NaN", |c| c.sigma = vec![f32::NAN], "sigma"),
        ("sigma -1", |c| c.sigma = vec![-1.0], "sigma"),
        ("sigma 1e30", |c| c.sigma = vec![1e30], "sigma"),
        ("lambda 0", |c| c.lambda = 0.0, "lambda"),
        ("lambda NaN", |c| c.lambda = f32::NAN, "lambda"),
        ("lambda 1e-30", |c| c.lambda = 1e-30, "lambda"),
        ("lambda infinity", |c| c.lambda = f32::INFINITY, "lambda"),
        ("gamma -1", |c| c.gamma = -1.0, "gamma"),
        ("gamma NaN", |c| c.gamma = f32::NAN, "gamma"),
        ("gamma 1e30", |c| c.gamma = 1e30, "gamma"),
        ("dt 0", |c| c.dt = 0.0, "dt"),
        ("dt NaN", |c| c.dt = f32::NAN, "dt"),
        ("dt -0.1", |c| c.dt = -0.1, "dt"),
        ("u_min above u_max", |c| c.u_min = vec![2.0], "u_min"),
        ("u_min NaN", |c| c.u_min = vec![f32::NAN], "bounds"),
        (
            "u_max infinity",
            |c| c.u_max = vec![f32::INFINITY],
            "bounds",
        ),
        ("u_max 1e30", |c| c.u_max = vec![1e30], "bounds"),
    ] {
        case!(3, format!("MPPI config {name}"), bad_mppi_cfg(f, &[needle]));
    }
    case!(
        3,
        "MPPI dynamics NaN in every rollout (issue 20's example)",
        {
            let p = problem("return State(x[0] + u[0] * (param(0u) / param(0u)));");
            let mut m = Mppi::new(gpu(), p, mppi_cfg()).map_err(|e| e.to_string())?;
            m.set_params(&[0.0]).unwrap();
            let before = m.controls().unwrap();
            expect_err(m.step(&[0.0]), &["NaN or infinite cost"])?;
            ensure(m.controls().unwrap() == before, "the controls changed")
        }
    );
    case!(3, "MPPI costs infinite in every rollout", {
        let mut p = good_problem();
        p.wgsl = p
            .wgsl
            .replace("return x[0] * x[0];", "return param(0u) * 1e30 * 1e30;");
        let mut m = Mppi::new(gpu(), p, mppi_cfg()).map_err(|e| e.to_string())?;
        m.set_params(&[1.0]).unwrap();
        expect_err(m.step(&[0.0]), &["NaN or infinite cost"])
    });
    let pend = PendulumParams::default();
    for (name, p) in [
        (
            "mass NaN",
            PendulumParams {
                mass: f64::NAN,
                ..pend
            },
        ),
        ("mass 0", PendulumParams { mass: 0.0, ..pend }),
        ("mass -1", PendulumParams { mass: -1.0, ..pend }),
        (
            "length 0",
            PendulumParams {
                length: 0.0,
                ..pend
            },
        ),
        (
            "length infinity",
            PendulumParams {
                length: f64::INFINITY,
                ..pend
            },
        ),
        (
            "gravity NaN",
            PendulumParams {
                gravity: f64::NAN,
                ..pend
            },
        ),
        (
            "damping -1",
            PendulumParams {
                damping: -1.0,
                ..pend
            },
        ),
        (
            "max_torque NaN",
            PendulumParams {
                max_torque: f64::NAN,
                ..pend
            },
        ),
        ("dt 0", PendulumParams { dt: 0.0, ..pend }),
        (
            "dt NaN",
            PendulumParams {
                dt: f64::NAN,
                ..pend
            },
        ),
        ("dt 10", PendulumParams { dt: 10.0, ..pend }),
        (
            "substeps 0",
            PendulumParams {
                substeps: 0,
                ..pend
            },
        ),
    ] {
        let field = name.split(' ').next().unwrap().to_string();
        case!(3, format!("pendulum with {name}"), {
            expect_err(Pendulum::with_params(p), &["pendulum", &field])
        });
    }
    let cp = CartpoleParams::default();
    for (name, p) in [
        (
            "cart_mass 0",
            CartpoleParams {
                cart_mass: 0.0,
                ..cp
            },
        ),
        (
            "pole_mass NaN",
            CartpoleParams {
                pole_mass: f64::NAN,
                ..cp
            },
        ),
        (
            "half_length -1",
            CartpoleParams {
                half_length: -1.0,
                ..cp
            },
        ),
        (
            "cart_friction -1",
            CartpoleParams {
                cart_friction: -1.0,
                ..cp
            },
        ),
        (
            "max_force infinity",
            CartpoleParams {
                max_force: f64::INFINITY,
                ..cp
            },
        ),
        ("substeps 0", CartpoleParams { substeps: 0, ..cp }),
    ] {
        let field = name.split(' ').next().unwrap().to_string();
        case!(3, format!("cartpole with {name}"), {
            expect_err(
                Cartpole::with_params(Task::Swingup, p),
                &["cartpole", &field],
            )
        });
    }
    let ac = AcrobotParams::default();
    for (name, p) in [
        ("mass1 0", AcrobotParams { mass1: 0.0, ..ac }),
        (
            "length2 NaN",
            AcrobotParams {
                length2: f64::NAN,
                ..ac
            },
        ),
        (
            "damping NaN",
            AcrobotParams {
                damping: f64::NAN,
                ..ac
            },
        ),
        ("dt -0.01", AcrobotParams { dt: -0.01, ..ac }),
    ] {
        let field = name.split(' ').next().unwrap().to_string();
        case!(3, format!("acrobot with {name}"), {
            expect_err(Acrobot::with_params(p), &["acrobot", &field])
        });
    }
    let re = ReacherParams::default();
    for (name, p) in [
        ("mass2 0", ReacherParams { mass2: 0.0, ..re }),
        (
            "length1 -0.1",
            ReacherParams {
                length1: -0.1,
                ..re
            },
        ),
        (
            "target_radius -1",
            ReacherParams {
                target_radius: -1.0,
                ..re
            },
        ),
        (
            "max_torque -1",
            ReacherParams {
                max_torque: -1.0,
                ..re
            },
        ),
    ] {
        let field = name.split(' ').next().unwrap().to_string();
        case!(3, format!("reacher with {name}"), {
            expect_err(Reacher::with_params(p), &["reacher", &field])
        });
    }
    case!(3, "pendulum set_state NaN", {
        expect_err(Pendulum::new().set_state([f64::NAN, 0.0]), &["state[0]"])
    });
    case!(3, "cartpole set_state infinity", {
        expect_err(
            Cartpole::new(Task::Balance).set_state([0.0, 0.0, f64::INFINITY, 0.0]),
            &["state[2]"],
        )
    });
    case!(3, "acrobot set_state NaN", {
        expect_err(
            Acrobot::new().set_state([0.0, 0.0, 0.0, f64::NAN]),
            &["state[3]"],
        )
    });
    case!(3, "reacher set_target NaN", {
        expect_err(Reacher::new().set_target([f64::NAN, 0.0]), &["target[0]"])
    });
    case!(3, "pendulum stepped to a non-finite observation", {
        let mut p = Pendulum::new();
        p.set_state([0.1, 1e300]).unwrap();
        expect_err(p.step(&[0.0]), &["diverged"])
    });
    case!(3, "cartpole stepped to a non-finite observation", {
        let mut c = Cartpole::new(Task::Swingup);
        c.set_state([1e308, 0.0, 1e308, 1e308]).unwrap();
        expect_err(c.step(&[1.0]), &["diverged"])
    });
    case!(3, "environment action NaN", {
        expect_err(Acrobot::new().step(&[f32::NAN]), &["action[0]"])
    });
    case!(3, "replay buffer NaN reward (issue 20's example)", {
        let mut b = ReplayBuffer::new(3, 1, 10).unwrap();
        b.start(&[0.0; 3]).unwrap();
        expect_err(b.push(&[0.0], f32::NAN, &[0.0; 3], None), &["reward"])
    });
    case!(3, "replay buffer infinite reward", {
        let mut b = ReplayBuffer::new(3, 1, 10).unwrap();
        b.start(&[0.0; 3]).unwrap();
        expect_err(b.push(&[0.0], f32::INFINITY, &[0.0; 3], None), &["reward"])
    });
    case!(3, "replay buffer NaN action", {
        let mut b = ReplayBuffer::new(3, 1, 10).unwrap();
        b.start(&[0.0; 3]).unwrap();
        expect_err(b.push(&[f32::NAN], 0.0, &[0.0; 3], None), &["action[0]"])
    });
    case!(3, "replay buffer NaN observation", {
        let mut b = ReplayBuffer::new(3, 1, 10).unwrap();
        b.start(&[0.0; 3]).unwrap();
        expect_err(
            b.push(&[0.0], 0.0, &[0.0, f32::NAN, 0.0], None),
            &["observation[1]"],
        )
    });
    case!(3, "replay buffer NaN first observation", {
        let mut b = ReplayBuffer::new(3, 1, 10).unwrap();
        expect_err(b.start(&[f32::NEG_INFINITY, 0.0, 0.0]), &["observation[0]"])
    });
    case!(3, "replay buffer NaN planner mean", {
        let mut b = ReplayBuffer::new(3, 1, 10).unwrap();
        b.start(&[0.0; 3]).unwrap();
        expect_err(
            b.push(&[0.0], 0.0, &[0.0; 3], Some(&[f32::NAN, 1.0])),
            &["planner"],
        )
    });
    case!(3, "replay buffer negative planner std", {
        let mut b = ReplayBuffer::new(3, 1, 10).unwrap();
        b.start(&[0.0; 3]).unwrap();
        expect_err(b.push(&[0.0], 0.0, &[0.0; 3], Some(&[0.0, -1.0])), &["std"])
    });
    case!(3, "replay buffer set_planner NaN", {
        let mut b = ReplayBuffer::new(3, 1, 10).unwrap();
        b.start(&[0.0; 3]).unwrap();
        b.push(&[0.0], 0.0, &[0.0; 3], None).unwrap();
        b.finish().unwrap();
        expect_err(b.set_planner(0, 0, &[0.0, f32::NAN]), &["planner"])
    });
    for (name, k, val) in [
        ("vmin -inf, vmax inf (issue 20's example)", "vmin", "-inf"),
        ("vmax inf", "vmax", "inf"),
        ("vmin NaN", "vmin", "NaN"),
        ("vmin above vmax", "vmin", "20"),
        ("vmin equal to vmax", "vmin", "10"),
        ("vmax 1e6", "vmax", "1e6"),
        ("log_std_min -inf", "log_std_min", "-inf"),
        ("log_std_max NaN", "log_std_max", "NaN"),
        ("log_std_min above log_std_max", "log_std_min", "5"),
        ("log_std_max 1000", "log_std_max", "1000"),
    ] {
        case!(3, format!("weights: metadata {name}"), {
            bad_weights(&format!("meta3-{k}-{val}"), w().meta(k, val), &["metadata"])
        });
    }
    case!(3, "weights: a NaN tensor", {
        let st = w().edit_f32("_Qs.params.1.weight", |v| v[0] = f32::NAN);
        bad_weights("tensor-nan", st, &["_Qs.params.1.weight"])
    });
    case!(3, "weights: an infinite tensor in f16", {
        let mut st = w();
        let i = st.idx("_pi.2.bias");
        let n = st.tensors[i].3.len() / 4;
        let h: Vec<half::f16> = (0..n).map(|_| half::f16::INFINITY).collect();
        st.tensors[i].1 = Dtype::F16;
        st.tensors[i].3 = bytemuck::cast_slice(&h).to_vec();
        bad_weights("tensor-inf-f16", st, &["_pi.2.bias"])
    });
    case!(3, "Weights::save of NaN weights", {
        let mut wt = Weights::init(&tiny_spec(), 0).unwrap();
        wt.tensors.get_mut("_encoder.state.0.bias").unwrap().data[0] = f32::NAN;
        let d = case_dir("weights-save-nan");
        expect_err(
            wt.save(d.join("w.safetensors")),
            &["w.safetensors", "_encoder.state.0.bias"],
        )?;
        ensure(files_in(&d).is_empty(), format!("left {:?}", files_in(&d)))
    });
    case!(3, "WorldModel of a spec with infinite bins", {
        let mut wt = Weights::init(&tiny_spec(), 0).unwrap();
        wt.spec.vmax = f32::INFINITY;
        expect_err(WorldModel::new(gpu(), &wt), &["vmax"])
    });
    for (name, f, needle) in [
        (
            "temperature 3e38 (issue 20's example)",
            (|c: &mut PlannerConfig| c.temperature = 3e38) as fn(&mut PlannerConfig),
            "temperature",
        ),
        (
            "temperature NaN",
            |c| c.temperature = f32::NAN,
            "temperature",
        ),
        ("temperature 0", |c| c.temperature = 0.0, "temperature"),
        ("temperature -1", |c| c.temperature = -1.0, "temperature"),
        (
            "temperature infinity",
            |c| c.temperature = f32::INFINITY,
            "temperature",
        ),
        ("discount 0", |c| c.discount = 0.0, "discount"),
        ("discount 1.5", |c| c.discount = 1.5, "discount"),
        ("discount NaN", |c| c.discount = f32::NAN, "discount"),
        ("min_std 0", |c| c.min_std = 0.0, "std"),
        ("min_std NaN", |c| c.min_std = f32::NAN, "std"),
        ("max_std infinity", |c| c.max_std = f32::INFINITY, "std"),
        ("max_std 1e30", |c| c.max_std = 1e30, "std"),
        ("min_std above max_std", |c| c.min_std = 3.0, "std"),
        (
            "MPPI lambda 0",
            |c| c.mode = PlannerMode::Mppi { lambda: 0.0 },
            "lambda",
        ),
        (
            "MPPI lambda NaN",
            |c| c.mode = PlannerMode::Mppi { lambda: f32::NAN },
            "lambda",
        ),
        (
            "MPPI lambda 1e-30",
            |c| c.mode = PlannerMode::Mppi { lambda: 1e-30 },
            "lambda",
        ),
    ] {
        case!(
            3,
            format!("planner config {name}"),
            bad_planner(
                {
                    let mut c = planner_cfg();
                    f(&mut c);
                    c
                },
                &[needle]
            )
        );
    }
    case!(3, "planner observation NaN", {
        let mut p = Planner::new(gpu(), tiny_model(), planner_cfg()).map_err(|e| e.to_string())?;
        expect_err(p.plan(&[0.0, f32::NAN, 0.0], &[true]), &["feature 1"])
    });
    case!(
        3,
        "planner observation infinity in the second environment",
        {
            let mut p =
                Planner::new(gpu(), tiny_model(), planner_cfg()).map_err(|e| e.to_string())?;
            expect_err(
                p.plan(&[0.0, 0.0, 0.0, f32::INFINITY, 0.0, 0.0], &[true, true]),
                &["environment 1"],
            )
        }
    );
    let up = UpdateConfig::tdmpc2();
    for (name, cfg) in [
        (
            "rho NaN",
            UpdateConfig {
                rho: f32::NAN,
                ..up.clone()
            },
        ),
        (
            "rho 1e30",
            UpdateConfig {
                rho: 1e30,
                ..up.clone()
            },
        ),
        (
            "discount 2",
            UpdateConfig {
                discount: 2.0,
                ..up.clone()
            },
        ),
        (
            "tau 1.5",
            UpdateConfig {
                tau: 1.5,
                ..up.clone()
            },
        ),
        (
            "lr NaN",
            UpdateConfig {
                lr: f32::NAN,
                ..up.clone()
            },
        ),
        (
            "lr -1",
            UpdateConfig {
                lr: -1.0,
                ..up.clone()
            },
        ),
        (
            "consistency_coef infinity",
            UpdateConfig {
                consistency_coef: f32::INFINITY,
                ..up.clone()
            },
        ),
        (
            "grad_clip_norm NaN",
            UpdateConfig {
                grad_clip_norm: f32::NAN,
                ..up.clone()
            },
        ),
        (
            "horizon 0",
            UpdateConfig {
                horizon: 0,
                ..up.clone()
            },
        ),
    ] {
        let field = name.split(' ').next().unwrap().to_string();
        case!(3, format!("world-model update config {name}"), {
            let w = Weights::init(&tiny_spec(), 0).unwrap();
            expect_err(WorldModelTrainer::new(gpu(), &w, cfg, 8), &[&field])
        });
    }
    let pu = PolicyUpdateConfig::pompc(1, 1.0);
    for (name, cfg) in [
        (
            "q_scale_init 0",
            PolicyUpdateConfig {
                q_scale_init: 0.0,
                ..pu.clone()
            },
        ),
        (
            "scale_tau 2",
            PolicyUpdateConfig {
                scale_tau: 2.0,
                ..pu.clone()
            },
        ),
        (
            "lr infinity",
            PolicyUpdateConfig {
                lr: f32::INFINITY,
                ..pu.clone()
            },
        ),
        (
            "rho NaN",
            PolicyUpdateConfig {
                rho: f32::NAN,
                ..pu.clone()
            },
        ),
        (
            "states 0",
            PolicyUpdateConfig {
                states: 0,
                ..pu.clone()
            },
        ),
    ] {
        let field = name.split(' ').next().unwrap().to_string();
        case!(3, format!("policy update config {name}"), {
            expect_err(PolicyTrainer::new(gpu(), &tiny_spec(), cfg, 8), &[&field])
        });
    }
    for (name, cfg, needle) in [
        (
            "beta1 1",
            AdamConfig {
                beta1: 1.0,
                ..AdamConfig::default()
            },
            "beta1",
        ),
        (
            "eps NaN",
            AdamConfig {
                eps: f32::NAN,
                ..AdamConfig::default()
            },
            "eps",
        ),
        (
            "lr NaN",
            AdamConfig {
                lr: f32::NAN,
                ..AdamConfig::default()
            },
            "learning rate",
        ),
        (
            "clip -1",
            AdamConfig {
                clip: Some(-1.0),
                ..AdamConfig::default()
            },
            "clipping",
        ),
    ] {
        case!(3, format!("Adam {name}"), {
            expect_err(
                Adam::new(gpu(), 16, &[ParamGroup::new(0..16, 1.0)], cfg),
                &[needle],
            )
        });
    }
    case!(
        3,
        "Method::parse lambda NaN",
        expect_err(Method::parse("po-mpc", Some(f32::NAN)), &["lambda"])
    );
    case!(
        3,
        "Method::parse lambda -1",
        expect_err(Method::parse("po-mpc", Some(-1.0)), &["lambda"])
    );
    case!(3, "GPU wait timeout of 0", {
        expect_err(gpu().set_wait_timeout(Duration::ZERO), &["timeout"])
    });
    case!(3, "GPU wait timeout of 100 days", {
        expect_err(
            gpu().set_wait_timeout(Duration::from_secs(100 * 86_400)),
            &["timeout"],
        )
    });

    // ---- 4. work that does not finish --------------------------------------------------------
    case!(
        4,
        "MPPI dynamics with an endless loop (issue 20's example)",
        {
            endless(
                "var y = x[0]; loop { y = y * 1.0001 + u[0]; if (y == 12345.0) { break; } } \
             return State(y);",
            )
        }
    );
    case!(4, "MPPI dynamics with a loop of 10^8 steps", {
        endless(
            "var y = x[0]; for (var i = 0u; i < 100000000u; i++) { y = y + 1e-8 * u[0]; } \
             return State(y);",
        )
    });
    case!(4, "a GPU wait past the timeout", 60, {
        let g = gpu();
        let (m, k) = (512, 512);
        let layer = Linear::new(g, LinearConfig::new(k, k)).unwrap();
        let z = GpuBuffer::<f32>::new(g, "z", m * k).unwrap();
        let wt = GpuBuffer::<f32>::new(g, "w", k * k).unwrap();
        let b = GpuBuffer::<f32>::new(g, "b", k).unwrap();
        let y = GpuBuffer::<f32>::new(g, "y", m * k).unwrap();
        let record = |rec: &mut Recorder, copies: usize| {
            for _ in 0..copies {
                layer
                    .record(rec, m, LinearInputs::new(&z, &wt, &b, &y))
                    .unwrap();
            }
        };
        // Enough copies of the product for about 50 ms on this device, 1 ms allowed.
        let mut rec = Recorder::new(g);
        record(&mut rec, 1);
        let t = Instant::now();
        rec.finish().map_err(|e| e.to_string())?;
        let copies = (0.05 / t.elapsed().as_secs_f64()).ceil().clamp(1.0, 5000.0) as usize;
        let mut rec = Recorder::new(g);
        record(&mut rec, copies);
        let h = rec.read(&y);
        g.set_wait_timeout(Duration::from_millis(1)).unwrap();
        let r = rec.finish().and_then(|rb| rb.get(&h));
        g.set_wait_timeout(pompc::gpu::DEFAULT_WAIT_TIMEOUT)
            .unwrap();
        let timed_out = matches!(r, Err(Error::Timeout { .. }));
        expect_err(r, &["did not finish", "Gpu::set_wait_timeout"])?;
        ensure(timed_out, "not Error::Timeout")?;
        // The device is still usable once the work is done.
        g.wait_idle().map_err(|e| e.to_string())?;
        let back = GpuBuffer::from_slice(g, "after", &[1u32, 2, 3])
            .and_then(|b| b.download(g))
            .map_err(|e| e.to_string())?;
        ensure(back == vec![1, 2, 3], "the device did not recover")
    });
    case!(4, "pendulum substeps usize::MAX (issue 20's example)", {
        let p = PendulumParams {
            substeps: usize::MAX,
            ..pend
        };
        expect_err(Pendulum::with_params(p), &["substeps"])
    });
    case!(4, "reacher substeps 10^6", {
        let p = ReacherParams {
            substeps: 1_000_000,
            ..re
        };
        expect_err(Reacher::with_params(p), &["substeps"])
    });
    case!(4, "acrobot substeps usize::MAX", {
        let p = AcrobotParams {
            substeps: usize::MAX,
            ..ac
        };
        expect_err(Acrobot::with_params(p), &["substeps"])
    });

    // ---- 5. panics on out-of-range arguments ---------------------------------------------
    let plan = || Plan {
        batch: 2,
        action_dim: 3,
        action: vec![0.0; 6],
        mean: vec![0.0; 6],
        std: vec![1.0; 6],
        value: vec![0.0; 2],
        chosen: vec![0; 2],
    };
    case!(5, "Plan::try_action past the batch (issue 20's example)", {
        expect_err(plan().try_action(2), &["environment 2"])
    });
    case!(5, "Plan::try_action at usize::MAX", {
        expect_err(plan().try_action(usize::MAX), &["environment"])
    });
    case!(5, "Plan::try_action on a plan whose vectors are short", {
        let mut p = plan();
        p.action.truncate(4);
        expect_err(p.try_action(1), &["environment 1"])
    });
    case!(
        5,
        "Q-head choice with a single head (issue 20's example)",
        { ensure(chosen_heads(1, 0, 0, 1) == [0, 0], "expected [0, 0]") }
    );
    case!(5, "Q-head choice with no head", {
        ensure(chosen_heads(1, 0, 0, 0) == [0, 0], "expected [0, 0]")
    });
    case!(5, "planner over a single Q head", {
        let one = Weights::init(
            &ModelSpec {
                num_q: 1,
                ..tiny_spec()
            },
            0,
        )
        .unwrap();
        let m = WorldModel::new(gpu(), &one).map_err(|e| e.to_string())?;
        expect_err(Planner::new(gpu(), &m, planner_cfg()), &["Q heads"])
    });
    case!(5, "world-model update over a single Q head", {
        let one = Weights::init(
            &ModelSpec {
                num_q: 1,
                ..tiny_spec()
            },
            0,
        )
        .unwrap();
        expect_err(
            WorldModelTrainer::new(gpu(), &one, UpdateConfig::tdmpc2(), 8),
            &["Q heads"],
        )
    });
    case!(5, "policy update over a single Q head", {
        let spec = ModelSpec {
            num_q: 1,
            ..tiny_spec()
        };
        expect_err(
            PolicyTrainer::new(gpu(), &spec, PolicyUpdateConfig::tdmpc2(1), 8),
            &["Q heads"],
        )
    });
    case!(5, "Tolerance with lower above upper", {
        expect_err(
            Tolerance::bounds(1.0, 0.0).margin(1.0).try_reward(0.0),
            &["lower"],
        )
    });
    case!(5, "Tolerance with a negative margin", {
        expect_err(
            Tolerance::bounds(0.0, 1.0)
                .margin(-1.0)
                .sigmoid(Sigmoid::Linear, 0.1)
                .try_reward(0.0),
            &["margin"],
        )
    });
    case!(5, "Tolerance with value_at_margin 1", {
        expect_err(
            Tolerance::bounds(0.0, 1.0)
                .margin(1.0)
                .sigmoid(Sigmoid::LongTail, 1.0)
                .try_reward(0.0),
            &["value_at_margin"],
        )
    });
    case!(5, "CartPole problem with a NaN mass", {
        expect_err(
            CartPole {
                cart_mass: f64::NAN,
                ..Default::default()
            }
            .problem(),
            &["cart_mass"],
        )
    });
    case!(5, "DiffDrive problem with margin 0", {
        expect_err(
            DiffDrive {
                margin: 0.0,
                ..Default::default()
            }
            .problem(),
            &["margin"],
        )
    });
    case!(5, "DiffDrive obstacles of an empty parameter buffer", {
        ensure(DiffDrive::obstacles(&[]).is_empty(), "expected none")
    });
    case!(5, "simulate a step with a short state", {
        expect_err(
            simulate_step(
                &DiffDrive::default(),
                &[0.0],
                &[0.0, 0.0],
                0,
                0.1,
                &[0.0; 5],
            ),
            &["state"],
        )
    });
    case!(5, "DiffDrive parameters with a NaN goal", {
        expect_err(DiffDrive::params([f32::NAN, 0.0], &[]), &["goal"])
    });
    case!(5, "replay buffer set_planner of a missing episode", {
        let mut b = ReplayBuffer::new(3, 1, 10).unwrap();
        expect_err(b.set_planner(usize::MAX, 0, &[0.0, 1.0]), &["episode"])
    });
    case!(
        5,
        "unknown environment",
        expect_err(
            pompc::env::make("pendulum-swingdown"),
            &["unknown environment"]
        )
    );
    case!(
        5,
        "unknown precision",
        expect_err(Precision::parse("f8"), &["f8"])
    );

    v
}

#[test]
fn every_bad_input_gets_a_clear_error() {
    let t0 = Instant::now();
    let _ = gpu();
    // The fixtures are valid: a case passes only because its one change is refused.
    checkpoint();
    weights_file();
    let mut m = mppi();
    m.step(&[0.5])
        .expect("the corpus's valid MPPI problem steps");
    eprintln!("fixtures ready in {:.1} s", t0.elapsed().as_secs_f64());
    let cases = cases();
    let total = cases.len();
    let mut per_class = [0usize; 6];
    let mut failures = Vec::new();
    for case in cases {
        per_class[case.class as usize] += 1;
        let name = format!("[{}] {}", case.class, case.name);
        let (tx, rx) = std::sync::mpsc::channel();
        let run = case.run;
        let started = Instant::now();
        std::thread::spawn(move || {
            let r = std::panic::catch_unwind(AssertUnwindSafe(run));
            let _ = tx.send(r);
        });
        match rx.recv_timeout(Duration::from_secs(case.secs)) {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(why))) => failures.push(format!("{name}: {why}")),
            Ok(Err(p)) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{name}: panicked: {msg}"));
            }
            Err(_) => failures.push(format!("{name}: no answer within {} s", case.secs)),
        }
        let secs = started.elapsed().as_secs_f64();
        if secs > 2.0 {
            eprintln!("{name}: {secs:.1} s");
        }
    }
    eprintln!(
        "{total} cases (by class 1-5: {:?}) in {:.1} s",
        &per_class[1..],
        t0.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(scratch());
    assert!(
        failures.is_empty(),
        "{} of {total} bad inputs were not answered with a clear error:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(total >= 150, "the corpus holds {total} cases");
    for (class, n) in per_class.iter().enumerate().skip(1) {
        assert!(*n >= 5, "class {class} has {n} cases");
    }
}

/// The documented semantics beside the corpus: some NaN rollouts are tolerated (they get no
/// weight) as long as one sample's cost is finite, and the step says how many counted.
#[test]
fn some_nan_rollouts_are_tolerated_and_counted() {
    // NaN for every sample whose first control is positive: about half of them.
    let p = problem(
        "if (u[0] > 0.0 && t == 0u) { return State(param(0u) / param(0u)); } return State(x[0] + DT * u[0]);",
    );
    let mut m = Mppi::new(gpu(), p, mppi_cfg()).unwrap();
    m.set_params(&[0.0]).unwrap();
    let s = m.step(&[0.5]).unwrap();
    assert!(
        s.finite_samples > 0 && s.finite_samples < 64,
        "{} of 64 finite",
        s.finite_samples
    );
    assert!(s.control.iter().all(|c| c.is_finite()), "{s:?}");
    let (costs, weights) = m.costs_and_weights().unwrap();
    let sentinel = costs.iter().filter(|c| **c >= 3.0e38).count();
    assert_eq!(sentinel, 64 - s.finite_samples, "{costs:?}");
    for (c, w) in costs.iter().zip(&weights) {
        if *c >= 3.0e38 {
            assert_eq!(*w, 0.0, "a NaN rollout got weight");
        }
    }
}
