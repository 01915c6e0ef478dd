#!/usr/bin/env python3
"""Write tests/fixtures/plan_tdmpc2*.safetensors: plans made by TD-MPC2's own planning code.

TD-MPC2's `TDMPC2._plan` (and the `_estimate_value`, `WorldModel` and `math` code it calls)
is imported from a local checkout of github.com/nicklashansen/tdmpc2 given on the command
line; nothing of it is copied into pompc. Its randomness is replaced, call by call, with
draws that pompc's planner makes from its own Philox streams (src/planner/mod.rs), so that
`tests/planner_fixture.rs` can plan with the GPU planner, without any injection hook, and
compare:

* `torch.randn` (the sampling noise [T, N - P, A] of each iteration and the exploration
  noise [A]), `torch.randn_like` (the policy noise of `WorldModel.pi`), `torch.randperm`
  (the two Q heads of `WorldModel.Q(.., return_type='avg')`) and `Tensor.exponential_`
  (the Gumbel noise of `math.gumbel_softmax_sample`) return the next draw of a queue that
  is filled in the order TD-MPC2 makes them; each patched call checks that it is the draw
  it expects (kind and shape) and the queue must be empty when `_plan` returns;
* the draws come from a NumPy port of pompc's Philox4x32-10 and of its float32 normal and
  Gumbel conversions (`src/rng.rs`), checked here against Random123's known-answer vectors;
  the stream keys and element layouts and the Q-head choice are those documented in
  `src/planner/mod.rs` and `src/planner/config.rs`. The test checks the stored draws and
  heads against pompc's own (`pompc::rng`, `chosen_heads`).

TD-MPC2 plans one environment per call: each of the B environments gets its own agent (its
own warm-start memory `_prev_mean`) and its slice of the draws. The agent is built without
`TDMPC2.__init__` (which needs CUDA): a CPU `WorldModel` in float64 with the fixture's
float32 weights, TD-MPC2's config fields, `_prev_mean` and `discount`. What `_plan` returns
(the action) and keeps (`_prev_mean`) is read directly; the chosen elite, its value, the
elite indices, their weights and the step-0 std are its local variables at return, read
with `sys.setprofile` (nothing in TD-MPC2 is modified).

Every decision that float32 rounding on the GPU could flip is checked for a margin here:
the gaps between consecutive values among the top E + 1 of every iteration (the elite set
and its order, which pairs elites with Gumbel draws), the gap between the best two Gumbel
scores, and every termination logit's distance from 0. A seed whose plans come closer than
MARGIN is skipped for the next one (the seed used is stored).

    pip install torch safetensors numpy tensordict
    python3 scripts/make_plan_fixture.py /path/to/tdmpc2-checkout [--out-dir DIR]

Re-running with the same TD-MPC2 and torch gives the same files.
"""

from __future__ import annotations

import argparse
import inspect
import os
import subprocess
import sys
import types
from pathlib import Path

sys.dont_write_bytecode = True
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import check_export as ce  # noqa: E402
from make_fixtures import init_weights, write_fixture  # noqa: E402
from tdmpc2_arch import Config, Model  # noqa: E402

ROOT = HERE.parent
OUT_DIR = ROOT / "tests" / "fixtures"
MARGIN = 1e-4

# --------------------------------------------------------------------------- Philox (port)

M0, M1, W0, W1 = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85
U32 = np.uint64(0xFFFFFFFF)

# Random123 kat_vectors (the same three that tests/rng_cpu.rs checks).
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def philox4x32_10(ctr, key):
    """Philox4x32-10 over arrays: ctr is four uint64 arrays of 32-bit words, key two ints."""
    c = [np.asarray(w, dtype=np.uint64) for w in ctr]
    k0, k1 = np.uint64(key[0]), np.uint64(key[1])
    for r in range(10):
        if r:
            k0 = (k0 + np.uint64(W0)) & U32
            k1 = (k1 + np.uint64(W1)) & U32
        p0 = np.uint64(M0) * c[0]
        p1 = np.uint64(M1) * c[2]
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ k0, p1 & U32, (p0 >> np.uint64(32)) ^ c[3] ^ k1,
             p0 & U32]
    return c


