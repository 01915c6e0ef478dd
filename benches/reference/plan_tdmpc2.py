#!/usr/bin/env python3
"""PyTorch reference benchmark of TD-MPC2's MPPI planning step, batched over environments.

Runs beside the Rust/WGSL planner (`pompc bench plan`, `benches/plan.rs`) on the same GPU.
The script needs only torch and the standard library (no network, no numpy).

What it builds (docs/algorithm.md b.1-b.5, TD-MPC2's 5M preset, fp32):
  * world model: encoder O -> 256 (LN, Mish) -> 512 (LN, SimNorm 8); dynamics [z, a] -> 512 ->
    512 -> 512 (LN, SimNorm); reward [z, a] -> 512 -> 512 -> 101; policy z -> 512 -> 512 -> 2A;
    5 Q heads [z, a] -> 512 -> 512 -> 101 with their parameters stacked [5, out, in].
    Hidden layers are Linear -> LayerNorm(eps 1e-5) -> Mish. Weights trunc-normal(std 0.02),
    biases 0, as TD-MPC2 initialises, except that the final reward and Q layers (zero in
    TD-MPC2) get trunc-normal(std --final-std) so that values and elite weights vary.
  * the plan step for B environments at once (every tensor carries the batch dimension):
    encoder; 24 stochastic squashed policy trajectories rolled through the dynamics;
    I = 6 iterations (8 if A >= 20) of: 488 Gaussian samples clamped to [-1, 1], horizon-3
    rollout with discounted (0.99) two-hot-decoded rewards, terminal value G + g * mean of
    2 randomly chosen Q heads at a policy action, NaN -> 0, top-64 elites, weights
    exp(0.5 (v - max)) normalised, mean/std refit with std clamped to [0.05, 2]; then a
    Gumbel-max choice among the elites, exploration noise on its first action, clamp, and
    the mean stored on the device for the next call's warm-start shift.
    No host synchronisation inside the step (no .item(), no numpy, no data-dependent shapes).
  * The terminal Q evaluates only the 2 selected heads (their stacked weights gathered on the
    device, then batched matmuls); TD-MPC2 evaluates all 5 heads and then picks 2, which gives
    the same results at 2.5x the Q cost.

Timing modes (any of them with the suffix -tf32, which sets
torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32 before the run or
capture):
  eager        plain PyTorch calls;
  graph        the whole plan step captured once as a torch.cuda.CUDAGraph (static input and
               output buffers, warm-up on a side stream before capture; torch's CUDA
               generator is graph-safe, so every replay draws fresh random numbers);
  graph-tf32   the same with TF32 matmuls;
  compile      torch.compile(mode="reduce-overhead", dynamic=False), skipped if it fails.
CUDA graphs and compile need CUDA; on the CPU those modes are skipped (and said so).

Each (mode, A, B) is timed with CUDA events around one plan step (torch.cuda.synchronize
after each step), reporting median and p90 ms, env-plans/s = B / median, the useful GFLOP
per step and TFLOP/s. "host ms" is the host wall clock of the step including the read-back
of the actions to the host (what an environment loop waits for); "setup s" is the capture /
compile plus warm-up time; "mem GiB" the peak memory allocated by torch.
Before timing, a float64 check compares the batched step with a line-by-line single-env
TD-MPC2 plan (all 5 Q heads, then 2 picked) fed the same random draws (--no-check skips it);
after timing, the last step's outputs are checked (actions in [-1, 1], std in [0.05, 2],
elite weights summing to 1), and on CUDA one eager step runs under torch's sync debug mode.

FLOP count (2 per multiply-add of every linear layer evaluated, weights only, biases and
LayerNorm/softmax not counted), with per-row MACs
  enc = O*256 + 256*512,  dyn = (L+A)*512 + 2*512*512,  rew = q = (L+A)*512 + 512*512 + 512*101,
  pi = 2*512*512 + 512*2A  (L = 512):
  FLOP/step = 2 * B * ( enc + P*(T*pi + (T-1)*dyn) + I * N * (T*(rew + dyn) + pi + 2*q) ).

Examples:
  python3 benches/reference/plan_tdmpc2.py --batch 1 16 256 --action-dim 6 38 --obs-dim 24 \
      --modes eager graph graph-tf32 --iters 50 --warmup 10
  python3 benches/reference/plan_tdmpc2.py --device cpu --batch 1 2 --iters 2 --warmup 1 --modes eager
"""

