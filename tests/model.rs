//! The world model against PyTorch fixtures (`scripts/make_fixtures.py`, TD-MPC2's
//! architecture built from nn.Linear, nn.LayerNorm, nn.Mish and SimNorm), on the GPU and in
//! the f64 mirror; weight files that are corrupted or do not fit give errors naming the
//! tensor.

mod common;

use common::{POISON, gpus, rel_error};
use pompc::kernels::policy::{self, PolicyBuffers, PolicyConfig};
use pompc::kernels::two_hot::{self, RowLayout, TwoHotConfig};
use pompc::model::{ModelSpec, Net, NetInput, Weights, Workspace, WorldModel};
use pompc::{Error, Gpu, GpuBuffer, Recorder, reference};
use std::collections::HashMap;

const TOL: f64 = 1e-4;

struct Fixture {
    weights: Weights,
    t: HashMap<String, (Vec<usize>, Vec<f32>)>,
}

fn fixture(name: &str) -> Fixture {
    let path = format!(
        "{}/tests/fixtures/{name}.safetensors",
        env!("CARGO_MANIFEST_DIR")
    );
    let weights = Weights::load(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st
        .iter()
        .filter(|(k, _)| k.starts_with("fixture."))
        .map(|(k, v)| {
            (
                k.trim_start_matches("fixture.").to_string(),
                (v.shape().to_vec(), bytemuck::pod_collect_to_vec(v.data())),
            )
        })
        .collect();
    Fixture { weights, t }
}

impl Fixture {
    fn get(&self, k: &str) -> &[f32] {
        &self
            .t
            .get(k)
            .unwrap_or_else(|| panic!("fixture.{k} missing"))
            .1
    }
    fn f64(&self, k: &str) -> Vec<f64> {
        self.get(k).iter().map(|v| *v as f64).collect()
    }
}

fn check(what: &str, got: &[f32], want: &[f32]) {
    let want: Vec<f64> = want.iter().map(|v| *v as f64).collect();
    let err = rel_error(got, &want);
    assert!(err <= TOL, "{what}: relative error {err:e} > {TOL:e}");
}

fn check64(what: &str, got: &[f64], want: &[f32]) {
    let got: Vec<f32> = got.iter().map(|v| *v as f32).collect();
    check(what, &got, want);
}

fn run_fixture(name: &str) {
    let f = fixture(name);
    let spec = &f.weights.spec;
    let rows = f.t["obs"].0[0];
    let (l, a, bins, q) = (spec.latent_dim, spec.action_dim, spec.num_bins, spec.num_q);

    // The f64 mirror against PyTorch, network by network from the fixture's own inputs.
    let w = &f.weights;
    let z = f.f64("z");
    let act = f.f64("action");
    let mirror = |net, zz: &[f64], aa: Option<&[f64]>, member| {
        reference::model::forward(w, net, rows, zz, aa, member).unwrap()
    };
    check64(
        "mirror encoder",
        &mirror(Net::Encoder, &f.f64("obs"), None, 0),
        f.get("z"),
    );
    check64(
        "mirror dynamics",
        &mirror(Net::Dynamics, &z, Some(&act), 0),
        f.get("next_z"),
    );
    check64(
        "mirror reward",
        &mirror(Net::Reward, &z, Some(&act), 0),
        f.get("reward_logits"),
    );
    for h in 0..q {
        let want = &f.get("q_logits")[h * rows * bins..(h + 1) * rows * bins];
        check64(
            &format!("mirror Q head {h}"),
            &mirror(Net::Q, &z, Some(&act), h),
            want,
        );
    }

    for gpu in gpus() {
        let model = WorldModel::new(gpu, w).unwrap();
        let ws = Workspace::new(gpu, spec, rows).unwrap();
        let up = |k: &str| GpuBuffer::from_slice(gpu, k, f.get(k)).unwrap();
        let (obs, zb, ab, eps) = (up("obs"), up("z"), up("action"), up("eps"));
        let out = |n: usize| {
            let b = GpuBuffer::<f32>::new(gpu, "out", n).unwrap();
            b.fill_u32(gpu, POISON).unwrap();
            b
        };
        let (z_out, next) = (out(rows * l), out(rows * l));
        let (r_logits, r_val) = (out(rows * bins), out(rows));
        let (q_logits, q_val) = (out(q * rows * bins), out(q * rows));
        let (q_pair, pi_h) = (out(2 * rows * bins), out(rows * 2 * a));
        let (pi_a, pi_stats) = (out(rows * a), out(rows * (2 * a + 3)));
        let (term, decoded, twohot) = (out(rows), out(rows), out(rows * bins));
        let heads = GpuBuffer::from_slice(gpu, "heads", &[(q - 1) as u32, 0]).unwrap();
        let logits = up("logits");
        let targets = up("targets");
        let za = NetInput::new(&zb, Some(&ab));
        let zonly = NetInput::new(&zb, None);
        let thc = TwoHotConfig::new(bins, spec.vmin, spec.vmax).unwrap();
        let pc = PolicyConfig::new(a).with_log_std_range(spec.log_std_min, spec.log_std_max);

        // Everything in one submit, as a plan step would.
        let mut rec = Recorder::new(gpu);
        let obs_in = NetInput::new(&obs, None);
        model
            .encoder
            .record(&mut rec, rows, obs_in, None, &ws, &z_out)
            .unwrap();
        model
            .dynamics
            .record(&mut rec, rows, za, None, &ws, &next)
            .unwrap();
        model
            .reward
            .record(&mut rec, rows, za, None, &ws, &r_logits)
            .unwrap();
        two_hot::record_decode(&mut rec, &thc, rows, &r_logits, &r_val).unwrap();
        model
            .q
            .record(&mut rec, rows, za, None, &ws, &q_logits)
            .unwrap();
        two_hot::record_decode(&mut rec, &thc, q * rows, &q_logits, &q_val).unwrap();
        model
            .q
            .record(&mut rec, rows, za, Some(&heads), &ws, &q_pair)
            .unwrap();
        model
            .policy
            .record(&mut rec, rows, zonly, None, &ws, &pi_h)
            .unwrap();
        let pio = PolicyBuffers {
            h: &pi_h,
            eps: &eps,
            action: &pi_a,
            stats: &pi_stats,
        };
        policy::record_sample(&mut rec, &pc, rows, pio).unwrap();
        if let Some(t) = &model.termination {
            t.record(&mut rec, rows, zonly, None, &ws, &term).unwrap();
        }
        two_hot::record_decode(&mut rec, &thc, rows, &logits, &decoded).unwrap();
        two_hot::record_encode(&mut rec, &thc, rows, &targets, &twohot).unwrap();
        let hs: Vec<_> = [
            &z_out, &next, &r_logits, &r_val, &q_logits, &q_val, &q_pair, &pi_a, &pi_stats, &term,
            &decoded, &twohot,
        ]
        .iter()
        .map(|b| rec.read(*b))
        .collect();
        let res = rec.finish().unwrap();
        let g = |i: usize| res.get(&hs[i]).unwrap();
        let tag = |s: &str| format!("{name} {s} ({:?})", gpu.shader_checks());

        check(&tag("latent z = h(obs)"), &g(0), f.get("z"));
        check(&tag("next latent d(z, a)"), &g(1), f.get("next_z"));
        check(&tag("reward logits"), &g(2), f.get("reward_logits"));
        check(&tag("reward value"), &g(3), f.get("reward"));
        check(&tag("Q logits, every head"), &g(4), f.get("q_logits"));
        check(&tag("Q values, every head"), &g(5), f.get("q"));
        let ql = f.get("q_logits");
        let chosen: Vec<f32> = [q - 1, 0]
            .iter()
            .flat_map(|h| ql[h * rows * bins..(h + 1) * rows * bins].to_vec())
            .collect();
        check(&tag("Q logits of heads [last, 0]"), &g(6), &chosen);
        check(&tag("policy action"), &g(7), f.get("pi_action"));
        let stats = g(8);
        let col =
            |c: usize| -> Vec<f32> { (0..rows).map(|r| stats[r * pc.stats_width() + c]).collect() };
        let cols = |f0: fn(&PolicyConfig, usize) -> usize| -> Vec<f32> {
            (0..rows)
                .flat_map(|r| (0..a).map(move |i| (r, i)))
                .map(|(r, i)| stats[r * pc.stats_width() + f0(&pc, i)])
                .collect()
        };
        check(
            &tag("policy mean"),
            &cols(PolicyConfig::mean_col),
            f.get("pi_mean"),
        );
        check(
            &tag("policy log-std"),
            &cols(PolicyConfig::log_std_col),
            f.get("pi_log_std"),
        );
        check(
            &tag("policy log-prob"),
            &col(pc.log_prob_col()),
            f.get("pi_log_prob"),
        );
        check(
            &tag("policy entropy"),
            &col(pc.entropy_col()),
            f.get("pi_entropy"),
        );
        check(
            &tag("policy scaled entropy"),
            &col(pc.scaled_entropy_col()),
            f.get("pi_scaled_entropy"),
        );
        if spec.episodic {
            check(&tag("termination logit"), &g(9), f.get("termination_logit"));
        }
        check(&tag("two-hot decode"), &g(10), f.get("decoded"));
        check(&tag("two-hot encode"), &g(11), f.get("two_hot"));
        let _ = RowLayout::contiguous(1);
    }
}

#[test]
fn tiny_preset_matches_pytorch() {
    run_fixture("tiny");
}

#[test]
fn small_non_square_episodic_preset_matches_pytorch() {
    run_fixture("small");
}

fn fixture_bytes() -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/tiny.safetensors",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn rewrite(edit: impl FnOnce(&mut Weights)) -> Vec<u8> {
    let mut w = Weights::from_bytes(&fixture_bytes()).unwrap();
    edit(&mut w);
    w.to_bytes().unwrap()
}

