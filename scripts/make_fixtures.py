#!/usr/bin/env python3
"""Write the TD-MPC2 reference fixtures tests/fixtures/{tiny,small}.safetensors.

Each file is a pompc weights file (see scripts/README.md) with random, non-degenerate
float32 weights, plus `fixture.*` inputs and reference outputs. The reference outputs are
computed in float64 from the float32 weights and inputs, then stored as float32.

    pip install torch safetensors numpy && python3 scripts/make_fixtures.py

Re-running gives byte-identical files (the generator is numpy's PCG64 with fixed seeds).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from tdmpc2_arch import (Config, Model, expected_shapes, two_hot, two_hot_inv,  # noqa: E402
                         write_pompc, read_pompc)

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "tests" / "fixtures"
B = 7

COMMON = dict(num_bins=101, vmin=-10.0, vmax=10.0, simnorm_dim=8, log_std_min=-10.0,
              log_std_max=2.0)
PRESETS = {
    "tiny": (1001, Config(obs_dim=5, action_dim=3, latent_dim=16, mlp_dim=24, enc_dim=20,
                          num_enc_layers=2, num_q=2, episodic=False, **COMMON)),
    "small": (2004, Config(obs_dim=11, action_dim=4, latent_dim=40, mlp_dim=56, enc_dim=36,
                           num_enc_layers=3, num_q=3, episodic=True, **COMMON)),
}

# Targets for the two-hot encoding: zero, small, negative, large (|symlog| < 10) and
# clamped (|symlog| > 10) values.
TARGETS = [0.0, 0.37, -2.5, 3000.0, -3000.0, 1.0e5, -7.0e4]

# Slope (per unit of bin value) of the "tilt" direction in the last reward/Q layer. The
# decoded value then varies with the input instead of sitting at symexp(0) = 0.
TILT = 0.05
# Scale of the policy's last layer weights (N(0, 1/fan_in) times this).
PI_SCALE = 0.25


def init_weights(cfg: Config, rng: np.random.Generator) -> dict:
    """Random weights (float64 arrays, cast to float32 by the caller) under pompc names.

    Linear weights N(0, 1/fan_in), biases 0.1 N, LayerNorm gain 1 + 0.1 N and bias 0.1 N;
    the last reward/Q layers get a tilt and the policy's last layer is scaled down (below).
    """
    out = {}
    bins = np.linspace(cfg.vmin, cfg.vmax, cfg.num_bins)
    for name, shape in expected_shapes(cfg).items():
        if name in ("log_std_min", "log_std_dif"):
            continue
        if name.endswith(".ln.weight"):
            v = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name.endswith(".bias"):
            v = 0.1 * rng.standard_normal(shape)
        else:  # weight [.., out, in]: N(0, 1/fan_in)
            fan_in = shape[-1]
            v = rng.standard_normal(shape) / np.sqrt(fan_in)
            last = name in ("_reward.2.weight", "_Qs.params.2.weight")
            if last:
                # Keep a random part (so heads differ bin by bin) and add a rank-one tilt
                # bins (x) u so the expected bin, and the decoded value, move with the input.
                u = rng.standard_normal(shape[:-2] + (1, fan_in)) / np.sqrt(fan_in)
                v = 0.5 * v + TILT * bins[:, None] * u
            elif name == "_pi.2.weight":
                # Small policy outputs: moderate means and log-stds, so the squashed sample
                # stays away from tanh saturation.
                v = PI_SCALE * v
        if name == "_pi.2.bias":
            # Mean half: spread N(0, 0.5) so tanh(mean) covers more than the linear range.
            # Log-std half: raw 0.4 on average, log_std = -10 + 6 (tanh(0.4) + 1) ~ -1.7.
            A = cfg.action_dim
            v = v + np.concatenate([0.5 * rng.standard_normal(A), np.full(A, 0.4)])
        out[name] = v
    return out


def build(name: str):
    seed, cfg = PRESETS[name]
    rng = np.random.default_rng(seed)
    w = init_weights(cfg, rng)
    A, O = cfg.action_dim, cfg.obs_dim
    inputs = {
        "fixture.obs": rng.standard_normal((B, O)),
        "fixture.action": rng.uniform(-1.0, 1.0, (B, A)),
        "fixture.eps": rng.standard_normal((B, A)),
        "fixture.logits": 3.0 * rng.standard_normal((B, cfg.num_bins)),
        "fixture.targets": np.array(TARGETS, dtype=np.float64),
    }
    # Everything stored is float32; the reference uses exactly those float32 values.
    f32 = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in {**w, **inputs}.items()}

    model = Model(cfg)
    state = {k: v for k, v in f32.items() if not k.startswith("fixture.")}
    state["log_std_min"] = torch.tensor(cfg.log_std_min, dtype=torch.float32)
    state["log_std_dif"] = torch.tensor(cfg.log_std_max - cfg.log_std_min, dtype=torch.float32)
    model.load_state_dict(state, strict=True)
    model = model.double().eval()

    d = {k: v.double() for k, v in f32.items() if k.startswith("fixture.")}
    with torch.no_grad():
        z = model.encode(d["fixture.obs"])
        a = d["fixture.action"]
        ref = {
            "fixture.z": z,
            "fixture.next_z": model.next(z, a),
        }
        rl = model.reward_logits(z, a)
        ref["fixture.reward_logits"] = rl
        ref["fixture.reward"] = two_hot_inv(rl, cfg)
        ql = model.q_logits(z, a)
        ref["fixture.q_logits"] = ql
        ref["fixture.q"] = two_hot_inv(ql, cfg)
        p = model.pi(z, d["fixture.eps"])
        for k in ("mean", "log_std", "action", "log_prob", "entropy", "scaled_entropy"):
            ref[f"fixture.pi_{k}"] = p[k]
        if cfg.episodic:
            ref["fixture.termination_logit"] = model.termination_logit(z)
        ref["fixture.decoded"] = two_hot_inv(d["fixture.logits"], cfg)
        ref["fixture.two_hot"] = two_hot(d["fixture.targets"], cfg)

    sanity(name, cfg, ref, p)
    tensors = {**model.pompc_tensors(), **{k: v for k, v in f32.items() if k.startswith("fixture.")}}
    tensors.update({k: v.to(torch.float32).contiguous() for k, v in ref.items()})
    return cfg, tensors


def sanity(name, cfg, ref, p):
    """Refuse degenerate fixtures: values must be O(1..10) and well conditioned in float32."""
    def rng_of(k):
        t = ref[k]
        return float(t.abs().min()), float(t.abs().max())

    for k in ("fixture.reward", "fixture.q"):
        lo, hi = rng_of(k)
        assert 0.05 < hi < 50 and hi > 1.0, f"{name}: {k} magnitudes {lo}..{hi} out of range"
        spread = float(ref[k].max() - ref[k].min())
        assert spread > 0.5, f"{name}: {k} barely varies ({spread})"
    # The squash must not saturate in float32 (1 - tanh^2 well above 1e-6) and the
    # entropy scale must be well defined (log_prob away from 0).
    pre = p["pre_squash"].abs().max().item()
    assert pre < 4.0, f"{name}: pre-squash action {pre} too large for a float32 comparison"
    assert p["log_prob"].abs().min().item() > 0.1, f"{name}: log_prob too close to 0"
    assert ref["fixture.z"].isfinite().all()
    for k, v in ref.items():
        assert torch.isfinite(v).all(), f"{name}: {k} not finite"


# The world-model update fixture (tests/fixtures/update_tiny.safetensors): TD-MPC2's b.6
# update of the tiny preset on a random batch, its losses, gradients, and the parameters after
# one clipped Adam step and the Polyak update.
UPDATE_T, UPDATE_B = 3, 6
UPDATE = dict(rho=0.5, discount=0.99, consistency_coef=20.0, reward_coef=0.1, value_coef=0.1,
              lr=3e-4, enc_lr_scale=0.3, grad_clip_norm=20.0, tau=0.01)


def soft_ce(logits, target, cfg):
    """TD-MPC2's soft cross-entropy against the two-hot encoding of scalar targets [R]."""
    return -(two_hot(target, cfg) * F.log_softmax(logits, dim=-1)).sum(-1)