import sys
import time
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from common import Runner as GraphRunner, parse_with_check, start_run, device_meta, emit_header, runs_line, print_table_header, new_parser, add_run_args, reporters, WorldModelConfig, macs_per_row, chosen_heads, check_no_sync, time_runner, WorldModelBase, prepare_card, release_card, row_stats, skip_reason


# --------------------------------------------------------------------------------------------
# Settings (tdmpc2/config.yaml, model_size 5)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config(WorldModelConfig):
    num_samples: int = 512  # N
    num_pi_trajs: int = 24  # P
    num_elites: int = 64  # E
    horizon: int = 3  # T
    iterations: int = 6  # I (plus 2 when A >= 20)
    min_std: float = 0.05
    max_std: float = 2.0
    temperature: float = 0.5
    discount: float = 0.99
    final_std: float = 0.1  # init std of the final reward / Q layers (0 in TD-MPC2)

    def iters_for(self, action_dim):
        return self.iterations + (2 if action_dim >= 20 else 0)


# --------------------------------------------------------------------------------------------
# World model
# --------------------------------------------------------------------------------------------


class WorldModel(WorldModelBase):
    def __init__(self, cfg, obs_dim, action_dim, device, dtype, seed):
        super().__init__(cfg, obs_dim, action_dim, device, dtype, seed)
        for layer in self.layers():
            layer.to(device, dtype)

    def layers(self):
        return self.enc + self.dyn + self.rew + self.pi + self.q

    def num_params(self):
        return sum(t.numel() for l in self.layers() for t in (l.w, l.b, l.g, l.beta) if t is not None)

    def q_heads(self, za, heads):
        """Logits of the selected Q heads ([k] long tensor on the device): [k, R, bins].
        Only those heads are evaluated: their stacked weights are gathered, then batched
        matmuls over the k heads."""
        k = heads.shape[0]
        x = za.unsqueeze(0).expand(k, *za.shape)
        for l in self.q:
            w = l.w.index_select(0, heads)
            b = l.b.index_select(0, heads)
            x = torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))
            if l.g is not None:
                x = F.layer_norm(x, (l.out_dim,), None, None, self.cfg.ln_eps)
                x = torch.addcmul(l.beta.index_select(0, heads).unsqueeze(1), x,
                                  l.g.index_select(0, heads).unsqueeze(1))
            x = self._act(x, l.act)
        return x

    def q_all_heads_separately(self, za):
        """All heads, one plain MLP each (as TD-MPC2 computes them): [num_q, R, bins]."""
        outs = []
        for h in range(self.cfg.num_q):
            x = za
            for l in self.q:
                x = F.linear(x, l.w[h], l.b[h])
                if l.g is not None:
                    x = F.layer_norm(x, (l.out_dim,), l.g[h], l.beta[h], self.cfg.ln_eps)
                x = self._act(x, l.act)
            outs.append(x)
        return torch.stack(outs)


# --------------------------------------------------------------------------------------------
# Random numbers: fresh draws, optionally recorded for the reference check
# --------------------------------------------------------------------------------------------


class Noise:
    """All random draws of a plan step go through here, keyed by what they are for. With
    record=True the draws are kept so that the single-environment reference can replay them."""

    def __init__(self, device, dtype, record=False):
        self.device, self.dtype, self.record = device, dtype, record
        self.drawn = {}

    def normal(self, key, shape):
        x = torch.randn(shape, device=self.device, dtype=self.dtype)
        if self.record:
            self.drawn[key] = x
        return x

    def uniform(self, key, shape):
        x = torch.rand(shape, device=self.device, dtype=self.dtype)
        if self.record:
            self.drawn[key] = x
        return x