fn weights_error(bytes: &[u8]) -> String {
    match Weights::from_bytes(bytes) {
        Err(e @ Error::Weights(_)) => e.to_string(),
        Err(e) => panic!("expected a weights error, got {e:?}"),
        Ok(_) => panic!("bad weights were accepted"),
    }
}

#[test]
fn corrupted_and_mismatched_files_name_the_problem() {
    let good = fixture_bytes();
    // Truncated file.
    let e = weights_error(&good[..good.len() / 2]);
    assert!(e.contains("safetensors"), "{e}");
    // Garbage.
    assert!(weights_error(b"not a weights file at all").contains("safetensors"));
    // A missing tensor.
    let e = weights_error(&rewrite(|w| {
        w.tensors.remove("_dynamics.1.ln.bias");
    }));
    assert!(e.contains("\"_dynamics.1.ln.bias\" is missing"), "{e}");
    // A mis-shaped tensor.
    let e = weights_error(&rewrite(|w| {
        let t = w.tensors.get_mut("_pi.2.weight").unwrap();
        t.shape = vec![t.shape[0] - 1, t.shape[1]];
        t.data.truncate(t.shape.iter().product());
    }));
    assert!(e.contains("\"_pi.2.weight\" has shape"), "{e}");
    // A non-finite value.
    let e = weights_error(&rewrite(|w| {
        w.tensors.get_mut("_reward.0.bias").unwrap().data[3] = f32::NAN;
    }));
    assert!(
        e.contains("\"_reward.0.bias\" holds a non-finite value"),
        "{e}"
    );
    // An extra tensor.
    let e = weights_error(&rewrite(|w| {
        let t = w.tensors["_pi.2.bias"].clone();
        w.tensors.insert("_pi.3.bias".into(), t);
    }));
    assert!(e.contains("unexpected tensor \"_pi.3.bias\""), "{e}");
    // The right tensors for another model.
    let other = ModelSpec::tiny(6, 3);
    let e = Weights::from_bytes_with_spec(&good, &other)
        .unwrap_err()
        .to_string();
    assert!(e.contains("_encoder.state.0.weight"), "{e}");
    // A file that does not exist.
    let e = Weights::load("/nonexistent/model.safetensors").unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
}