def blocks(seed: int, stream: int, n_blocks: int):
    """philox(seed, stream, counter) for counters 0..n_blocks: ctr (counter, 0, stream, 0)."""
    cnt = np.arange(n_blocks, dtype=np.uint64)
    z = np.zeros(n_blocks, dtype=np.uint64)
    s = np.full(n_blocks, stream & 0xFFFFFFFF, dtype=np.uint64)
    words = philox4x32_10([cnt, z, s, z], (seed & 0xFFFFFFFF, seed >> 32))
    return np.stack(words, axis=1).astype(np.uint32)  # [n_blocks, 4]


F = np.float32
LOGF_P = [F(v) for v in (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1,
                         1.4249322787e-1, -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1,
                         3.3333331174e-1)]
SINF_P = [F(v) for v in (-1.9515295891e-4, 8.3321608736e-3, -1.6666654611e-1)]
COSF_P = [F(v) for v in (2.443315711809948e-5, -1.388731625493765e-3, 4.166664568298827e-2)]


def u01(x):
    return (x >> np.uint32(8)).astype(F) * F(2.0 ** -24)


def u01_open_closed(x):
    return ((x >> np.uint32(8)) + np.uint32(1)).astype(F) * F(2.0 ** -24)


def u01_open(x):
    return ((x >> np.uint32(9)).astype(F) + F(0.5)) * F(2.0 ** -23)


def ln_f32(x):
    """cephes logf in float32, operation for operation as pompc's ln_f32."""
    x = np.asarray(x, dtype=F)
    bits = x.view(np.uint32)
    e = ((bits >> np.uint32(23)) & np.uint32(0xFF)).astype(np.int32) - 126
    m = ((bits & np.uint32(0x807FFFFF)) | np.uint32(0x3F000000)).view(F)
    small = m < F(0.70710678118654752440)
    e = np.where(small, e - 1, e)
    m = np.where(small, m + m - F(1.0), m - F(1.0)).astype(F)
    z = m * m
    p = np.full_like(m, LOGF_P[0])
    for c in LOGF_P[1:]:
        p = p * m + c
    y = p * m * z
    fe = e.astype(F)
    y = y + F(-2.12194440e-4) * fe
    y = y + F(-0.5) * z
    r = m + y
    return r + F(0.693359375) * fe


def sincos_2pi(t):
    t = np.asarray(t, dtype=F)
    tr = t - np.rint(t)
    q = np.rint(F(4.0) * tr)
    r = tr - F(0.25) * q
    x = F(6.283185307179586) * r
    z = x * x
    s = ((SINF_P[0] * z + SINF_P[1]) * z + SINF_P[2]) * z * x + x
    c = ((COSF_P[0] * z + COSF_P[1]) * z + COSF_P[2]) * z * z - F(0.5) * z + F(1.0)
    j = q.astype(np.int32) & 3
    swap = (j & 1) != 0
    sn, cs = np.where(swap, c, s), np.where(swap, s, c)
    sn = np.where((j & 2) != 0, -sn, sn)
    cs = np.where(((j + 1) & 2) != 0, -cs, cs)
    return sn.astype(F), cs.astype(F)


def normal4(b):
    r0 = np.sqrt(np.abs(F(2.0) * ln_f32(u01_open_closed(b[:, 0]))))
    s0, c0 = sincos_2pi(u01(b[:, 1]))
    r1 = np.sqrt(np.abs(F(2.0) * ln_f32(u01_open_closed(b[:, 2]))))
    s1, c1 = sincos_2pi(u01(b[:, 3]))
    return np.stack([r0 * c0, r0 * s0, r1 * c1, r1 * s1], axis=1).astype(F)


def gumbel4(b):
    return (-ln_f32(-ln_f32(u01_open(b)))).astype(F)