def gumbel_from_uniform(u):
    # Gumbel(0, 1) = -log(Exp(1)), Exp(1) = -log(U); U in [0, 1) from torch.rand
    return -torch.log(-torch.log(u.clamp_min(1e-30)))


# --------------------------------------------------------------------------------------------
# The batched plan step
# --------------------------------------------------------------------------------------------


def plan_step(model, cfg, iterations, obs, first, prev_mean, noise, train=True):
    """One MPPI plan step for B environments.

    obs [B, O]; first [B] bool (first step of an episode: no warm start); prev_mean [T, B, A]
    (read only; the caller stores the returned mean there).
    Returns (action [B, A], mean [T, B, A], std [T, B, A], value [B] of the chosen elite,
    score [B, E] elite weights of the last iteration).
    """
    B = obs.shape[0]
    T, N, P, E = cfg.horizon, cfg.num_samples, cfg.num_pi_trajs, cfg.num_elites
    L, A = cfg.latent_dim, model.action_dim
    dev, dt = obs.device, obs.dtype

    z0 = model.encode(obs)  # [B, L]
    actions = torch.empty(T, B, N, A, device=dev, dtype=dt)  # sample n of env b at [t, b, n]

    # policy trajectories: drawn once, slots 0..P-1 of every iteration
    if P > 0:
        zp = z0.unsqueeze(1).expand(B, P, L).reshape(B * P, L)
        for t in range(T):
            a = model.pi_sample(zp, noise.normal(("pi_traj", t), (B, P, A)).reshape(B * P, A))
            actions[t, :, :P] = a.view(B, P, A)
            if t < T - 1:
                zp = model.next(torch.cat([zp, a], dim=-1))

    # warm start: shift the previous mean by one step, zero for first steps; std = max_std
    shifted = torch.cat([prev_mean[1:], torch.zeros_like(prev_mean[:1])], dim=0)
    mean = torch.where(first.view(1, B, 1), torch.zeros_like(shifted), shifted)
    std = torch.full_like(mean, cfg.max_std)

    z_rep = z0.unsqueeze(1).expand(B, N, L).reshape(B * N, L)  # TD-MPC2: z.repeat(N, 1)
    for i in range(iterations):
        eps = noise.normal(("sample", i), (T, B, N - P, A))
        actions[:, :, P:] = (mean.unsqueeze(2) + std.unsqueeze(2) * eps).clamp(-1, 1)

        # value of every sequence: discounted rewards over T steps + terminal Q
        z = z_rep
        G = torch.zeros(B * N, device=dev, dtype=dt)
        disc = 1.0
        for t in range(T):
            za = torch.cat([z, actions[t].reshape(B * N, A)], dim=-1)
            G = G + disc * model.two_hot_inv(model.reward_logits(za))
            z = model.next(za)
            disc *= cfg.discount
        aT = model.pi_sample(z, noise.normal(("terminal", i), (B, N, A)).reshape(B * N, A))
        heads = chosen_heads(noise.uniform(("heads", i), (cfg.num_q,)))
        q = model.two_hot_inv(model.q_heads(torch.cat([z, aT], dim=-1), heads)).mean(0)
        value = (G + disc * q).nan_to_num(0).view(B, N)

        # elites, weights, refit
        elite_value, elite_idx = torch.topk(value, E, dim=1)  # [B, E], descending
        elite_actions = torch.gather(actions, 2, elite_idx.view(1, B, E, 1).expand(T, B, E, A))
        max_value = elite_value.max(dim=1, keepdim=True).values
        score = torch.exp(cfg.temperature * (elite_value - max_value))
        score = score / score.sum(dim=1, keepdim=True)
        w = score.view(1, B, E, 1)
        denom = score.sum(dim=1).view(1, B, 1) + 1e-9
        mean = (w * elite_actions).sum(dim=2) / denom
        std = ((w * (elite_actions - mean.unsqueeze(2)) ** 2).sum(dim=2) / denom).sqrt()
        std = std.clamp(cfg.min_std, cfg.max_std)

    # Gumbel-max choice of one elite per environment (no host sync)
    g = gumbel_from_uniform(noise.uniform(("gumbel",), (B, E)))
    choice = torch.argmax(torch.log(score) + g, dim=1)  # [B]
    first_actions = elite_actions[0]  # [B, E, A]
    action = torch.gather(first_actions, 1, choice.view(B, 1, 1).expand(B, 1, A)).squeeze(1)
    chosen_value = torch.gather(elite_value, 1, choice.view(B, 1)).squeeze(1)
    if train:
        action = action + std[0] * noise.normal(("explore",), (B, A))
    return action.clamp(-1, 1), mean, std, chosen_value, score


