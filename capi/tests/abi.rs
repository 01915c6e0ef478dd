//! Every exported function with bad arguments (NULL handles and pointers, wrong lengths,
//! out-of-range settings, a WGSL syntax error, a missing file): each must return the right
//! status with a message in pompc_last_error(), and leave out-pointers NULL. Then the good
//! paths, against the Rust API on fresh random inputs, and handles shared between threads.

use pompc_c::*;
use std::ffi::{CStr, c_char};
use std::hash::{BuildHasher, RandomState};
use std::ptr::{null, null_mut};

fn last() -> String {
    // SAFETY: pompc_last_error returns a valid C string.
    unsafe { CStr::from_ptr(pompc_last_error()) }
        .to_str()
        .unwrap()
        .to_string()
}

/// The call returned `status` and a message containing `needle`.
#[track_caller]
fn fails(got: PompcStatus, status: PompcStatus, needle: &str) {
    let msg = last();
    assert_eq!(got, status, "message: {msg}");
    assert!(
        msg.contains(needle),
        "{status:?}: message {msg:?} lacks {needle:?}"
    );
}

#[track_caller]
fn ok(got: PompcStatus) {
    assert_eq!(got, PompcStatus::Ok, "{}", last());
    assert_eq!(last(), "");
}

const NULL: PompcStatus = PompcStatus::NullArgument;
const SHAPE: PompcStatus = PompcStatus::Shape;
const INVALID: PompcStatus = PompcStatus::InvalidArgument;

fn gpu() -> *mut PompcGpu {
    let mut g = null_mut();
    // SAFETY: valid out-pointer.
    ok(unsafe { pompc_gpu_create(null(), &mut g) });
    g
}

const POINT: &CStr = c"
fn dynamics(x: State, u: Control, t: u32) -> State { return State(x[0] + DT * u[0], x[1]); }
fn running_cost(x: State, u: Control, t: u32) -> f32 {
    let d = x[0] - param(0u);
    return d * d + 0.01 * x[1];
}
fn terminal_cost(x: State) -> f32 { return 0.0; }
";

fn point_problem(wgsl: &CStr) -> PompcMppiProblem {
    PompcMppiProblem {
        name: c"point".as_ptr(),
        wgsl: wgsl.as_ptr(),
        state_dim: 2,
        control_dim: 1,
        param_len: 1,
    }
}

fn small_config() -> PompcMppiConfig {
    let mut c = std::mem::MaybeUninit::uninit();
    // SAFETY: valid out-pointer; initialized on success.
    ok(unsafe { pompc_mppi_config_default(c.as_mut_ptr()) });
    let mut c = unsafe { c.assume_init() };
    c.horizon = 12;
    c.samples = 64;
    c
}

#[test]
fn version_and_status_names() {
    // SAFETY: static C strings.
    let v = unsafe { CStr::from_ptr(pompc_version()) };
    assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    assert_eq!(pompc_abi_version(), POMPC_ABI_VERSION);
    let name = unsafe { CStr::from_ptr(pompc_status_name(PompcStatus::Busy as i32)) };
    assert_eq!(name.to_str().unwrap(), "POMPC_STATUS_BUSY");
}