def stream(seed, stream_id, n, kind):
    """n elements: element j is lane j % 4 of kind(philox(seed, stream, j // 4))."""
    nb = -(-n // 4)
    b = blocks(seed, stream_id, nb)
    v = normal4(b) if kind == "normal" else gumbel4(b)
    return v.reshape(-1)[:n]


# src/planner/config.rs `streams` and `chosen_heads`, as documented there.
def s_heads(call):
    return (call * 256) & 0xFFFFFFFF


def s_gumbel(call):
    return (call * 256 + 1) & 0xFFFFFFFF


def s_explore(call):
    return (call * 256 + 2) & 0xFFFFFFFF


def s_sampling(call, i):
    return (call * 256 + 16 + i) & 0xFFFFFFFF


def s_terminal(call, i):
    return (call * 256 + 80 + i) & 0xFFFFFFFF


def s_pi_traj(call, t):
    return (call * 256 + 144 + t) & 0xFFFFFFFF


def chosen_heads(seed, call, i, num_q):
    w = blocks(seed, s_heads(call), i + 1)[i]
    h0 = int(w[0]) % num_q
    h1 = (h0 + 1 + int(w[1]) % (num_q - 1)) % num_q
    return h0, h1


def check_port():
    for ctr, key, want in KAT:
        got = philox4x32_10([np.array([w], dtype=np.uint64) for w in ctr], key)
        got = tuple(int(w[0]) for w in got)
        assert got == want, f"Philox port: {got} != {want}"
    # ln_f32(1) is exactly 0 and the conversions stay in range.
    assert ln_f32(np.array([1.0], F))[0] == 0.0
    x = np.array([0, 1, 0xFFFFFFFF, 0x80000000], dtype=np.uint32)
    assert (u01_open(x) > 0).all() and (u01_open(x) < 1).all()
    assert np.isfinite(gumbel4(x.reshape(1, 4))).all()


# --------------------------------------------------------------------------- cases

CASES = {
    # name: (model, planner, batch, first_step flags per call, first seed)
    "plan_tdmpc2": (
        Config(obs_dim=6, action_dim=3, latent_dim=16, mlp_dim=24, enc_dim=20,
               num_enc_layers=2, num_q=5, episodic=False),
        dict(horizon=3, num_samples=20, num_elites=5, num_pi_trajs=3, iterations=4,
             train=True, episode_length=500),
        2,
        [[1, 1], [0, 1], [0, 0], [1, 0]],
        11,
    ),
    "plan_tdmpc2_episodic": (
        Config(obs_dim=5, action_dim=4, latent_dim=16, mlp_dim=24, enc_dim=20,
               num_enc_layers=3, num_q=3, episodic=True),
        dict(horizon=4, num_samples=24, num_elites=6, num_pi_trajs=0, iterations=3,
             train=False, episode_length=60),
        3,
        [[1, 1, 1], [0, 0, 1], [0, 1, 0]],
        21,
    ),
}
MIN_STD, MAX_STD, TEMPERATURE = F(0.05), F(2.0), F(0.5)


class Draws:
    """The queue of draws TD-MPC2's patched random functions hand out, in call order."""

    def __init__(self):
        self.q = []

    def push(self, kind, shape, value):
        self.q.append((kind, tuple(shape), value))

    def pop(self, kind, shape):
        assert self.q, f"TD-MPC2 drew {kind}{tuple(shape)} beyond the expected draws"
        k, s, v = self.q.pop(0)
        assert (k, s) == (kind, tuple(shape)), f"TD-MPC2 drew {kind}{tuple(shape)}, expected {k}{s}"
        return v


def patch_randomness(draws: Draws):
    """Replace TD-MPC2's random draws; returns a function that restores them."""
    real = (torch.randn, torch.randn_like, torch.randperm, torch.Tensor.exponential_)

    def randn(*size, **kw):
        size = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list)) else size
        return torch.as_tensor(draws.pop("randn", size), dtype=torch.get_default_dtype())

    def randn_like(x, *a, **kw):
        return torch.as_tensor(draws.pop("randn_like", x.shape), dtype=x.dtype)

    def randperm(n, *a, **kw):
        h0, h1 = draws.pop("randperm", (n,))
        rest = [h for h in range(n) if h not in (h0, h1)]
        return torch.tensor([h0, h1] + rest, dtype=torch.long)

    def exponential_(self, *a, **kw):
        # math.gumbel_softmax_sample takes -log of this: exp(-g) gives back the Gumbel draw g.
        g = torch.as_tensor(draws.pop("exponential_", self.shape), dtype=torch.float64)
        with torch.no_grad():
            self.copy_(torch.exp(-g))
        return self

    torch.randn, torch.randn_like, torch.randperm = randn, randn_like, randperm
    torch.Tensor.exponential_ = exponential_

    def restore():
        torch.randn, torch.randn_like, torch.randperm, torch.Tensor.exponential_ = real

    return restore