# --------------------------------------------------------------------------------------------
# Single-environment reference (TD-MPC2's _plan line by line, all 5 Q heads) for the check
# --------------------------------------------------------------------------------------------


def reference_plan_one(model, cfg, iterations, obs, first, prev_mean, drawn, b, train=True):
    """obs [O], prev_mean [T, A]; drawn = the batched step's recorded noise, env b's slice."""
    T, N, P, E = cfg.horizon, cfg.num_samples, cfg.num_pi_trajs, cfg.num_elites
    A = model.action_dim
    z = model.encode(obs.unsqueeze(0))  # [1, L]
    pi_actions = torch.empty(T, P, A, dtype=obs.dtype, device=obs.device)
    _z = z.repeat(P, 1)
    for t in range(T - 1):
        pi_actions[t] = model.pi_sample(_z, drawn[("pi_traj", t)][b])
        _z = model.next(torch.cat([_z, pi_actions[t]], -1))
    pi_actions[-1] = model.pi_sample(_z, drawn[("pi_traj", T - 1)][b])

    z = z.repeat(N, 1)
    mean = torch.zeros(T, A, dtype=obs.dtype, device=obs.device)
    std = torch.full((T, A), cfg.max_std, dtype=obs.dtype, device=obs.device)
    if not first:
        mean[:-1] = prev_mean[1:]
    actions = torch.empty(T, N, A, dtype=obs.dtype, device=obs.device)
    actions[:, :P] = pi_actions
    for i in range(iterations):
        r = drawn[("sample", i)][:, b]
        actions[:, P:] = (mean.unsqueeze(1) + std.unsqueeze(1) * r).clamp(-1, 1)
        # _estimate_value
        G, discount, zz = 0, 1, z
        for t in range(T):
            reward = model.two_hot_inv(model.reward_logits(torch.cat([zz, actions[t]], -1)))
            zz = model.next(torch.cat([zz, actions[t]], -1))
            G = G + discount * reward
            discount = discount * cfg.discount
        aT = model.pi_sample(zz, drawn[("terminal", i)][b])
        all_q = model.two_hot_inv(model.q_all_heads_separately(torch.cat([zz, aT], -1)))  # [5, N]
        idx = chosen_heads(drawn[("heads", i)])
        value = (G + discount * all_q[idx].mean(0)).nan_to_num(0)
        elite_idxs = torch.topk(value, E, dim=0).indices
        elite_value, elite_actions = value[elite_idxs], actions[:, elite_idxs]
        max_value = elite_value.max(0).values
        score = torch.exp(cfg.temperature * (elite_value - max_value))
        score = score / score.sum(0)
        mean = (score.view(1, E, 1) * elite_actions).sum(1) / (score.sum(0) + 1e-9)
        std = ((score.view(1, E, 1) * (elite_actions - mean.unsqueeze(1)) ** 2).sum(1)
               / (score.sum(0) + 1e-9)).sqrt().clamp(cfg.min_std, cfg.max_std)
    k = torch.argmax(score.log() + gumbel_from_uniform(drawn[("gumbel",)][b]))
    a = elite_actions[0, k]
    if train:
        a = a + std[0] * drawn[("explore",)][b]
    return a.clamp(-1, 1), mean, std, elite_value[k], score