#[test]
fn null_and_bad_arguments_everywhere() {
    // SAFETY (the whole test): every pointer passed is NULL, valid, or a live handle.
    unsafe {
        let mut count = 0usize;
        fails(
            pompc_adapters(null(), null_mut(), 0, null_mut()),
            NULL,
            "count",
        );
        fails(
            pompc_adapters(null(), null_mut(), 3, &mut count),
            NULL,
            "out",
        );
        fails(
            pompc_adapters(c"vulkan,quantum".as_ptr(), null_mut(), 0, &mut count),
            INVALID,
            "quantum",
        );
        ok(pompc_adapters(null(), null_mut(), 0, &mut count));
        assert!(
            count >= 1,
            "no adapter: the tests need one (lavapipe in CI)"
        );
        let mut infos = vec![std::mem::zeroed::<PompcAdapterInfo>(); count];
        ok(pompc_adapters(
            null(),
            infos.as_mut_ptr(),
            count,
            &mut count,
        ));
        let name = CStr::from_ptr(infos[0].name.as_ptr());
        assert!(!name.to_bytes().is_empty());

        // Configs and devices.
        fails(pompc_gpu_config_default(null_mut()), NULL, "out");
        fails(pompc_mppi_config_default(null_mut()), NULL, "out");
        fails(pompc_planner_config_default(6, null_mut()), NULL, "out");
        let mut g: *mut PompcGpu = std::ptr::dangling_mut(); // must come back NULL on failure
        fails(pompc_gpu_create(null(), null_mut()), NULL, "out");
        let mut cfg = std::mem::zeroed::<PompcGpuConfig>();
        ok(pompc_gpu_config_default(&mut cfg));
        cfg.precision = 9;
        fails(pompc_gpu_create(&cfg, &mut g), INVALID, "precision");
        assert!(g.is_null());
        cfg.precision = POMPC_PRECISION_AUTO;
        cfg.shader_checks = 7;
        fails(pompc_gpu_create(&cfg, &mut g), INVALID, "shader_checks");
        cfg.shader_checks = POMPC_SHADER_CHECKS_DEFAULT;
        cfg.backend = c"glide".as_ptr();
        fails(pompc_gpu_create(&cfg, &mut g), INVALID, "glide");
        cfg.backend = null();
        cfg.adapter_name = c"no adapter has this name".as_ptr();
        fails(
            pompc_gpu_create(&cfg, &mut g),
            PompcStatus::NoAdapter,
            "no adapter has this name",
        );
        cfg.adapter_name = [0xffu8 as c_char, 0].as_ptr();
        fails(pompc_gpu_create(&cfg, &mut g), INVALID, "UTF-8");
        assert!(g.is_null());
        let mut info = std::mem::zeroed::<PompcAdapterInfo>();
        fails(pompc_gpu_get_info(null(), &mut info), NULL, "gpu");
        let g = gpu();
        fails(pompc_gpu_get_info(g, null_mut()), NULL, "out");
        ok(pompc_gpu_get_info(g, &mut info));
        assert_eq!(CStr::from_ptr(info.name.as_ptr()), name);
        ok(pompc_gpu_destroy(null_mut()));

        // Models.
        let mut m: *mut PompcModel = std::ptr::dangling_mut();
        fails(pompc_model_load(null(), c"x".as_ptr(), &mut m), NULL, "gpu");
        assert!(m.is_null());
        fails(pompc_model_load(g, null(), &mut m), NULL, "path");
        fails(pompc_model_load(g, c"x".as_ptr(), null_mut()), NULL, "out");
        fails(
            pompc_model_load(g, c"/no/such/weights.safetensors".as_ptr(), &mut m),
            PompcStatus::Io,
            "/no/such/weights.safetensors",
        );
        let junk = std::env::temp_dir().join(format!("pompc_capi_junk_{}", std::process::id()));
        std::fs::write(&junk, b"not a safetensors file").unwrap();
        let junk_c = std::ffi::CString::new(junk.to_str().unwrap()).unwrap();
        let s = pompc_model_load(g, junk_c.as_ptr(), &mut m);
        assert_eq!(s, PompcStatus::Weights, "{}", last());
        std::fs::remove_file(&junk).unwrap();
        fails(pompc_model_init_tdmpc2(g, 7, 4, 2, 0, &mut m), INVALID, "7");
        fails(
            pompc_model_init_tdmpc2(null(), 1, 4, 2, 0, &mut m),
            NULL,
            "gpu",
        );
        fails(
            pompc_model_init_tdmpc2(g, 1, 4, 2, 0, null_mut()),
            NULL,
            "out",
        );
        assert!(m.is_null());
        let mut mi = PompcModelInfo::default();
        fails(pompc_model_get_info(null(), &mut mi), NULL, "model");
        ok(pompc_model_destroy(null_mut()));

        // Planners (on a tiny model, for speed).
        let path = tiny_model_file(1);
        let path_c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        ok(pompc_model_load(g, path_c.as_ptr(), &mut m));
        fails(pompc_model_get_info(m, null_mut()), NULL, "out");
        ok(pompc_model_get_info(m, &mut mi));
        assert_eq!((mi.obs_dim, mi.action_dim, mi.latent_dim), (5, 2, 16));
        let mut pc = std::mem::zeroed::<PompcPlannerConfig>();
        ok(pompc_planner_config_default(2, &mut pc));
        let mut p: *mut PompcPlanner = std::ptr::dangling_mut();
        fails(pompc_planner_create(null(), &pc, &mut p), NULL, "model");
        fails(pompc_planner_create(m, &pc, null_mut()), NULL, "out");
        let mut bad = pc;
        bad.mode = 5;
        fails(pompc_planner_create(m, &bad, &mut p), INVALID, "mode");
        bad = pc;
        bad.num_elites = 10_000;
        fails(pompc_planner_create(m, &bad, &mut p), INVALID, "elites");
        bad = pc;
        bad.mode = POMPC_PLANNER_MPPI;
        bad.lambda = f32::NAN;
        fails(pompc_planner_create(m, &bad, &mut p), INVALID, "lambda");
        // Every field is checked, the one that only another mode reads too.
        for mode in [POMPC_PLANNER_ELITE_MPPI, POMPC_PLANNER_CEM] {
            for lambda in [f32::NAN, f32::INFINITY, 0.0, -1.0] {
                bad = pc;
                (bad.mode, bad.lambda) = (mode, lambda);
                fails(
                    pompc_planner_create(m, &bad, &mut p),
                    INVALID,
                    "config.lambda",
                );
            }
        }
        assert!(p.is_null());
        pc.num_samples = 16;
        pc.num_elites = 4;
        pc.num_pi_trajs = 4;
        pc.iterations = 1;
        ok(pompc_planner_create(m, &pc, &mut p));
        let obs = [0.1f32; 2 * 5];
        let first = [1u8; 2];
        let mut act = [0f32; 2 * 2];
        let mut mean = [0f32; 4];
        fails(
            pompc_planner_last_plan(p, mean.as_mut_ptr(), 4, null_mut(), 0, null_mut(), 0),
            INVALID,
            "no plan yet",
        );
        let plan = |p, o: *const f32, ol, f: *const u8, b, a: *mut f32, al| {
            pompc_planner_plan(p, o, ol, f, b, a, al)
        };
        let (o, f, a) = (obs.as_ptr(), first.as_ptr(), act.as_mut_ptr());
        fails(plan(null_mut(), o, 10, f, 2, a, 4), NULL, "planner");
        fails(plan(p, null(), 10, f, 2, a, 4), NULL, "obs");
        fails(plan(p, o, 9, f, 2, a, 4), SHAPE, "obs");
        fails(plan(p, o, 10, null(), 2, a, 4), NULL, "first_step");
        fails(plan(p, o, 10, f, 2, a, 3), SHAPE, "action");
        fails(plan(p, o, 10, f, 2, null_mut(), 4), NULL, "action");
        fails(plan(p, o, 0, f, 0, a, 0), INVALID, "batch is 0");
        fails(
            plan(p, o, 10, f, usize::MAX / 2, a, 4),
            PompcStatus::Limit,
            "too large",
        );
        let mut nan = obs;
        nan[7] = f32::NAN;
        fails(plan(p, nan.as_ptr(), 10, f, 2, a, 4), INVALID, "NaN");
        let misaligned = (obs.as_ptr() as *const u8).wrapping_add(1) as *const f32;
        fails(plan(p, misaligned, 10, f, 2, a, 4), INVALID, "aligned");
        ok(plan(p, o, 10, f, 2, a, 4));
        fails(
            pompc_planner_last_plan(p, mean.as_mut_ptr(), 3, null_mut(), 0, null_mut(), 0),
            SHAPE,
            "mean",
        );
        fails(
            pompc_planner_last_plan(null(), mean.as_mut_ptr(), 4, null_mut(), 0, null_mut(), 0),
            NULL,
            "planner",
        );
        ok(pompc_planner_last_plan(
            p,
            mean.as_mut_ptr(),
            4,
            null_mut(),
            0,
            null_mut(),
            0,
        ));
        ok(pompc_planner_destroy(null_mut()));
        // Destroy order is free: the planner keeps the model and the device alive.
        ok(pompc_model_destroy(m));
        ok(plan(p, o, 10, f, 2, a, 4));
        ok(pompc_planner_destroy(p));
        std::fs::remove_file(&path).unwrap();

        // MPPI.
        let prob = point_problem(POINT);
        let c = small_config();
        let mut h: *mut PompcMppi = std::ptr::dangling_mut();
        fails(pompc_mppi_create(null(), &prob, &c, &mut h), NULL, "gpu");
        assert!(h.is_null());
        fails(pompc_mppi_create(g, null(), &c, &mut h), NULL, "problem");
        fails(pompc_mppi_create(g, &prob, &c, null_mut()), NULL, "out");
        let mut no_wgsl = prob;
        no_wgsl.wgsl = null();
        fails(
            pompc_mppi_create(g, &no_wgsl, &c, &mut h),
            NULL,
            "problem.wgsl",
        );
        let broken = point_problem(
            c"fn dynamics(x: State, u: Control, t: u32) -> State { return x }\n\
              fn running_cost(x: State, u: Control, t: u32) -> f32 { return 0.0; }\n\
              fn terminal_cost(x: State) -> f32 { return 0.0; }",
        );
        fails(
            pompc_mppi_create(g, &broken, &c, &mut h),
            PompcStatus::Shader,
            "user:1",
        );
        let mut wrong_dims = prob;
        wrong_dims.state_dim = 0;
        fails(
            pompc_mppi_create(g, &wrong_dims, &c, &mut h),
            SHAPE,
            "positive",
        );
        wrong_dims.state_dim = 100_000;
        fails(
            pompc_mppi_create(g, &wrong_dims, &c, &mut h),
            PompcStatus::Limit,
            "state_dim",
        );
        let mut bc = c;
        bc.samples = 0;
        fails(pompc_mppi_create(g, &prob, &bc, &mut h), INVALID, "samples");
        bc = c;
        bc.lambda = -1.0;
        fails(pompc_mppi_create(g, &prob, &bc, &mut h), INVALID, "lambda");
        bc = c;
        let two = [0.5f32, 0.5];
        bc.sigma_per_control = two.as_ptr();
        bc.per_control_len = 2;
        fails(
            pompc_mppi_create(g, &prob, &bc, &mut h),
            SHAPE,
            "per_control_len",
        );
        bc.per_control_len = 0;
        fails(
            pompc_mppi_create(g, &prob, &bc, &mut h),
            SHAPE,
            "per_control_len",
        );
        assert!(h.is_null());
        ok(pompc_mppi_create(g, &prob, &c, &mut h));

        let mut mi = PompcMppiInfo::default();
        fails(pompc_mppi_get_info(null(), &mut mi), NULL, "mppi");
        fails(pompc_mppi_get_info(h, null_mut()), NULL, "out");
        ok(pompc_mppi_get_info(h, &mut mi));
        assert_eq!(
            (
                mi.state_dim,
                mi.control_dim,
                mi.param_len,
                mi.horizon,
                mi.samples,
                mi.steps
            ),
            (2, 1, 1, 12, 64, 0)
        );
        let goal = [1.0f32];
        fails(
            pompc_mppi_set_params(null_mut(), goal.as_ptr(), 1),
            NULL,
            "mppi",
        );
        fails(pompc_mppi_set_params(h, goal.as_ptr(), 2), SHAPE, "params");
        fails(pompc_mppi_set_params(h, null(), 1), NULL, "params");
        fails(
            pompc_mppi_set_params(h, [f32::INFINITY].as_ptr(), 1),
            INVALID,
            "finite",
        );
        ok(pompc_mppi_set_params(h, goal.as_ptr(), 1));

        let x0 = [0.0f32, 0.0];
        let mut u = [0f32; 1];
        let mut si = PompcMppiStepInfo::default();
        let mut costs = vec![0f32; 64];
        fails(
            pompc_mppi_costs(h, costs.as_mut_ptr(), 64, null_mut(), 0),
            INVALID,
            "no step yet",
        );
        let (xp, up) = (x0.as_ptr(), u.as_mut_ptr());
        fails(
            pompc_mppi_step(null_mut(), xp, 2, up, 1, &mut si),
            NULL,
            "mppi",
        );
        fails(pompc_mppi_step(h, xp, 3, up, 1, &mut si), SHAPE, "x0");
        fails(pompc_mppi_step(h, null(), 2, up, 1, &mut si), NULL, "x0");
        fails(pompc_mppi_step(h, xp, 2, up, 2, &mut si), SHAPE, "control");
        fails(
            pompc_mppi_step(h, xp, 2, null_mut(), 1, &mut si),
            NULL,
            "control",
        );
        fails(
            pompc_mppi_step(h, [f32::NAN, 0.0].as_ptr(), 2, up, 1, null_mut()),
            INVALID,
            "NaN",
        );
        ok(pompc_mppi_step(h, xp, 2, up, 1, null_mut()));
        ok(pompc_mppi_step(h, xp, 2, up, 1, &mut si));
        assert_eq!(si.finite_samples, 64);

        fails(
            pompc_mppi_costs(null(), costs.as_mut_ptr(), 64, null_mut(), 0),
            NULL,
            "mppi",
        );
        fails(
            pompc_mppi_costs(h, costs.as_mut_ptr(), 63, null_mut(), 0),
            SHAPE,
            "costs",
        );
        fails(
            pompc_mppi_costs(h, null_mut(), 64, null_mut(), 0),
            NULL,
            "costs",
        );
        fails(
            pompc_mppi_costs(h, costs.as_mut_ptr(), 64, null_mut(), 5),
            SHAPE,
            "weights",
        );
        let mut seq = vec![0f32; 12];
        fails(
            pompc_mppi_controls(null(), seq.as_mut_ptr(), 12),
            NULL,
            "mppi",
        );
        fails(
            pompc_mppi_controls(h, seq.as_mut_ptr(), 11),
            SHAPE,
            "horizon x control_dim",
        );
        fails(pompc_mppi_controls(h, null_mut(), 12), NULL, "u");
        fails(
            pompc_mppi_set_controls(null_mut(), seq.as_ptr(), 12),
            NULL,
            "mppi",
        );
        fails(pompc_mppi_set_controls(h, seq.as_ptr(), 13), SHAPE, "u");
        let mut out_of_bounds = seq.clone();
        out_of_bounds[3] = 5.0;
        fails(
            pompc_mppi_set_controls(h, out_of_bounds.as_ptr(), 12),
            INVALID,
            "outside",
        );
        fails(pompc_mppi_reset(null_mut()), NULL, "mppi");
        ok(pompc_mppi_reset(h));
        ok(pompc_mppi_destroy(null_mut()));
        // The controller keeps the device alive.
        ok(pompc_gpu_destroy(g));
        ok(pompc_mppi_step(h, xp, 2, up, 1, null_mut()));
        ok(pompc_mppi_destroy(h));
    }
}