def f32(x) -> float:
    return float(np.float32(x))


def plan_case(T, name, seed, verbose=False):
    cfg, pl, B, firsts, _ = CASES[name]
    A, O = cfg.action_dim, cfg.obs_dim
    N, E, P, I, H = (pl["num_samples"], pl["num_elites"], pl["num_pi_trajs"], pl["iterations"],
                     pl["horizon"])
    C = len(firsts)
    rng = np.random.default_rng(seed)
    weights = {k: torch.from_numpy(np.asarray(v, np.float32))
               for k, v in init_weights(cfg, rng).items()}
    obs = rng.standard_normal((C, B, O)).astype(np.float32)
    if cfg.episodic:
        # Shift the termination logits so that about a fifth of the latents one step ahead
        # predict a termination: the mask matters, and few rollouts end at the first step
        # (whose values depend on the first action alone: clamped first actions would tie).
        ref = Model(cfg)
        ref.load_state_dict({**weights, "log_std_min": torch.tensor(cfg.log_std_min),
                             "log_std_dif": torch.tensor(cfg.log_std_max - cfg.log_std_min)})
        with torch.no_grad():
            z = ref.double().encode(torch.from_numpy(obs.reshape(-1, O)).double())
            z = z.repeat(64, 1)
            a = torch.from_numpy(rng.uniform(-1, 1, (z.shape[0], A)))
            logit = ref.termination_logit(ref.next(z, a))
        shift = -float(torch.quantile(logit, 0.8))
        weights["_termination.2.bias"] = (weights["_termination.2.bias"] + shift).float()

    tcfg = ce.tdmpc2_cfg(cfg, cfg.num_enc_layers)
    tcfg = types.SimpleNamespace(**vars(tcfg), horizon=H, num_samples=N, num_elites=E,
                                 num_pi_trajs=P, iterations=I, min_std=f32(MIN_STD),
                                 max_std=f32(MAX_STD), temperature=f32(TEMPERATURE), mpc=True,
                                 compile=False, discount_denom=5, discount_min=0.95,
                                 discount_max=0.995)
    wm = ce.new_world_model(T, tcfg, torch.float64)
    target = {k.replace("_Qs.params.", "_target_Qs_params."): v for k, v in weights.items()
              if k.startswith("_Qs.params.")}
    ce.fill_world_model(wm, weights, target)
    wm.eval()

    # One TD-MPC2 agent per environment, built around TD-MPC2's own methods.
    agents = []
    for _ in range(B):
        agent = T.TDMPC2.__new__(T.TDMPC2)
        torch.nn.Module.__init__(agent)
        agent.cfg = tcfg
        agent.device = torch.device("cpu")
        agent.model = wm
        agent._prev_mean = torch.zeros(H, A, dtype=torch.float64)
        agents.append(agent)
    # TD-MPC2's discount heuristic, rounded to the float32 that pompc's planner uses.
    discount = f32(T.TDMPC2._get_discount(agents[0], pl["episode_length"]))
    for agent in agents:
        agent.discount = discount

    out = {k: [] for k in ("action", "mean", "std", "value", "chosen", "kept", "weights",
                           "warm_start")}
    noise = {k: [] for k in ("noise_pi", "noise_sampling", "noise_terminal", "gumbel",
                             "explore", "heads")}
    margins = {"elite": np.inf, "gumbel": np.inf, "termination": np.inf}

    # Observation only: values given to topk, scores given to the Gumbel choice, termination
    # logits, and _plan's locals at return.
    real_topk = torch.topk
    real_gumbel = T.math.gumbel_softmax_sample
    seen = {"values": [], "scores": [], "locals": None}

    def topk(x, k, *a, **kw):
        seen["values"].append(x.detach().clone())
        return real_topk(x, k, *a, **kw)

    def gumbel_sample(p, *a, **kw):
        seen["scores"].append(p.detach().clone())
        return real_gumbel(p, *a, **kw)

    ended = [0, 0]  # termination logits above 0, all of them

    def term_hook(_m, _inp, o):
        margins["termination"] = min(margins["termination"], float(o.abs().min()))
        ended[0] += int((o > 0).sum())
        ended[1] += o.numel()

    plan_code = inspect.unwrap(T.TDMPC2._plan).__code__  # inside @torch.no_grad()

    def profiler(frame, event, arg):
        if event == "return" and frame.f_code is plan_code:
            seen["locals"] = dict(frame.f_locals)

    hook = wm._termination.register_forward_hook(term_hook) if cfg.episodic else None
    torch.topk = topk
    T.math.gumbel_softmax_sample = gumbel_sample
    draws = Draws()
    restore = patch_randomness(draws)
    try:
        for c, first in enumerate(firsts):
            pi = [stream(seed_of(seed), s_pi_traj(c, t), P * B * A, "normal") for t in range(H)]
            smp = [stream(seed_of(seed), s_sampling(c, i), H * N * B * A, "normal")
                   for i in range(I)]
            term = [stream(seed_of(seed), s_terminal(c, i), N * B * A, "normal") for i in range(I)]
            heads = [chosen_heads(seed_of(seed), c, i, cfg.num_q) for i in range(I)]
            gum = stream(seed_of(seed), s_gumbel(c), B * E, "gumbel")
            exp_ = stream(seed_of(seed), s_explore(c), B * A, "normal")
            noise["noise_pi"].append(np.stack(pi) if P else np.zeros((H, 0), F))
            noise["noise_sampling"].append(np.stack(smp))
            noise["noise_terminal"].append(np.stack(term))
            noise["heads"].append(np.array(heads, F))
            noise["gumbel"].append(gum)
            noise["explore"].append(exp_)
            for h0, h1 in heads:
                assert h0 != h1, "TD-MPC2's randperm never gives the same head twice"
            row = {k: [] for k in out}
            for b in range(B):
                # The draws of environment b, in the order _plan makes them.
                if P:
                    for t in range(H):
                        e = pi[t].reshape(P, B, A)[:, b]
                        draws.push("randn_like", (P, A), e.astype(np.float64))
                for i in range(I):
                    r = smp[i].reshape(H, N, B, A)[:, P:, b]
                    draws.push("randn", (H, N - P, A), r.astype(np.float64))
                    draws.push("randn_like", (N, A), term[i].reshape(N, B, A)[:, b].astype(np.float64))
                    draws.push("randperm", (cfg.num_q,), heads[i])
                draws.push("exponential_", (E,), gum.reshape(B, E)[b].astype(np.float64))
                if pl["train"]:
                    draws.push("randn", (A,), exp_.reshape(B, A)[b].astype(np.float64))
                seen["values"].clear()
                seen["scores"].clear()
                o = torch.from_numpy(obs[c, b].astype(np.float64)).unsqueeze(0)
                sys.setprofile(profiler)
                try:
                    with torch.no_grad():
                        a = agents[b]._plan(o, t0=bool(first[b]), eval_mode=not pl["train"])
                finally:
                    sys.setprofile(None)
                assert not draws.q, f"TD-MPC2 left draws unused: {[d[:2] for d in draws.q]}"
                loc = seen["locals"]
                idx = int(loc["rand_idx"])
                row["action"].append(a.numpy())
                row["mean"].append(loc["mean"][0].numpy())
                row["std"].append(loc["std"].numpy())
                row["value"].append(float(loc["elite_value"][idx]))
                row["chosen"].append(int(loc["elite_idxs"][idx]))
                row["kept"].append(loc["elite_idxs"].numpy())
                row["weights"].append(loc["score"].squeeze(1).numpy())
                row["warm_start"].append(agents[b]._prev_mean.numpy().copy())
                assert len(seen["values"]) == I and len(seen["scores"]) == 1
                for v in seen["values"]:
                    top = torch.sort(v, descending=True).values[: E + 1]
                    gap = (top[:-1] - top[1:]) / top[:-1].abs().clamp(min=1.0)
                    margins["elite"] = min(margins["elite"], float(gap.min()))
                sc = torch.log(seen["scores"][0]) + torch.from_numpy(gum.reshape(B, E)[b].astype(np.float64))
                s2 = torch.sort(sc, descending=True).values
                margins["gumbel"] = min(margins["gumbel"], float(s2[0] - s2[1]))
                if verbose:
                    print(f"  call {c} env {b}: action {np.round(a.numpy(), 4)}, chosen "
                          f"{row['chosen'][-1]}, value {row['value'][-1]:.4f}")
            for k in out:
                out[k].append(row[k])
    finally:
        restore()
        torch.topk = real_topk
        T.math.gumbel_softmax_sample = real_gumbel
        if hook is not None:
            hook.remove()

    planner = [H, N, E, P, I, f32(MIN_STD), f32(MAX_STD), f32(TEMPERATURE), discount,
               1.0 if pl["train"] else 0.0, float(seed_of(seed)), B, C]
    tensors = {
        "fixture.planner": np.array(planner, F),
        "fixture.obs": obs,
        "fixture.first": np.array(firsts, F),
    }
    for k, v in noise.items():
        if k == "noise_pi" and not P:
            continue
        if k == "explore" and not pl["train"]:
            continue
        tensors[f"fixture.{k}"] = np.stack(v).astype(F)
    for k, v in out.items():
        tensors[f"fixture.{k}"] = np.array(v, dtype=np.float64).astype(F)
    for k, v in tensors.items():
        assert np.isfinite(v).all(), f"{name}: {k} not finite"
    if cfg.episodic:
        # The mask must matter: some latents, not all, predict a termination.
        assert 0.02 < ended[0] / ended[1] < 0.98, f"{name}: terminations {ended}"
        print(f"{name}: seed {seed}: {ended[0]} of {ended[1]} predicted terminations")
    return cfg, weights, tensors, margins