def invariant_problems(cfg, action, mean, std, score):
    """Host-side checks on a step's outputs (run outside the timed region)."""
    probs = []
    tol = 1e-6
    if not bool(torch.isfinite(action).all()):
        probs.append("non-finite action")
    if float(action.abs().max()) > 1 + tol:
        probs.append("action outside [-1, 1]")
    if float(std.min()) < cfg.min_std - tol or float(std.max()) > cfg.max_std + tol:
        probs.append(f"std outside [{cfg.min_std}, {cfg.max_std}]: [{float(std.min())}, {float(std.max())}]")
    if float(mean.abs().max()) > 1 + tol:
        probs.append("mean outside [-1, 1]")
    sums = score.sum(dim=1)
    if float((sums - 1).abs().max()) > 1e-4:
        probs.append(f"elite weights sum to {sums.tolist()}")
    if float(score.min()) < 0:
        probs.append("negative elite weight")
    return probs


def reference_check(cfg, obs_dim, action_dim, device, seed, batch=3):
    """Batched step vs the single-env reference with the same random draws, float64, small
    sample counts (N 64, P 8, E 16, 3 iterations), two consecutive calls (warm start)."""
    small = replace(cfg, num_samples=64, num_pi_trajs=8, num_elites=16)
    iters = 3
    dt = torch.float64
    model = WorldModel(small, obs_dim, action_dim, device, dt, seed)
    obs = torch.randn(batch, obs_dim, device=device, dtype=dt)
    prev_mean = torch.zeros(small.horizon, batch, action_dim, device=device, dtype=dt)
    worst, problems = 0.0, []
    firsts = [[True] * batch, [bool(b % 2) for b in range(batch)]]  # call 2: mixed warm start
    with torch.no_grad():
        for call, first_list in enumerate(firsts):
            first = torch.tensor(first_list, device=device)
            noise = Noise(device, dt, record=True)
            old_mean = prev_mean.clone()
            out = plan_step(model, small, iters, obs, first, prev_mean, noise)
            prev_mean.copy_(out[1])
            problems += invariant_problems(small, out[0], out[1], out[2], out[4])
            for b in range(batch):
                ref = reference_plan_one(model, small, iters, obs[b], first_list[b],
                                         old_mean[:, b], noise.drawn, b)
                got = (out[0][b], out[1][:, b], out[2][:, b], out[3][b], out[4][b])
                for name, x, y in zip(("action", "mean", "std", "value", "score"), got, ref):
                    d = float((x - y).abs().max())
                    worst = max(worst, d)
                    if not d <= 1e-6:
                        problems.append(f"call {call} env {b}: {name} differs by {d:.3g}")
    return worst, problems


# --------------------------------------------------------------------------------------------
# FLOPs
# --------------------------------------------------------------------------------------------


def plan_flops(cfg, obs_dim, action_dim, batch, iterations):
    m = macs_per_row(cfg, obs_dim, action_dim)
    T, N, P = cfg.horizon, cfg.num_samples, cfg.num_pi_trajs
    pi_traj = P * (T * m["pi"] + (T - 1) * m["dyn"])
    per_iter = N * (T * (m["rew"] + m["dyn"]) + m["pi"] + 2 * m["q"])
    return 2 * batch * (m["enc"] + pi_traj + iterations * per_iter)


# --------------------------------------------------------------------------------------------
# Runners and timing
# --------------------------------------------------------------------------------------------