def build_update():
    seed, cfg = PRESETS["tiny"]
    rng = np.random.default_rng(seed + 77)
    w = init_weights(cfg, rng)
    # Target heads: the online heads plus a perturbation, so that the TD target differs.
    for k in list(w):
        if k.startswith("_Qs.params."):
            w["_target_Qs_params." + k[len("_Qs.params."):]] = (
                w[k] + 0.05 * rng.standard_normal(w[k].shape))
    T, B, O, A = UPDATE_T, UPDATE_B, cfg.obs_dim, cfg.action_dim
    heads = [1, 0]
    inputs = {
        "fixture.update.obs": rng.standard_normal((T + 1, B, O)),
        "fixture.update.action": rng.uniform(-1.0, 1.0, (T, B, A)),
        "fixture.update.reward": rng.uniform(-2.0, 3.0, (T, B)),
        "fixture.update.pi_noise": rng.standard_normal((T, B, A)),
        "fixture.update.heads": np.array(heads, dtype=np.float64),
        "fixture.update.next_planner": np.concatenate(
            [rng.uniform(-0.8, 0.8, (T, B, A)), rng.uniform(0.1, 1.0, (T, B, A))], axis=-1),
    }
    f32 = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in {**w, **inputs}.items()}
    model = Model(cfg, with_target=True)
    state = {k: v for k, v in f32.items() if not k.startswith("fixture.update.")}
    state["log_std_min"] = torch.tensor(cfg.log_std_min, dtype=torch.float32)
    state["log_std_dif"] = torch.tensor(cfg.log_std_max - cfg.log_std_min, dtype=torch.float32)
    model.load_state_dict(state, strict=True)
    model = model.double()
    d = {k: v.double() for k, v in f32.items() if k.startswith("fixture.update.")}
    obs, action, reward = d["fixture.update.obs"], d["fixture.update.action"], d["fixture.update.reward"]
    u = UPDATE
    L = cfg.latent_dim
    with torch.no_grad():
        next_z = model.encode(obs[1:])
        a_next = model.pi(next_z.reshape(T * B, L), d["fixture.update.pi_noise"].reshape(T * B, A))["action"]
        tq = model.q_logits(next_z.reshape(T * B, L), a_next, target=True)
        q_min = torch.minimum(two_hot_inv(tq[heads[0]], cfg), two_hot_inv(tq[heads[1]], cfg))
        td = reward + u["discount"] * q_min.reshape(T, B)
        # The KL-regularized target (a.3.3) against next-state planner Gaussians, lambda_Q =
        # 0.5: D = log pi(a') - log pi_p(a'), the single-sample estimate with the squashed
        # policy (the squash corrections cancel), summed over the action dimensions.
        p = model.pi(next_z.reshape(T * B, L), d["fixture.update.pi_noise"].reshape(T * B, A))
        e = d["fixture.update.pi_noise"].reshape(T * B, A)
        mb, sb = d["fixture.update.next_planner"].reshape(T * B, 2 * A).chunk(2, dim=-1)
        lp_pi = (-0.5 * e ** 2 - p["log_std"]).sum(-1)
        lp_b = (-0.5 * ((p["pre_squash"] - mb) / sb) ** 2 - torch.log(sb)).sum(-1)
        td_klq = td - u["discount"] * 0.5 * (lp_pi - lp_b).reshape(T, B)
    z = model.encode(obs[0])
    zs = [z]
    consistency = 0
    for t in range(T):
        z = model.next(z, action[t])
        consistency = consistency + F.mse_loss(z, next_z[t]) * u["rho"] ** t
        zs.append(z)
    _zs = torch.stack(zs[:-1])
    rl = model.reward_logits(_zs.reshape(T * B, L), action.reshape(T * B, A)).reshape(T, B, -1)
    ql = model.q_logits(_zs.reshape(T * B, L), action.reshape(T * B, A)).reshape(cfg.num_q, T, B, -1)
    reward_loss, value_loss = 0, 0
    for t in range(T):
        reward_loss = reward_loss + soft_ce(rl[t], reward[t], cfg).mean() * u["rho"] ** t
        for q in range(cfg.num_q):
            value_loss = value_loss + soft_ce(ql[q, t], td[t], cfg).mean() * u["rho"] ** t
    consistency = consistency / T
    reward_loss = reward_loss / T
    value_loss = value_loss / (T * cfg.num_q)
    total = (u["consistency_coef"] * consistency + u["reward_coef"] * reward_loss
             + u["value_coef"] * value_loss)
    total.backward()
    trained = [p for n, p in model.named_parameters()
               if not n.startswith("_target_Qs_params.") and not n.startswith("_pi.")]
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    grad_norm = torch.nn.utils.clip_grad_norm_(trained, u["grad_clip_norm"])
    enc = [p for n, p in model.named_parameters() if n.startswith("_encoder.")]
    rest = [p for p in trained if all(p is not e for e in enc)]
    opt = torch.optim.Adam([{"params": enc, "lr": u["lr"] * u["enc_lr_scale"]},
                            {"params": rest}], lr=u["lr"])
    opt.step()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.startswith("_target_Qs_params."):
                online = dict(model.named_parameters())["_Qs.params." + n[len("_target_Qs_params."):]]
                p.lerp_(online, u["tau"])
    ref = {
        "fixture.update.losses": torch.stack([consistency, reward_loss, value_loss, total]).detach(),
        "fixture.update.grad_norm": grad_norm.detach().reshape(1),
        "fixture.update.td": td,
        "fixture.update.td_klq": td_klq,
    }
    for n, g in grads.items():
        ref["fixture.grad." + n] = g
    for n, p in model.named_parameters():
        ref["fixture.after." + n] = p.detach()
    for k, v in ref.items():
        assert torch.isfinite(v).all(), k
    assert float(ref["fixture.update.losses"][1]) > 0.5 and float(ref["fixture.update.losses"][0]) > 1e-4
    tensors = {**{k: v for k, v in f32.items()}, **{k: v.to(torch.float32).contiguous() for k, v in ref.items()}}
    return cfg, tensors