/// A tiny model's weights file (observations 5, actions 2).
fn tiny_model_file(seed: u64) -> std::path::PathBuf {
    use pompc::model::{ModelSpec, Weights};
    let w = Weights::init(&ModelSpec::tiny(5, 2), seed).unwrap();
    let path = std::env::temp_dir().join(format!(
        "pompc_capi_tiny_{}_{seed}.safetensors",
        std::process::id()
    ));
    w.save(&path).unwrap();
    path
}

/// The C ABI's MPPI gives the Rust API's controls, costs and control sequence for the same
/// problem, settings, parameters and (random) states.
#[test]
fn mppi_through_the_abi_matches_the_rust_api() {
    use pompc::planner::custom::{Mppi, MppiConfig, Problem};
    let seed = RandomState::new().hash_one(1u8);
    let mut r = seed | 1;
    let mut uniform = move || {
        r ^= r << 13;
        r ^= r >> 7;
        r ^= r << 17;
        (r >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let goal = [uniform() * 2.0];
    let states: Vec<[f32; 2]> = (0..3).map(|_| [uniform(), uniform()]).collect();
    let mut c = small_config();
    c.seed = seed;
    c.gamma = 0.5;
    let (sig, lo, hi) = ([0.3f32], [-0.8f32], [0.9f32]);
    c.sigma_per_control = sig.as_ptr();
    c.u_min_per_control = lo.as_ptr();
    c.u_max_per_control = hi.as_ptr();
    c.per_control_len = 1;

    let gpu = pompc::Gpu::new(pompc::GpuOptions::default()).unwrap();
    let problem = Problem {
        name: "point".into(),
        state_dim: 2,
        control_dim: 1,
        param_len: 1,
        wgsl: POINT.to_str().unwrap().into(),
    };
    let cfg = MppiConfig {
        horizon: 12,
        samples: 64,
        lambda: 1.0,
        gamma: 0.5,
        sigma: sig.to_vec(),
        u_min: lo.to_vec(),
        u_max: hi.to_vec(),
        dt: 0.02,
        seed,
        trusted: false,
    };
    let mut rust = Mppi::new(&gpu, problem, cfg).unwrap();
    rust.set_params(&goal).unwrap();

    // SAFETY: valid pointers and live handles throughout.
    unsafe {
        let g = self::gpu();
        let mut h = null_mut();
        ok(pompc_mppi_create(g, &point_problem(POINT), &c, &mut h));
        ok(pompc_mppi_set_params(h, goal.as_ptr(), 1));
        for x in &states {
            let step = rust.step(x).unwrap();
            let mut u = [0f32];
            let mut si = PompcMppiStepInfo::default();
            ok(pompc_mppi_step(
                h,
                x.as_ptr(),
                2,
                u.as_mut_ptr(),
                1,
                &mut si,
            ));
            assert_eq!(u.to_vec(), step.control, "seed {seed}");
            assert_eq!(
                (si.min_cost, si.eta),
                (step.min_cost, step.eta),
                "seed {seed}"
            );
            let (rc, rw) = rust.costs_and_weights().unwrap();
            let (mut cc, mut cw) = (vec![0f32; 64], vec![0f32; 64]);
            ok(pompc_mppi_costs(
                h,
                cc.as_mut_ptr(),
                64,
                cw.as_mut_ptr(),
                64,
            ));
            assert_eq!((cc, cw), (rc, rw), "seed {seed}");
            let mut seq = vec![0f32; 12];
            ok(pompc_mppi_controls(h, seq.as_mut_ptr(), 12));
            assert_eq!(seq, rust.controls().unwrap(), "seed {seed}");
        }
        ok(pompc_mppi_destroy(h));
        ok(pompc_gpu_destroy(g));
    }
}

/// One device and one model shared by threads, each with its own controller and planner:
/// the results equal those of the same calls made one after another.
#[test]
fn shared_device_and_model_across_threads() {
    struct Send<T>(T);
    // SAFETY: the handles are documented as shareable (PompcGpu, PompcModel: Sync).
    unsafe impl<T> std::marker::Send for Send<T> {}
    unsafe impl<T> Sync for Send<T> {}
    let path = tiny_model_file(2);
    let path_c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: valid pointers and live handles throughout.
    unsafe {
        let g = Send(gpu());
        let mut m = null_mut();
        ok(pompc_model_load(g.0, path_c.as_ptr(), &mut m));
        let m = Send(m);
        let work = |g: &Send<*mut PompcGpu>, m: &Send<*mut PompcModel>| {
            let mut h = null_mut();
            ok(pompc_mppi_create(
                g.0,
                &point_problem(POINT),
                &small_config(),
                &mut h,
            ));
            ok(pompc_mppi_set_params(h, [0.5f32].as_ptr(), 1));
            let mut u = [0f32];
            ok(pompc_mppi_step(
                h,
                [0.0f32, 0.0].as_ptr(),
                2,
                u.as_mut_ptr(),
                1,
                null_mut(),
            ));
            ok(pompc_mppi_destroy(h));
            let mut pc = std::mem::zeroed::<PompcPlannerConfig>();
            ok(pompc_planner_config_default(2, &mut pc));
            (
                pc.num_samples,
                pc.num_elites,
                pc.num_pi_trajs,
                pc.iterations,
            ) = (16, 4, 4, 1);
            pc.eval = 1;
            let mut p = null_mut();
            ok(pompc_planner_create(m.0, &pc, &mut p));
            let mut a = [0f32; 2];
            ok(pompc_planner_plan(
                p,
                [0.3f32; 5].as_ptr(),
                5,
                [1u8].as_ptr(),
                1,
                a.as_mut_ptr(),
                2,
            ));
            ok(pompc_planner_destroy(p));
            (u[0], a)
        };
        let serial = work(&g, &m);
        let parallel: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..2).map(|_| s.spawn(|| work(&g, &m))).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for p in parallel {
            assert_eq!(p, serial);
        }
        ok(pompc_model_destroy(m.0));
        ok(pompc_gpu_destroy(g.0));
    }
    std::fs::remove_file(&path).unwrap();
}

/// A call whose output array is NULL, misaligned or of the wrong length fails before it does
/// its work: the MPPI step is not taken (the step count stays, the warm start does not
/// shift) and the plan is not made (the planner's random streams do not advance).
#[test]
fn a_bad_output_fails_the_call_before_it_has_an_effect() {
    // SAFETY: valid pointers and live handles throughout.
    unsafe {
        let g = gpu();
        let mut h = null_mut();
        ok(pompc_mppi_create(
            g,
            &point_problem(POINT),
            &small_config(),
            &mut h,
        ));
        ok(pompc_mppi_set_params(h, [1.0f32].as_ptr(), 1));
        let x0 = [0.0f32, 0.0];
        let mut u = [0f32; 2];
        let misaligned = (u.as_mut_ptr() as *mut u8).wrapping_add(1) as *mut f32;
        let mut si = PompcMppiStepInfo::default();
        let bad_info = (&mut si as *mut PompcMppiStepInfo as *mut u8).wrapping_add(1)
            as *mut PompcMppiStepInfo;
        for (control, len, info, status, needle) in [
            (null_mut(), 1, null_mut(), NULL, "control"),
            (misaligned, 1, null_mut(), INVALID, "control"),
            (u.as_mut_ptr(), 2, null_mut(), SHAPE, "control"),
            (u.as_mut_ptr(), 1, bad_info, INVALID, "info"),
        ] {
            fails(
                pompc_mppi_step(h, x0.as_ptr(), 2, control, len, info),
                status,
                needle,
            );
            let mut mi = PompcMppiInfo::default();
            ok(pompc_mppi_get_info(h, &mut mi));
            assert_eq!(mi.steps, 0, "a failed step ran ({needle})");
        }
        ok(pompc_mppi_destroy(h));

        let path = tiny_model_file(3);
        let path_c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        let mut m = null_mut();
        ok(pompc_model_load(g, path_c.as_ptr(), &mut m));
        let mut pc = std::mem::zeroed::<PompcPlannerConfig>();
        ok(pompc_planner_config_default(2, &mut pc));
        (
            pc.num_samples,
            pc.num_elites,
            pc.num_pi_trajs,
            pc.iterations,
        ) = (16, 4, 4, 1);
        let (mut p, mut fresh) = (null_mut(), null_mut());
        ok(pompc_planner_create(m, &pc, &mut p));
        ok(pompc_planner_create(m, &pc, &mut fresh));
        let obs = [0.25f32; 5];
        let mut a = [0f32; 2];
        let misaligned = (a.as_mut_ptr() as *mut u8).wrapping_add(1) as *mut f32;
        for (action, len, status) in [
            (null_mut(), 2, NULL),
            (misaligned, 2, INVALID),
            (a.as_mut_ptr(), 1, SHAPE),
        ] {
            fails(
                pompc_planner_plan(p, obs.as_ptr(), 5, [1u8].as_ptr(), 1, action, len),
                status,
                "action",
            );
        }
        // Training mode: the action's noise comes from the call's stream, so a plan made by
        // a failed call would show as a different action here.
        let (mut a1, mut a2) = ([0f32; 2], [0f32; 2]);
        for (planner, out) in [(p, &mut a1), (fresh, &mut a2)] {
            ok(pompc_planner_plan(
                planner,
                obs.as_ptr(),
                5,
                [1u8].as_ptr(),
                1,
                out.as_mut_ptr(),
                2,
            ));
        }
        assert_eq!(a1, a2, "a failed plan advanced the planner");
        ok(pompc_planner_destroy(p));
        ok(pompc_planner_destroy(fresh));
        ok(pompc_model_destroy(m));
        ok(pompc_gpu_destroy(g));
        std::fs::remove_file(&path).unwrap();
    }
}

/// Problem sizes no controller can have are refused before anything is sized by them: a
/// control dimension of 2^40 (4 TiB of per-control settings) or usize::MAX, with or without
/// per-control arrays, is POMPC_STATUS_LIMIT, not an abort or a panic.
#[test]
fn absurd_problem_sizes_are_a_limit_before_any_allocation() {
    // SAFETY: valid pointers and live handles; the per-control array is never read (its
    // claimed length is refused first).
    unsafe {
        let g = gpu();
        let one = [0.5f32];
        for (state_dim, control_dim, param_len, needle) in [
            (2, 1 << 40, 1, "control_dim"),
            (2, usize::MAX, 1, "control_dim"),
            (usize::MAX, 1, 1, "state_dim"),
            (2, 1, usize::MAX, "param_len"),
        ] {
            let mut p = point_problem(POINT);
            (p.state_dim, p.control_dim, p.param_len) = (state_dim, control_dim, param_len);
            for per_control in [false, true] {
                let mut c = small_config();
                if per_control {
                    c.sigma_per_control = one.as_ptr();
                    c.per_control_len = control_dim;
                }
                let mut h: *mut PompcMppi = std::ptr::dangling_mut();
                fails(
                    pompc_mppi_create(g, &p, &c, &mut h),
                    PompcStatus::Limit,
                    needle,
                );
                assert!(h.is_null());
            }
        }
        ok(pompc_gpu_destroy(g));
    }
}

/// A weights path that is not a regular file fails at once: a device is not read until
/// memory runs out (/dev/zero), a pipe does not wait for a writer, a directory is an error.
#[test]
fn a_weights_path_that_is_not_a_regular_file_fails_without_reading() {
    let fifo = std::env::temp_dir().join(format!("pompc_capi_fifo_{}", std::process::id()));
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|s| s.success());
    let fifo_c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: valid pointers and a live handle.
    unsafe {
        let g = gpu();
        let mut paths = vec![c"/dev/zero", c"/tmp"];
        if made {
            paths.push(&fifo_c);
        }
        for path in paths {
            let mut m: *mut PompcModel = std::ptr::dangling_mut();
            let t = std::time::Instant::now();
            fails(
                pompc_model_load(g, path.as_ptr(), &mut m),
                PompcStatus::Io,
                path.to_str().unwrap(),
            );
            assert!(m.is_null());
            assert!(t.elapsed().as_secs() < 5, "{path:?} took {:?}", t.elapsed());
        }
        ok(pompc_gpu_destroy(g));
    }
    let _ = std::fs::remove_file(&fifo);
}