#[test]
fn save_and_load_round_trip() {
    let spec = ModelSpec::tiny(5, 2).episodic(true);
    let w = Weights::init(&spec, 3).unwrap();
    let dir = std::env::temp_dir().join(format!("pompc-roundtrip-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("w.safetensors");
    w.save(&path).unwrap();
    let back = Weights::load(&path).unwrap();
    assert_eq!(back.spec, spec);
    assert_eq!(back.tensors, w.tensors);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn tdmpc2_initialization() {
    let spec = ModelSpec::tdmpc2(1, 24, 6).unwrap();
    let w = Weights::init(&spec, 0).unwrap();
    assert_eq!(w.param_count(), spec.param_count());
    // Zero final layers of reward and Q: every value prediction starts at 0.
    assert!(
        w.get("_reward.2.weight")
            .unwrap()
            .data
            .iter()
            .all(|v| *v == 0.0)
    );
    assert!(
        w.get("_Qs.params.2.weight")
            .unwrap()
            .data
            .iter()
            .all(|v| *v == 0.0)
    );
    let d = &w.get("_dynamics.1.weight").unwrap().data;
    let std = (d.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / d.len() as f64).sqrt();
    assert!((std - 0.02).abs() < 0.001, "weight std {std}");
    assert!(
        w.get("_dynamics.1.ln.weight")
            .unwrap()
            .data
            .iter()
            .all(|v| *v == 1.0)
    );
    assert!(
        w.get("_dynamics.1.bias")
            .unwrap()
            .data
            .iter()
            .all(|v| *v == 0.0)
    );

    // On the GPU: uniform logits decode to 0.
    let gpu: &Gpu = &gpus()[1];
    let model = WorldModel::new(gpu, &w).unwrap();
    let rows = 3;
    let ws = Workspace::new(gpu, &spec, rows).unwrap();
    let z = GpuBuffer::from_slice(gpu, "z", &vec![0.125f32; rows * spec.latent_dim]).unwrap();
    let a = GpuBuffer::from_slice(gpu, "a", &vec![0.5f32; rows * spec.action_dim]).unwrap();
    let logits = GpuBuffer::<f32>::new(gpu, "logits", rows * spec.num_bins).unwrap();
    let v = GpuBuffer::<f32>::new(gpu, "v", rows).unwrap();
    v.fill_u32(gpu, POISON).unwrap();
    let thc = TwoHotConfig::new(spec.num_bins, spec.vmin, spec.vmax).unwrap();
    let mut rec = Recorder::new(gpu);
    let input = NetInput::new(&z, Some(&a));
    model
        .reward
        .record(&mut rec, rows, input, None, &ws, &logits)
        .unwrap();
    two_hot::record_decode(&mut rec, &thc, rows, &logits, &v).unwrap();
    let h = rec.read(&v);
    let vals = rec.finish().unwrap().get(&h).unwrap();
    assert!(vals.iter().all(|x| x.abs() < 1e-5), "{vals:?}");
}

#[test]
fn presets_have_tdmpc2_parameter_counts() {
    // Algorithm notes b.2: 5M preset for dog (O = 223, A = 38) holds 5.16 M parameters.
    let spec = ModelSpec::tdmpc2(5, 223, 38).unwrap();
    let n = spec.param_count();
    assert_eq!(n, 190_464 + 810_496 + 598_629 + 566_348 + 2_993_145, "{n}");
    for size in [1, 5, 19, 48, 317] {
        ModelSpec::tdmpc2(size, 10, 4).unwrap().validate().unwrap();
    }
    assert!(ModelSpec::tdmpc2(7, 10, 4).is_err());
}

#[test]
fn workspace_and_head_errors() {
    let gpu = &gpus()[0];
    let spec = ModelSpec::tiny(5, 3);
    let model = WorldModel::new(gpu, &Weights::init(&spec, 1).unwrap()).unwrap();
    let ws = Workspace::new(gpu, &spec, 4).unwrap();
    let z = GpuBuffer::<f32>::new(gpu, "z", 8 * spec.latent_dim).unwrap();
    let y = GpuBuffer::<f32>::new(gpu, "y", 8 * 2 * spec.action_dim).unwrap();
    let heads = GpuBuffer::from_slice(gpu, "heads", &[0u32]).unwrap();
    let mut rec = Recorder::new(gpu);
    let input = NetInput::new(&z, None);
    let e = model
        .policy
        .record(&mut rec, 8, input, None, &ws, &y)
        .unwrap_err();
    assert!(matches!(e, Error::Limit(_)), "{e:?}");
    let e = model
        .policy
        .record(&mut rec, 2, input, Some(&heads), &ws, &y)
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
}