# The policy-update fixture (tests/fixtures/policy_tiny.safetensors): the four presets of
# algorithm.md a.4 on the tiny preset, their loss terms and the gradients of the policy (and,
# for PO-MPC, of the adaptive prior) with respect to its parameters, by autograd in float64.
POLICY_B = 6
LOG_2PI = math.log(2 * math.pi)


def running_scale(value, x, tau=0.01):
    """TD-MPC2's RunningScale update of `value` with the batch x [B] (5th/95th percentiles)."""
    xs = torch.sort(x.detach()).values
    n = xs.shape[0]
    out = []
    for q in (5.0, 95.0):
        pos = q * (n - 1) / 100
        lo = math.floor(pos)
        hi = min(lo + 1, n - 1)
        w = pos - lo
        out.append(xs[lo] * (1 - w) + xs[hi] * w)
    return value + tau * (max(float(out[1] - out[0]), 1.0) - value)


def head_map(raw, lo, hi, param):
    """(mu, log_std) of a policy head's raw output [R, 2A]."""
    m, s = raw.chunk(2, dim=-1)
    log_std = lo + 0.5 * (hi - lo) * (torch.tanh(s) + 1)
    mu = m if param == "squashed" else torch.tanh(m)
    return mu, log_std


def policy_terms(preset, cfg, model, prior, zs, eps, planner, heads, s_q0):
    """Loss terms (q, entropy, kl, ll, total, prior_fit) of one preset, differentiable in the
    policy's (and prior's) parameters."""
    A = cfg.action_dim
    rho, alpha = 0.5, 1e-4
    squashed = preset != "bmpc"
    lo, hi = (-3.0, 1.0) if preset == "bmpc" else (-10.0, 2.0)
    Tp = 4 if preset == "tdmpc2" else 3
    B = POLICY_B
    R = Tp * B
    z = zs[:Tp].reshape(R, -1)
    e = eps[:Tp].reshape(R, A)
    w = torch.tensor([rho ** (r // B) / R for r in range(R)], dtype=torch.float64)
    raw = model._pi(z)
    mu, log_std = head_map(raw, lo, hi, "squashed" if squashed else "clamp")
    sig = log_std.exp()
    x = mu + sig * e
    a = torch.tanh(x) if squashed else torch.clamp(x, -1, 1)
    lp = (-0.5 * e ** 2 - log_std).sum(-1) - 0.5 * A * LOG_2PI
    corr = torch.log(F.relu(1 - a ** 2) + 1e-6).sum(-1) if squashed else torch.zeros(R, dtype=torch.float64)
    L = lp - corr
    if preset == "tdmpc-square":
        # The Oct-2023 log-prob: A (sum(-eps^2/2 - log_std) - log(2 pi)/2) - squash correction.
        H = -(A * ((-0.5 * e ** 2 - log_std).sum(-1) - 0.5 * LOG_2PI) - corr)
    else:
        H = -L * (A * lp) / (L + 1e-8)
    zero = torch.zeros((), dtype=torch.float64)
    q_term, kl_term, ll_term, prior_fit = zero, zero, zero, zero
    s_q = s_q0
    if preset != "bmpc":
        x_q = torch.cat([z, a], dim=-1)
        ql = model._Qs(x_q)  # [num_q, R, bins]
        qv = (two_hot_inv(ql[heads[0]], cfg) + two_hot_inv(ql[heads[1]], cfg)) / 2
        s_q = running_scale(s_q0, qv[:B])
        q_term = (w * (-qv / s_q)).sum()
    mb, sb = planner[:Tp].reshape(R, 2 * A).chunk(2, dim=-1)
    if preset == "bmpc":
        kl = (torch.log(sb / sig) + (sig ** 2 + (mu - mb) ** 2) / (2 * sb ** 2) - 0.5).mean(-1)
        s_kl = running_scale(1.0, kl[:B])
        kl_term = (w * kl / s_kl).sum()
    if preset == "pompc":
        praw = prior._pi(z)
        pmu, plog = head_map(praw, lo, hi, "squashed")
        psig = plog.exp()
        # Prior fit: reverse KL(pi_psi's Gaussian || b), mean over dimensions.
        d = (torch.log(sb / psig) + (psig ** 2 + (pmu - mb) ** 2) / (2 * sb ** 2) - 0.5).mean(-1)
        s_d = running_scale(1.0, d[:B])
        prior_fit = (w * d / s_d).sum()
        # The policy's KL: log pi(a) - log pi_psi(a), squashed densities, summed over dims,
        # the prior with no gradient.
        pmu_d, psig_d = pmu.detach(), psig.detach()
        u = torch.atanh(torch.clamp(a, -1 + 1e-6, 1 - 1e-6))
        lpp = (-0.5 * ((u - pmu_d) / psig_d) ** 2 - torch.log(psig_d)).sum(-1) - 0.5 * A * LOG_2PI - corr
        D = L - lpp
        s_kl = running_scale(1.0, D[:B])
        kl_term = (w * 1.0 * D / s_kl).sum()
    if preset == "tdmpc-square":
        sp = torch.clamp(sb, min=0.05)
        ell = A * ((-0.5 * ((a - mb) / sp) ** 2 - torch.log(sp)).sum(-1) - 0.5 * LOG_2PI)
        gate = 1.0 if s_q > 2.0 else 0.0
        ll_term = (w * (-gate * (A / 61.0) * ell / s_q)).sum()
    ent_term = (w * (-alpha * H)).sum()
    total = q_term + ent_term + kl_term + ll_term
    return q_term, ent_term, kl_term, ll_term, total, prior_fit


def build_policy():
    seed, cfg = PRESETS["tiny"]
    rng = np.random.default_rng(seed + 99)
    w = init_weights(cfg, rng)
    prior_w = init_weights(cfg, rng)
    T, B, A, L = 3, POLICY_B, cfg.action_dim, cfg.latent_dim
    logits = rng.standard_normal((4, B, L // 8, 8))
    zs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    inputs = {
        "fixture.policy.zs": zs.reshape(4, B, L),
        "fixture.policy.eps": rng.standard_normal((4, B, A)),
        "fixture.policy.planner": np.concatenate(
            [rng.uniform(-0.8, 0.8, (4, B, A)), rng.uniform(0.05, 1.0, (4, B, A))], axis=-1),
        "fixture.policy.heads": np.array([1, 0], dtype=np.float64),
    }
    for k, v in prior_w.items():
        if k.startswith("_pi."):
            inputs["fixture.prior." + k] = v
    f32 = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in {**w, **inputs}.items()}

    def load(src):
        m = Model(cfg)
        st = {k: v for k, v in src.items() if not k.startswith("fixture.")}
        st["log_std_min"] = torch.tensor(cfg.log_std_min, dtype=torch.float32)
        st["log_std_dif"] = torch.tensor(cfg.log_std_max - cfg.log_std_min, dtype=torch.float32)
        m.load_state_dict(st, strict=True)
        return m.double()

    d = {k: v.double() for k, v in f32.items() if k.startswith("fixture.policy.")}
    heads = [int(h) for h in d["fixture.policy.heads"]]
    ref = {}
    for preset, s_q0 in (("tdmpc2", 1.0), ("bmpc", 1.0), ("tdmpc-square", 5.0), ("pompc", 1.0)):
        model = load(f32)
        prior_src = dict(f32)
        for k in list(prior_src):
            if k.startswith("fixture.prior."):
                prior_src[k[len("fixture.prior."):]] = prior_src[k]
        prior = load(prior_src)
        terms = policy_terms(preset, cfg, model, prior, d["fixture.policy.zs"],
                             d["fixture.policy.eps"], d["fixture.policy.planner"], heads, s_q0)
        (terms[4] + terms[5]).backward()
        ref[f"fixture.{preset}.losses"] = torch.stack([t.detach() for t in terms])
        for n, p in model.named_parameters():
            if n.startswith("_pi."):
                ref[f"fixture.{preset}.grad.{n}"] = p.grad.detach()
        if preset == "pompc":
            for n, p in prior.named_parameters():
                if n.startswith("_pi."):
                    ref[f"fixture.{preset}.prior_grad.{n}"] = p.grad.detach()
    for k, v in ref.items():
        assert torch.isfinite(v).all(), k
    tensors = {**f32, **{k: v.to(torch.float32).contiguous() for k, v in ref.items()}}
    return cfg, tensors


def write_fixture(path: Path, cfg: Config, tensors: dict) -> str:
    """Writes a fixture, reads it back through the safetensors library and compares; returns the
    first 16 hex digits of its SHA-256."""
    write_pompc(path, tensors, cfg.metadata())
    cfg2, back, _ = read_pompc(path)
    assert cfg2 == cfg
    for k, v in tensors.items():
        assert torch.equal(back[k], v), k
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default=str(OUT_DIR))
    ap.add_argument("--verbose", "-v", action="store_true", help="print reference values")
    args = ap.parse_args()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # one thread: reductions in a fixed order
    builders = {"update_tiny": build_update, "policy_tiny": build_policy}
    for name in list(PRESETS) + list(builders):
        cfg, tensors = builders[name]() if name in builders else build(name)
        path = out_dir / f"{name}.safetensors"
        digest = write_fixture(path, cfg, tensors)
        print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: "
              f"{path.stat().st_size} bytes, {len(tensors)} tensors, sha256 {digest}")
        if args.verbose:
            for k in ("fixture.reward", "fixture.q", "fixture.pi_action", "fixture.pi_log_prob",
                      "fixture.pi_scaled_entropy", "fixture.decoded"):
                print(f"  {k}: {tensors[k].numpy().round(4).tolist()}")
            if cfg.episodic:
                print(f"  fixture.termination_logit: "
                      f"{tensors['fixture.termination_logit'].numpy().round(4).tolist()}")


if __name__ == "__main__":
    main()