class Runner(GraphRunner):
    """Holds the static buffers of one (mode, A, B) configuration; step() runs one plan step
    whose outputs are in self.out afterwards."""

    def __init__(self, base_mode, model, cfg, iterations, batch, device, train):
        self.model, self.cfg, self.iterations, self.train = model, cfg, iterations, train
        A, O, T = model.action_dim, model.obs_dim, cfg.horizon
        self.obs = torch.randn(batch, O, device=device)
        self.first = torch.zeros(batch, dtype=torch.bool, device=device)  # warm-started steps
        self.prev_mean = torch.zeros(T, batch, A, device=device)
        self.noise = Noise(device, torch.float32)
        self._start(base_mode)

    def _body(self):
        out = plan_step(self.model, self.cfg, self.iterations, self.obs, self.first,
                        self.prev_mean, self.noise, self.train)
        self.prev_mean.copy_(out[1])  # warm start kept on the device
        return out

    # Compiled: the plan step alone, the warm-start copy outside the compiled graph.
    def _compile(self):
        return torch.compile(plan_step, mode="reduce-overhead", dynamic=False)

    def _compiled(self):
        torch.compiler.cudagraph_mark_step_begin()
        out = self.compiled(self.model, self.cfg, self.iterations, self.obs, self.first,
                            self.prev_mean, self.noise, self.train)
        self.prev_mean.copy_(out[1])
        self.out = out


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv):
    p = new_parser(__doc__)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16, 256],
                   help="environments planned at once (B)")
    p.add_argument("--action-dim", type=int, nargs="+", default=[6], help="A")
    p.add_argument("--obs-dim", type=int, default=24, help="O")
    add_run_args(p, "plan steps", ["eager", "graph", "graph-tf32"])
    p.add_argument("--eval", action="store_true", help="eval mode: no exploration noise")
    p.add_argument("--final-std", type=float, default=Config.final_std,
                   help="init std of the final reward and Q layers (0 = TD-MPC2's zero init)")
    return parse_with_check(p, argv, "single-env ")