/// A string that lacks its NUL within the documented maximum is refused there, not read
/// on: names past POMPC_MAX_NAME_BYTES, paths past POMPC_MAX_PATH_BYTES, WGSL past
/// POMPC_MAX_WGSL_BYTES (each given here with a NUL further on, so that the old unbounded
/// scan stayed inside the buffer).
#[test]
fn strings_without_a_nul_within_their_maximum_are_refused() {
    let long = |n: usize| {
        let mut v = vec![b'a' as c_char; n + 16];
        *v.last_mut().unwrap() = 0;
        v
    };
    let name = long(POMPC_MAX_NAME_BYTES);
    let path = long(POMPC_MAX_PATH_BYTES);
    let mut wgsl = long(POMPC_MAX_WGSL_BYTES);
    wgsl.iter_mut()
        .rev()
        .skip(1)
        .for_each(|c| *c = b' ' as c_char);
    // SAFETY: valid pointers and live handles; every string has a NUL at its end.
    unsafe {
        let mut count = 0;
        fails(
            pompc_adapters(name.as_ptr(), null_mut(), 0, &mut count),
            INVALID,
            "backend has no NUL within 4096 bytes",
        );
        let mut cfg = std::mem::zeroed::<PompcGpuConfig>();
        ok(pompc_gpu_config_default(&mut cfg));
        cfg.adapter_name = name.as_ptr();
        let mut g: *mut PompcGpu = std::ptr::dangling_mut();
        fails(
            pompc_gpu_create(&cfg, &mut g),
            INVALID,
            "config.adapter_name has no NUL",
        );
        assert!(g.is_null());
        let g = gpu();
        let mut m: *mut PompcModel = std::ptr::dangling_mut();
        fails(
            pompc_model_load(g, path.as_ptr(), &mut m),
            INVALID,
            "path has no NUL",
        );
        let mut p = point_problem(POINT);
        p.name = name.as_ptr();
        let mut h: *mut PompcMppi = std::ptr::dangling_mut();
        fails(
            pompc_mppi_create(g, &p, &small_config(), &mut h),
            INVALID,
            "problem.name has no NUL",
        );
        p = point_problem(POINT);
        p.wgsl = wgsl.as_ptr();
        fails(
            pompc_mppi_create(g, &p, &small_config(), &mut h),
            INVALID,
            "problem.wgsl has no NUL",
        );
        assert!(h.is_null());
        // Exactly at the maximum (the NUL at index max - 1) is accepted.
        let mut fits = long(POMPC_MAX_NAME_BYTES);
        fits[POMPC_MAX_NAME_BYTES - 1] = 0;
        p = point_problem(POINT);
        p.name = fits.as_ptr();
        ok(pompc_mppi_create(g, &p, &small_config(), &mut h));
        ok(pompc_mppi_destroy(h));
        ok(pompc_gpu_destroy(g));
    }
}