def seed_of(seed: int) -> int:
    """The planner's Philox seed for data seed `seed` (distinct, small enough for float32)."""
    return 1000 + seed


def build(T, name, verbose=False):
    cfg, _, _, _, seed = CASES[name]
    for attempt in range(50):
        s = seed + attempt
        cfg, weights, tensors, m = plan_case(T, name, s, verbose)
        ok = m["elite"] > MARGIN and m["gumbel"] > MARGIN and m["termination"] > MARGIN
        print(f"{name}: seed {s}: margins elite {m['elite']:.2e}, Gumbel {m['gumbel']:.2e}, "
              f"termination {m['termination']:.2e}" + ("" if ok else " (too close, next seed)"))
        if ok:
            break
    else:
        raise SystemExit(f"{name}: no seed with margins above {MARGIN}")
    # The weights as pompc stores them (tdmpc2_arch.Model names; log-std buffers included).
    model = Model(cfg)
    state = dict(weights)
    state["log_std_min"] = torch.tensor(cfg.log_std_min, dtype=torch.float32)
    state["log_std_dif"] = torch.tensor(cfg.log_std_max - cfg.log_std_min, dtype=torch.float32)
    model.load_state_dict(state, strict=True)
    out = dict(model.pompc_tensors())
    out.update({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()})
    return cfg, out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tdmpc2", type=Path, help="path to a TD-MPC2 checkout (the repository root)")
    ap.add_argument("--out-dir", type=Path, default=OUT_DIR)
    ap.add_argument("--verbose", "-v", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    check_port()
    T = ce.import_tdmpc2(args.tdmpc2.resolve())
    head = subprocess.run(["git", "-C", str(args.tdmpc2), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip() or "(not a git checkout)"
    print(f"TD-MPC2 at {args.tdmpc2} {head}; torch {torch.__version__}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name in CASES:
        cfg, tensors = build(T, name, args.verbose)
        path = args.out_dir / f"{name}.safetensors"
        digest = write_fixture(path, cfg, tensors)
        print(f"{path}: {path.stat().st_size} bytes, {len(tensors)} tensors, sha256 {digest}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    main()