def main(argv=None):
    args = parse_args(argv)
    device, cuda = start_run(args, fp32_precision_hint=False)
    cfg = Config(final_std=args.final_std)
    train = not args.eval
    exit_code = 0

    emit, note = reporters(args.json)

    dev_name, device_fields, device_line = device_meta(device, cuda)
    meta = {
        **device_fields,
        "obs_dim": args.obs_dim, "action_dims": args.action_dim, "batches": args.batch,
        "modes": args.modes, "iters": args.iters, "warmup": args.warmup, "train_mode": train,
        "dtype": "float32", "settings": asdict(cfg),
        "q_terminal": "only the 2 randomly chosen Q heads are evaluated (TD-MPC2 evaluates 5, keeps 2)",
        "flop_formula": "2*B*(enc + P*(T*pi + (T-1)*dyn) + I*N*(T*(rew+dyn) + pi + 2*q)), "
                        "MACs of linear-layer weights per row",
    }
    modes = emit_header(emit, note, meta, [
        device_line,
        f"model: TD-MPC2 5M preset, latent {cfg.latent_dim}, mlp {cfg.mlp_dim}, enc {cfg.enc_dim} "
        f"(2 encoder layers), {cfg.num_q} Q heads, {cfg.num_bins} bins over [{cfg.vmin:g}, {cfg.vmax:g}], "
        f"SimNorm {cfg.simnorm_dim}, Mish, LayerNorm eps {cfg.ln_eps:g}, fp32; init trunc-normal 0.02, "
        f"final reward/Q layers trunc-normal {cfg.final_std:g}",
        f"planner: N {cfg.num_samples}, policy trajectories {cfg.num_pi_trajs}, elites {cfg.num_elites}, "
        f"horizon {cfg.horizon}, iterations {cfg.iterations} (+2 if A >= 20), std [{cfg.min_std:g}, "
        f"{cfg.max_std:g}], temperature {cfg.temperature:g}, discount {cfg.discount:g}, "
        f"{'train mode (exploration noise)' if train else 'eval mode'}",
        "terminal value: only the 2 randomly chosen Q heads are evaluated (TD-MPC2 computes all 5, "
        "then picks 2; same results, 2.5x the Q cost)",
        f"obs dim {args.obs_dim}, action dims {args.action_dim}, " + runs_line(args, "steps"),
    ], args, cuda, "step", "incl. action read-back")
    if modes is None:
        return 2

    # correctness: batched step vs TD-MPC2's single-env plan (5 heads) with the same draws
    if not args.no_check:
        for A in args.action_dim:
            t0 = time.perf_counter()
            worst, probs = reference_check(cfg, args.obs_dim, A, device, args.seed)
            ok = not probs
            exit_code |= 0 if ok else 1
            emit({"type": "check", "action_dim": A, "max_abs_diff": worst, "ok": ok, "problems": probs},
                 f"reference check A={A} (float64, B=3, N=64, P=8, E=16, 3 iterations, 2 calls; batched "
                 f"2-head step vs single-env 5-head TD-MPC2 plan, same draws): max |diff| {worst:.2e} "
                 f"-> {'PASS' if ok else 'FAIL: ' + '; '.join(probs)} ({time.perf_counter() - t0:.1f} s)")

    header = (f"{'mode':<12} {'A':>3} {'O':>4} {'B':>4} {'I':>2} {'median ms':>10} {'p90 ms':>9} "
              f"{'host ms':>9} {'env-plans/s':>12} {'GFLOP/step':>11} {'TFLOP/s':>8} {'mem GiB':>8} {'setup s':>8}  check")
    print_table_header(args.json, header)

    models = {}
    for mode, base, tf32 in modes:
        for A in args.action_dim:
            if A not in models:
                models[A] = WorldModel(cfg, args.obs_dim, A, device, torch.float32, args.seed)
            model = models[A]
            iterations = cfg.iters_for(A)
            for B in args.batch:
                flops = plan_flops(cfg, args.obs_dim, A, B, iterations)
                prepare_card(cuda, tf32, device)
                runner = None
                try:
                    with torch.no_grad():
                        t0 = time.perf_counter()
                        runner = Runner(base, model, cfg, iterations, B, device, train)
                        setup_s = time.perf_counter() - t0  # graph capture (incl. its warm-up)
                        sync_problem = check_no_sync(runner, "step") if (cuda and base == "eager") else None
                        dev_ms, host_ms, warmup_s = time_runner(runner, args.iters, args.warmup, cuda, fetch=lambda r: r.out[0].to("cpu"))
                        setup_s += warmup_s  # compile happens in the first warm-up calls
                        probs = invariant_problems(cfg, *[runner.out[k] for k in (0, 1, 2, 4)])
                except Exception as e:  # compile may fail offline, a batch may not fit, ...
                    msg = skip_reason(e)
                    emit({"type": "skip", "mode": mode, "action_dim": A, "batch": B, "reason": msg},
                         f"{mode:<12} {A:>3} {args.obs_dim:>4} {B:>4} {iterations:>2}  skipped: {msg}")
                    if base != "compile":
                        exit_code |= 1
                    del runner
                    release_card(cuda)
                    continue
                if sync_problem:
                    probs.append(sync_problem)
                exit_code |= 1 if probs else 0
                med, p90, host, mem = row_stats(dev_ms, host_ms, cuda, device)
                row = {
                    "type": "result", "mode": mode, "tf32": tf32, "action_dim": A, "obs_dim": args.obs_dim,
                    "batch": B, "iterations": iterations, "median_ms": med, "p90_ms": p90,
                    "host_median_ms": host, "env_plans_per_s": B / (med / 1e3),
                    "gflop_per_step": flops / 1e9, "tflops": flops / (med / 1e3) / 1e12,
                    "peak_mem_gib": mem, "setup_s": setup_s, "ok": not probs, "problems": probs,
                    "device": dev_name, "torch": torch.__version__,
                }
                emit(row, f"{mode:<12} {A:>3} {args.obs_dim:>4} {B:>4} {iterations:>2} {med:>10.3f} {p90:>9.3f} "
                          f"{host:>9.3f} {row['env_plans_per_s']:>12.1f} {flops / 1e9:>11.2f} "
                          f"{row['tflops']:>8.3f} {mem:>8.2f} {setup_s:>8.1f}  {'ok' if not probs else '; '.join(probs)}")
                del runner
                release_card(cuda)
    if not args.json:
        print("GFLOP/step counts 2 x MACs of the linear layers evaluated: 2*B*(enc + P*(T*pi + (T-1)*dyn) "
              "+ I*N*(T*(rew+dyn) + pi + 2*q)); TFLOP/s = GFLOP / median; env-plans/s = B / median.")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
