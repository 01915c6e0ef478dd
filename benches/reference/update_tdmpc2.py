#!/usr/bin/env python3
"""PyTorch reference benchmark of TD-MPC2's world-model update (one gradient step).

Runs beside the Rust/WGSL update (`pompc bench update`, src/train/world.rs) on the same GPU.
The script needs only torch and the standard library (no network, no numpy).

What it builds (docs/algorithm.md b.1-b.3, b.6-b.8, TD-MPC2's 5M preset, fp32):
  * world model: encoder O -> 256 (LN, Mish) -> 512 (LN, SimNorm 8); dynamics [z, a] -> 512 ->
    512 -> 512 (LN, SimNorm); reward [z, a] -> 512 -> 512 -> 101; policy z -> 512 -> 512 -> 2A;
    5 Q heads [z, a] -> 512 -> 512 -> 101 with their parameters stacked [5, out, in], and a
    Polyak target copy of them. Hidden layers are Linear -> (Dropout) -> LayerNorm(eps 1e-5)
    -> Mish. Weights trunc-normal(std 0.02), biases 0, LayerNorm affine 1 / 0, the target Q a
    clone of the online Q, as TD-MPC2 initialises, except that the final reward and Q layers
    (zero in TD-MPC2) get trunc-normal(std --final-std) so that the losses and every gradient
    are non-trivial.
  * the Q ensemble runs as one kernel per layer for all heads: the first layer (shared input
    [z, a]) is a single GEMM against the heads' weights viewed as [heads*512, L+A]; the second
    and third layers are batched matmuls (baddbmm) over the heads; LayerNorm affine per head.
  * one update = TD-MPC2's `_update` (b.6) without the policy update and without the running
    Q scale (neither is part of the world-model step):
      TD targets under no_grad: z'_t = h(s_{t+1}); a' = tanh(mu + eps * sigma) ~ pi(z'_t)
        (stochastic squashed sample, fresh normal eps); of the Polyak target Q only the 2
        randomly chosen heads (argsort of 5 uniforms = randperm(5)[:2], on the device) are
        evaluated (their stacked weights gathered, then the same batched layers; TD-MPC2
        evaluates all 5 and then picks 2: same result; --all-target-heads does that);
        y_t = r_t + 0.99 * min of the two two_hot_inv values;
      latent rollout z_0 = h(s_0), z_{t+1} = d(z_t, a_t); consistency
        (1/T) sum_t rho^t MSE(z_{t+1}, z'_t), rho = 0.5;
      reward loss (1/T) sum_t rho^t mean_b soft_ce(R(z_t, a_t), r_t);
      value loss (1/(T*5)) sum_t rho^t sum_q mean_b soft_ce(Q_q(z_t, a_t), y_t) (rollout
        latents, buffer actions); soft_ce against the two-hot target in symlog space, taken as
        -((1-f) logp[k] + f logp[(k+1) mod 101]) (two gathers, same value as TD-MPC2's scatter);
      total = 20 consistency + 0.1 reward + 0.1 value; backward; clip_grad_norm_(20) over the
        world-model parameters (encoder, dynamics, reward, Q; the policy has no gradient here);
        Adam (lr 3e-4, encoder 0.3 x, eps 1e-8, foreach; capturable=True on CUDA in every mode,
        as TD-MPC2 creates it); Polyak target <- lerp(target, online, 0.01) with
        torch._foreach_lerp_.
  * Dropout: TD-MPC2 applies Dropout(0.01) after the first Q layer in the value predictions
    (not in the TD target). pompc's GPU update does not apply it yet, so the default here is
    --dropout 0.0 (no dropout kernel at all); --dropout 0.01 gives TD-MPC2's behaviour.
  * B = --batch sub-trajectories of horizon T = --horizon (3): obs [T+1, B, O] ~ U(-1, 1),
    actions [T, B, A] ~ U(-1, 1), rewards [T, B] ~ U(0, 1), generated on the device once and
    kept as static buffers (as `pompc bench update` does); the policy noise, the head choice
    and the dropout masks are drawn afresh inside every update (graph-safe torch RNG).
    No host synchronisation inside the update (no .item(), no data-dependent shapes).

Timing modes (any of them with the suffix -tf32, which sets
torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32 before the run or
capture):
  eager        plain PyTorch calls;
  graph        the whole update (forward, backward, clip, Adam step, Polyak) captured once as a
               torch.cuda.CUDAGraph after 3 warm-up updates on a side stream (static inputs;
               torch's CUDA generator is graph-safe, so every replay draws fresh noise);
  graph-tf32   the same with TF32 matmuls;  eager-tf32  eager with TF32 matmuls;
  compile      torch.compile(mode="reduce-overhead") of the update function, as TD-MPC2 does
               (cudagraph_mark_step_begin before each call); skipped if it fails.
CUDA graphs and compile need CUDA; on the CPU those modes are skipped (and said so).
Every (mode, B) row starts from a freshly initialised model and optimiser.

Each row is timed with CUDA events around one update (torch.cuda.synchronize after each),
reporting median and p90 ms, updates/s = 1 / median, GFLOP per update and TFLOP/s. "host ms"
is the host wall clock of one update until the device is idle; "setup s" is model and
optimiser creation, capture / compile and the warm-up updates; "mem GiB" the peak memory
allocated by torch. After timing, the last update's losses, gradient norm and the
parameters are checked to be finite, and on CUDA one eager update runs under torch's sync
debug mode.

Before timing (skip with --no-check), a float64 check runs two consecutive updates of the
batched implementation (the timed code path, with the noise passed in) and of a line-by-line
implementation of b.6 (loops over time steps and Q heads, one plain MLP per head, all 5
target heads evaluated then 2 picked, TD-MPC2's scatter two-hot, F.mse_loss,
torch.optim.Adam(foreach=False), per-tensor lerp) on the same weights (biases, LayerNorm
affines and target heads perturbed so that every index matters), inputs, noise, head choice
and dropout masks. It compares the TD targets, the four losses, every gradient, the gradient
norm, the parameters after Adam and the target heads after Polyak (relative error
max|x - y| / max|y| per tensor, must be <= 1e-9). When scripts/tdmpc2_arch.py (the float64
reference behind the Rust update fixture) imports, the first update's losses and gradients
are also compared with its Model (dropout 0 only).

FLOP count (2 per multiply-add of every linear layer evaluated, weights only; biases,
LayerNorm, activations, softmax, losses, clip, Adam and Polyak not counted), with per-row MACs
  enc = O*256 + 256*512,  dyn = (L+A)*512 + 2*512*512,  rew = q = (L+A)*512 + 512*512 + 512*101,
  pi = 2*512*512 + 512*2A  (L = 512, q = one Q head):
  forward  = enc*(T+1)*B + pi*T*B + 2*q*T*B + (dyn + rew + 5*q)*T*B
             (the TD target counts 2 target heads even when --all-target-heads runs 5)
  backward = 2 * ((dyn + rew + 5*q)*T*B + enc*B)        (dX and dW of the trained passes)
  FLOP/update = 2 * (forward + backward)
  (the same count as pompc's WorldModelTrainer::flops). "run GF" is the same formula with the
  number of target heads actually evaluated (2, or 5 with --all-target-heads).

Examples (the H100, beside `pompc bench update`):
  python3 benches/reference/update_tdmpc2.py --obs-dim 24 --action-dim 6 --batch 256 \
      --modes eager eager-tf32 graph graph-tf32 --iters 50 --warmup 10
  python3 benches/reference/update_tdmpc2.py --obs-dim 223 --action-dim 38 --batch 256 --modes compile
  python3 benches/reference/update_tdmpc2.py --device cpu --batch 8 --iters 2 --warmup 1 --modes eager
"""

import os
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from common import Runner as GraphRunner, parse_with_check, start_run, device_meta, emit_header, runs_line, print_table_header, update_ctx, check_draws, ref_mlp, new_parser, nonfinite_parameters, Errors, layer_tensors, named_tensors, add_update_args, update_rows, reporters, WorldModelConfig, macs_per_row, chosen_heads, rel_err, set_tf32, symexp, symlog, WorldModelBase


# --------------------------------------------------------------------------------------------
# Settings (tdmpc2/config.yaml, model_size 5)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config(WorldModelConfig):
    horizon: int = 3  # T
    rho: float = 0.5
    discount: float = 0.99
    consistency_coef: float = 20.0
    reward_coef: float = 0.1
    value_coef: float = 0.1
    lr: float = 3e-4
    enc_lr_scale: float = 0.3
    grad_clip_norm: float = 20.0
    tau: float = 0.01
    dropout: float = 0.0  # TD-MPC2: 0.01 on the first Q layer; pompc's GPU update: none yet
    final_std: float = 0.1  # init std of the final reward / Q layers (0 in TD-MPC2)

    @property
    def bin_size(self):
        return (self.vmax - self.vmin) / (self.num_bins - 1)


# --------------------------------------------------------------------------------------------
# World model
# --------------------------------------------------------------------------------------------


# TD-MPC2 state-dict prefixes of the networks
PREFIX = {"enc": "_encoder.state", "dyn": "_dynamics", "rew": "_reward", "pi": "_pi",
          "q": "_Qs.params", "q_target": "_target_Qs_params"}


class WorldModel(WorldModelBase):
    def __init__(self, cfg, obs_dim, action_dim, device, dtype, seed):
        super().__init__(cfg, obs_dim, action_dim, device, dtype, seed)
        self.q_target = [l.clone() for l in self.q]  # TD-MPC2: a clone of the online heads
        for layer in self.enc + self.dyn + self.rew + self.q:
            layer.to(device, dtype, True)
        for layer in self.pi + self.q_target:
            layer.to(device, dtype, False)
        self.rho_w = cfg.rho ** torch.arange(cfg.horizon, device=device, dtype=dtype)

    def nets(self):
        return {"enc": self.enc, "dyn": self.dyn, "rew": self.rew, "pi": self.pi,
                "q": self.q, "q_target": self.q_target}

    def enc_params(self):
        return layer_tensors(self.enc)

    def rest_params(self):
        return layer_tensors(self.dyn + self.rew + self.q)

    def trained_params(self):
        """The world-model parameters that the update trains, clips and steps."""
        return self.enc_params() + self.rest_params()

    def q_params(self):
        return layer_tensors(self.q)

    def q_target_params(self):
        return layer_tensors(self.q_target)

    def state_dict(self):
        """{TD-MPC2-style tensor name: tensor} (the tensors themselves, not copies)."""
        return named_tensors(self.nets(), PREFIX)

    def q_heads(self, layers, za, heads=None, drop_mask=None, dropout=0.0):
        """Logits [k, R, bins] of the Q heads of `layers` (online or target) on the shared
        input za [R, L+A]: all heads (heads=None) or the ones in `heads` ([k] long tensor on the
        device; their stacked weights are gathered). Layer 1 is one GEMM for all k heads, the
        others are batched matmuls over the heads. Dropout after layer 1: the given scaled mask
        [R, k, H], or F.dropout with probability `dropout`."""

        def pick(t):
            return t if heads is None else t.index_select(0, heads)

        R = za.shape[0]
        l0 = layers[0]
        w, b = pick(l0.w), pick(l0.b)
        k, H = w.shape[0], w.shape[1]
        x = F.linear(za, w.reshape(k * H, w.shape[2]), b.reshape(k * H)).view(R, k, H)
        if drop_mask is not None:
            x = x * drop_mask
        elif dropout > 0:
            x = F.dropout(x, dropout, training=True)
        x = F.layer_norm(x, (H,), None, None, self.cfg.ln_eps)
        x = F.mish(torch.addcmul(pick(l0.beta), x, pick(l0.g)))  # per-head affine [k, H]
        x = x.transpose(0, 1)  # [k, R, H]
        for l in layers[1:]:
            x = torch.baddbmm(pick(l.b).unsqueeze(1), x, pick(l.w).transpose(1, 2))
            if l.g is not None:
                x = F.layer_norm(x, (l.out_dim,), None, None, self.cfg.ln_eps)
                x = torch.addcmul(pick(l.beta).unsqueeze(1), x, pick(l.g).unsqueeze(1))
            x = self._act(x, l.act)
        return x


# --------------------------------------------------------------------------------------------
# The batched update
# --------------------------------------------------------------------------------------------


def soft_ce(logits, x, cfg):
    """TD-MPC2's soft cross-entropy of logits [..., R, K] against the two-hot encoding of the
    scalar targets x [R] (broadcast over the leading dimensions of logits): [..., R]."""
    logp = F.log_softmax(logits, dim=-1)
    pos = (torch.clamp(symlog(x), cfg.vmin, cfg.vmax) - cfg.vmin) / cfg.bin_size
    k = torch.floor(pos)
    f = pos - k
    k = k.long()
    shape = logits.shape[:-1] + (1,)
    lo = logp.gather(-1, k.unsqueeze(-1).expand(shape)).squeeze(-1)
    hi = logp.gather(-1, ((k + 1) % cfg.num_bins).unsqueeze(-1).expand(shape)).squeeze(-1)
    return -((1 - f) * lo + f * hi)


def draw_noise(model, T, B):
    """The random draws of one update: policy noise of the TD target and the head choice.
    (Dropout, if any, is drawn by F.dropout inside the Q forward.)"""
    eps = torch.randn(T, B, model.action_dim, device=model.device, dtype=model.dtype)
    u = torch.rand(model.cfg.num_q, device=model.device, dtype=model.dtype)
    return eps, u, None


def world_model_losses(model, obs, action, reward, noise, all_target_heads=False):
    """TD-MPC2's b.6 losses. obs [T+1, B, O], action [T, B, A], reward [T, B];
    noise = (pi eps [T, B, A], head uniforms [num_q], dropout mask [T*B, num_q, H] or None).
    Returns (total, stack([consistency, reward, value, total]), td [T, B])."""
    cfg = model.cfg
    T, B, A = action.shape
    L, nq, K = cfg.latent_dim, cfg.num_q, cfg.num_bins
    pi_eps, head_u, drop_mask = noise

    with torch.no_grad():
        next_z = model.encode(obs[1:])  # [T, B, L]
        a_next = model.pi_sample(next_z, pi_eps)
        heads = chosen_heads(head_u)
        x = torch.cat([next_z, a_next], dim=-1).view(T * B, L + A)
        if all_target_heads:  # as TD-MPC2 codes it: all heads, then pick 2
            tq = model.q_heads(model.q_target, x).index_select(0, heads)
        else:
            tq = model.q_heads(model.q_target, x, heads)
        q = model.two_hot_inv(tq)  # [2, T*B]
        td = reward + cfg.discount * torch.minimum(q[0], q[1]).view(T, B)

    z = model.encode(obs[0])
    zs = [z]
    for t in range(T):
        z = model.next(torch.cat([z, action[t]], dim=-1))
        zs.append(z)
    rho_w = model.rho_w[:T]
    consistency = ((torch.stack(zs[1:]) - next_z).square().mean(dim=(1, 2)) * rho_w).sum() / T

    za = torch.cat([torch.stack(zs[:-1]), action], dim=-1).view(T * B, L + A)
    rl = model.reward_logits(za).view(T, B, K)
    ql = model.q_heads(model.q, za, drop_mask=drop_mask, dropout=cfg.dropout).view(nq, T, B, K)
    reward_loss = (soft_ce(rl, reward, cfg).mean(1) * rho_w).sum() / T
    value_loss = (soft_ce(ql, td, cfg).mean(2).sum(0) * rho_w).sum() / (T * nq)
    total = (cfg.consistency_coef * consistency + cfg.reward_coef * reward_loss
             + cfg.value_coef * value_loss)
    return total, torch.stack([consistency, reward_loss, value_loss, total]), td


def make_optimizer(model):
    cfg = model.cfg
    kw = {"capturable": True} if model.device.type == "cuda" else {}
    return torch.optim.Adam([{"params": model.enc_params(), "lr": cfg.lr * cfg.enc_lr_scale},
                             {"params": model.rest_params()}], lr=cfg.lr, **kw)


def polyak(targets, sources, tau):
    if hasattr(torch, "_foreach_lerp_"):
        torch._foreach_lerp_(targets, sources, tau)
    else:
        for t, s in zip(targets, sources):
            t.lerp_(s, tau)


def update_step(model, opt, obs, action, reward, noise=None, all_target_heads=False, probe=None):
    """One world-model update. Returns [consistency, reward, value, total, grad norm] (a device
    tensor). `noise` None draws fresh noise; `probe` (a dict, check only) receives the TD
    targets and the gradients before clipping."""
    cfg = model.cfg
    opt.zero_grad(set_to_none=True)
    if noise is None:
        noise = draw_noise(model, action.shape[0], action.shape[1])
    total, losses, td = world_model_losses(model, obs, action, reward, noise, all_target_heads)
    total.backward()
    params = model.trained_params()
    if probe is not None:
        probe["td"] = td.detach().clone()
        probe["grads"] = [p.grad.detach().clone() for p in params]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip_norm)
    opt.step()
    with torch.no_grad():
        polyak(model.q_target_params(), model.q_params(), cfg.tau)
    return torch.cat([losses.detach(), grad_norm.detach().reshape(1).to(losses.dtype)])


# --------------------------------------------------------------------------------------------
# Line-by-line reference of b.6 (loops over time steps and heads) for the check
# --------------------------------------------------------------------------------------------


def ref_two_hot(x, cfg):
    """TD-MPC2's math.two_hot: [R] -> [R, K] with two scatters."""
    x = torch.clamp(symlog(x), cfg.vmin, cfg.vmax)
    idx = torch.floor((x - cfg.vmin) / cfg.bin_size)
    off = ((x - cfg.vmin) / cfg.bin_size - idx).unsqueeze(-1)
    out = torch.zeros(x.shape[0], cfg.num_bins, dtype=x.dtype, device=x.device)
    idx = idx.long().unsqueeze(1)
    out = out.scatter(1, idx, 1 - off)
    return out.scatter(1, (idx + 1) % cfg.num_bins, off)


def ref_soft_ce(logits, x, cfg):
    return -(ref_two_hot(x, cfg) * F.log_softmax(logits, dim=-1)).sum(-1)


def ref_two_hot_inv(logits, cfg):
    b = torch.linspace(cfg.vmin, cfg.vmax, cfg.num_bins, dtype=logits.dtype, device=logits.device)
    return symexp((F.softmax(logits, dim=-1) * b).sum(-1))


def reference_losses(P, cfg, obs, action, reward, pi_eps, heads, drop_mask):
    """TD-MPC2's _update (b.6) written out step by step and head by head."""
    T, B, A = action.shape
    nq, H = cfg.num_q, cfg.mlp_dim
    enc = lambda x: ref_mlp(P, "_encoder.state", 2, x, "simnorm", cfg)  # noqa: E731
    dyn = lambda z, a: ref_mlp(P, "_dynamics", 3, torch.cat([z, a], -1), "simnorm", cfg)  # noqa: E731
    with torch.no_grad():
        next_z, td = [], []
        for t in range(T):
            zn = enc(obs[t + 1])
            mu, raw = ref_mlp(P, "_pi", 3, zn, None, cfg).chunk(2, dim=-1)
            log_std = cfg.log_std_min + 0.5 * (cfg.log_std_max - cfg.log_std_min) * (torch.tanh(raw) + 1)
            a = torch.tanh(mu + pi_eps[t] * log_std.exp())
            qs = [ref_two_hot_inv(ref_mlp(P, "_target_Qs_params", 3, torch.cat([zn, a], -1), None, cfg,
                                          head=h), cfg) for h in range(nq)]  # all heads, then 2
            td.append(reward[t] + cfg.discount * torch.min(qs[heads[0]], qs[heads[1]]))
            next_z.append(zn)
    z = enc(obs[0])
    zs = [z]
    consistency = 0
    for t in range(T):
        z = dyn(z, action[t])
        consistency = consistency + F.mse_loss(z, next_z[t]) * cfg.rho ** t
        zs.append(z)
    reward_loss, value_loss = 0, 0
    for t in range(T):
        za = torch.cat([zs[t], action[t]], -1)
        rl = ref_mlp(P, "_reward", 3, za, None, cfg)
        reward_loss = reward_loss + ref_soft_ce(rl, reward[t], cfg).mean() * cfg.rho ** t
        for h in range(nq):
            drop = None if drop_mask is None else drop_mask.view(T, B, nq, H)[t, :, h]
            ql = ref_mlp(P, "_Qs.params", 3, za, None, cfg, head=h, drop=drop)
            value_loss = value_loss + ref_soft_ce(ql, td[t], cfg).mean() * cfg.rho ** t
    consistency = consistency / T
    reward_loss = reward_loss / T
    value_loss = value_loss / (T * nq)
    total = cfg.consistency_coef * consistency + cfg.reward_coef * reward_loss + cfg.value_coef * value_loss
    return total, torch.stack([consistency, reward_loss, value_loss, total]).detach(), torch.stack(td)


def trained_name(n):
    return not (n.startswith("_pi.") or n.startswith("_target_Qs_params."))


def tdmpc2_arch_losses(P, cfg, obs_dim, action_dim, obs, action, reward, pi_eps, heads):
    """First update's losses, TD targets and gradients from scripts/tdmpc2_arch.py's Model (the
    float64 reference of the Rust update fixture), following make_fixtures.build_update.
    Returns None if that module does not import."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.normpath(os.path.join(here, "..", "..", "scripts")))
    try:
        import tdmpc2_arch as ta
    except Exception:
        return None
    finally:
        sys.path.pop(0)
    acfg = ta.Config(obs_dim=obs_dim, action_dim=action_dim, latent_dim=cfg.latent_dim,
                     mlp_dim=cfg.mlp_dim, enc_dim=cfg.enc_dim, num_enc_layers=2, num_q=cfg.num_q,
                     num_bins=cfg.num_bins, vmin=cfg.vmin, vmax=cfg.vmax, simnorm_dim=cfg.simnorm_dim,
                     log_std_min=cfg.log_std_min, log_std_max=cfg.log_std_max)
    m = ta.Model(acfg, with_target=True).to(device=obs.device, dtype=obs.dtype)
    state = {k: v.detach().clone() for k, v in P.items()}
    state["log_std_min"] = torch.tensor(cfg.log_std_min, dtype=obs.dtype, device=obs.device)
    state["log_std_dif"] = torch.tensor(cfg.log_std_max - cfg.log_std_min, dtype=obs.dtype, device=obs.device)
    m.load_state_dict(state, strict=True)
    T, B, A = action.shape
    L = cfg.latent_dim
    with torch.no_grad():
        next_z = m.encode(obs[1:])
        a_next = m.pi(next_z.reshape(T * B, L), pi_eps.reshape(T * B, A))["action"]
        tq = m.q_logits(next_z.reshape(T * B, L), a_next, target=True)
        q_min = torch.minimum(ta.two_hot_inv(tq[heads[0]], acfg), ta.two_hot_inv(tq[heads[1]], acfg))
        td = reward + cfg.discount * q_min.reshape(T, B)
    z = m.encode(obs[0])
    zs = [z]
    consistency = 0
    for t in range(T):
        z = m.next(z, action[t])
        consistency = consistency + F.mse_loss(z, next_z[t]) * cfg.rho ** t
        zs.append(z)
    _zs = torch.stack(zs[:-1])
    rl = m.reward_logits(_zs.reshape(T * B, L), action.reshape(T * B, A)).reshape(T, B, -1)
    ql = m.q_logits(_zs.reshape(T * B, L), action.reshape(T * B, A)).reshape(cfg.num_q, T, B, -1)
    sce = lambda lg, x: -(ta.two_hot(x, acfg) * F.log_softmax(lg, dim=-1)).sum(-1)  # noqa: E731
    reward_loss, value_loss = 0, 0
    for t in range(T):
        reward_loss = reward_loss + sce(rl[t], reward[t]).mean() * cfg.rho ** t
        for h in range(cfg.num_q):
            value_loss = value_loss + sce(ql[h, t], td[t]).mean() * cfg.rho ** t
    consistency, reward_loss = consistency / T, reward_loss / T
    value_loss = value_loss / (T * cfg.num_q)
    total = cfg.consistency_coef * consistency + cfg.reward_coef * reward_loss + cfg.value_coef * value_loss
    total.backward()
    grads = {n: p.grad.detach().clone() for n, p in m.named_parameters() if trained_name(n)}
    return torch.stack([consistency, reward_loss, value_loss, total]).detach(), td, grads



def perturb(model, rnd):
    """Perturb what is 0 or 1 at initialisation (biases, LayerNorm gains and shifts) and the
    target Q heads, in one fixed order of draws from `rnd`, so that every term of the check
    is exercised."""
    with torch.no_grad():
        for l in model.enc + model.dyn + model.rew + model.pi + model.q:
            l.b.add_(0.05 * rnd(*l.b.shape))
            if l.g is not None:
                l.g.add_(0.1 * rnd(*l.g.shape))
                l.beta.add_(0.05 * rnd(*l.beta.shape))
        for l in model.q_target:
            for t in l.tensors():
                t.add_(0.02 * rnd(*t.shape))

def reference_check(cfg, obs_dim, action_dim, device, seed, batch=6, steps=2, all_target_heads=False,
                    tol=1e-9):
    """Batched update (update_step, noise passed in) vs the line-by-line reference in float64
    on the 5M preset with a small batch, `steps` consecutive updates. Returns (worst relative
    error, problems, summary dict)."""
    dt = torch.float64
    T = cfg.horizon
    model = WorldModel(cfg, obs_dim, action_dim, device, dt, seed)
    rnd = check_draws(seed + 1, dt, device)  # check data on the CPU, then moved

    perturb(model, rnd)
    P = {k: v.detach().clone().requires_grad_(trained_name(k)) for k, v in model.state_dict().items()}
    names = [k for k in P if trained_name(k)]
    sd = model.state_dict()
    assert len(names) == len(model.trained_params()) and all(
        sd[n] is t for n, t in zip(names, model.trained_params())), "parameter order"
    enc_names = [n for n in names if n.startswith("_encoder.")]
    ref_opt = torch.optim.Adam([{"params": [P[n] for n in enc_names], "lr": cfg.lr * cfg.enc_lr_scale},
                                {"params": [P[n] for n in names if n not in enc_names]}],
                               lr=cfg.lr, foreach=False)
    opt = make_optimizer(model)

    obs = rnd(T + 1, batch, obs_dim)
    action = rnd(T, batch, action_dim, lo=-1.0, hi=1.0)
    reward = rnd(T, batch, lo=-2.0, hi=3.0)  # wider than U(0, 1): symlog of negative values too

    cmp, summary = Errors(tol), {}
    problems = cmp.problems

    for step in range(steps):
        pi_eps = rnd(T, batch, action_dim)
        head_u = rnd(cfg.num_q, lo=0.0, hi=1.0)
        heads = chosen_heads(head_u).tolist()
        drop = None
        if cfg.dropout > 0:
            keep = rnd(T * batch, cfg.num_q, cfg.mlp_dim, lo=0.0, hi=1.0) >= cfg.dropout
            drop = keep.to(dt) / (1 - cfg.dropout)
        probe = {}
        out = update_step(model, opt, obs, action, reward, (pi_eps, head_u, drop), all_target_heads, probe)

        # line-by-line reference, then its clip, Adam and Polyak
        ref_opt.zero_grad(set_to_none=True)
        total, ref_losses, ref_td = reference_losses(P, cfg, obs, action, reward, pi_eps, heads, drop)
        total.backward()
        ref_grads = [P[n].grad.detach().clone() for n in names]
        ref_norm = torch.nn.utils.clip_grad_norm_([P[n] for n in names], cfg.grad_clip_norm, foreach=False)
        ref_opt.step()
        with torch.no_grad():
            for n in P:
                if n.startswith("_target_Qs_params."):
                    P[n].lerp_(P["_Qs.params." + n[len("_target_Qs_params."):]], cfg.tau)

        cmp(f"update {step}: td targets", probe["td"], ref_td)
        for i, what in enumerate(("consistency", "reward", "value", "total")):
            cmp(f"update {step}: {what} loss", out[i], ref_losses[i])
        for n, g, rg in zip(names, probe["grads"], ref_grads):
            cmp(f"update {step}: grad {n}", g, rg)
        cmp(f"update {step}: grad norm", out[4], ref_norm)
        for n, v in model.state_dict().items():
            cmp(f"update {step}: {n} after the update", v.detach(), P[n].detach())
        summary[f"update {step}"] = {
            "losses": [float(v) for v in out[:4]], "grad_norm": float(out[4]), "heads": heads,
            "min_abs_grad_tensor": min(float(g.abs().max()) for g in ref_grads),
        }
        if not min(float(g.abs().max()) for g in ref_grads) > 0:
            problems.append(f"update {step}: a parameter has an all-zero gradient")
    return cmp.worst, problems, summary


def check_against_tdmpc2_arch(cfg, obs_dim, action_dim, device, seed, batch=6, tol=1e-9):
    """One update's losses, TD targets and gradients: the batched implementation vs
    scripts/tdmpc2_arch.py's Model. Returns (worst, problems) or None if it does not import."""
    dt = torch.float64
    T = cfg.horizon
    model = WorldModel(cfg, obs_dim, action_dim, device, dt, seed)
    gen = torch.Generator().manual_seed(seed + 2)
    rnd = lambda *s: torch.randn(*s, generator=gen, dtype=dt).to(device)  # noqa: E731
    perturb(model, rnd)
    P = {k: v.detach().clone() for k, v in model.state_dict().items()}
    obs = rnd(T + 1, batch, obs_dim)
    action = torch.tanh(rnd(T, batch, action_dim))
    reward = rnd(T, batch)
    pi_eps = rnd(T, batch, action_dim)
    head_u = torch.rand(cfg.num_q, generator=gen, dtype=dt).to(device)
    heads = chosen_heads(head_u).tolist()
    ref = tdmpc2_arch_losses(P, cfg, obs_dim, action_dim, obs, action, reward, pi_eps, heads)
    if ref is None:
        return None
    ref_losses, ref_td, ref_grads = ref
    probe = {}
    opt = make_optimizer(model)
    out = update_step(model, opt, obs, action, reward, (pi_eps, head_u, None), False, probe)
    worst, problems = 0.0, []
    pairs = [("td targets", probe["td"], ref_td)]
    pairs += [(f"{w} loss", out[i], ref_losses[i]) for i, w in enumerate(("consistency", "reward", "value", "total"))]
    names = [k for k in model.state_dict() if trained_name(k)]
    pairs += [(f"grad {n}", g, ref_grads[n]) for n, g in zip(names, probe["grads"])]
    for what, x, y in pairs:
        e = rel_err(x, y)
        worst = max(worst, e)
        if not e <= tol:
            problems.append(f"tdmpc2_arch: {what}: relative error {e:.3g}")
    return worst, problems


# --------------------------------------------------------------------------------------------
# FLOPs
# --------------------------------------------------------------------------------------------


def update_flops(cfg, obs_dim, action_dim, batch, target_heads=2):
    """2 * (forward + backward) MACs of the linear layers; target_heads = 2 is the count of
    record, 5 what --all-target-heads runs."""
    m = macs_per_row(cfg, obs_dim, action_dim)
    T, B = cfg.horizon, batch
    trained = (m["dyn"] + m["rew"] + cfg.num_q * m["q"]) * T * B
    forward = m["enc"] * (T + 1) * B + m["pi"] * T * B + target_heads * m["q"] * T * B + trained
    backward = 2 * (trained + m["enc"] * B)
    return 2 * (forward + backward)


# --------------------------------------------------------------------------------------------
# Runners and timing
# --------------------------------------------------------------------------------------------


class Runner(GraphRunner):
    """A fresh model and optimiser with static input buffers for one (mode, B); step() runs one
    update whose output [consistency, reward, value, total, grad norm] is in self.out."""

    def __init__(self, base_mode, cfg, obs_dim, action_dim, batch, device, seed, all_target_heads):
        self.model = WorldModel(cfg, obs_dim, action_dim, device, torch.float32, seed)
        self.opt = make_optimizer(self.model)
        self.all_target_heads = all_target_heads
        T = cfg.horizon
        self.obs = torch.rand(T + 1, batch, obs_dim, device=device) * 2 - 1
        self.action = torch.rand(T, batch, action_dim, device=device) * 2 - 1
        self.reward = torch.rand(T, batch, device=device)
        self._start(base_mode)

    def _body(self):
        return update_step(self.model, self.opt, self.obs, self.action, self.reward,
                           all_target_heads=self.all_target_heads)

    def _before_capture(self):
        self.opt.zero_grad(set_to_none=True)


def invariant_problems(runner):
    """Host-side checks after timing: finite losses, gradient norm and parameters."""
    probs = []
    out = runner.out.detach().float().cpu()
    if not bool(torch.isfinite(out).all()):
        probs.append(f"non-finite losses / grad norm {out.tolist()}")
    elif not float(out[3]) > 0:
        probs.append(f"total loss {float(out[3])} is not positive")
    probs += nonfinite_parameters(runner.model)
    return probs


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv):
    p = new_parser(__doc__)
    p.add_argument("--obs-dim", type=int, default=24, help="O")
    add_update_args(p, Config(), "dropout after the first Q layer in the value predictions (TD-MPC2: "
                                 "0.01; default 0 as pompc's GPU update)", "the final reward and Q layers")
    p.add_argument("--all-target-heads", action="store_true",
                   help="evaluate all 5 target Q heads, then pick 2 (as TD-MPC2 codes it)")
    return parse_with_check(p, argv, "line-by-line ")


def main(argv=None):
    args = parse_args(argv)
    device, cuda = start_run(args)
    cfg = Config(horizon=args.horizon, dropout=args.dropout, final_std=args.final_std)
    O, A = args.obs_dim, args.action_dim
    exit_code = 0
    target_heads = cfg.num_q if args.all_target_heads else 2

    emit, note = reporters(args.json)

    dev_name, device_fields, device_line = device_meta(device, cuda)
    m = macs_per_row(cfg, O, A)
    meta = {
        **device_fields,
        "obs_dim": O, "action_dim": A, "batches": args.batch, "horizon": cfg.horizon,
        "modes": args.modes, "iters": args.iters, "warmup": args.warmup, "dtype": "float32",
        "settings": asdict(cfg), "target_heads_evaluated": target_heads,
        "adam_capturable": cuda, "macs_per_row": m,
        "flop_formula": "2*(fwd + bwd), fwd = enc*(T+1)*B + pi*T*B + 2*q*T*B + (dyn+rew+5q)*T*B, "
                        "bwd = 2*((dyn+rew+5q)*T*B + enc*B); MACs of linear-layer weights per row",
    }
    modes = emit_header(emit, note, meta, [
        device_line,
        f"model: TD-MPC2 5M preset, latent {cfg.latent_dim}, mlp {cfg.mlp_dim}, enc {cfg.enc_dim} "
        f"(2 encoder layers), {cfg.num_q} Q heads (stacked, batched), {cfg.num_bins} bins over "
        f"[{cfg.vmin:g}, {cfg.vmax:g}], SimNorm {cfg.simnorm_dim}, Mish, LayerNorm eps {cfg.ln_eps:g}, fp32; "
        f"init trunc-normal 0.02, final reward/Q layers trunc-normal {cfg.final_std:g}",
        f"update: horizon {cfg.horizon}, rho {cfg.rho:g}, discount {cfg.discount:g}, coefs "
        f"{cfg.consistency_coef:g}/{cfg.reward_coef:g}/{cfg.value_coef:g}, clip {cfg.grad_clip_norm:g}, Adam lr "
        f"{cfg.lr:g} (encoder x{cfg.enc_lr_scale:g}{', capturable' if cuda else ''}), Polyak tau {cfg.tau:g}, "
        f"Q dropout {cfg.dropout:g}{' (TD-MPC2: 0.01)' if cfg.dropout == 0 else ''}; no policy update",
        f"TD target: {target_heads} target Q heads evaluated"
        + (" (all, then 2 picked, as TD-MPC2)" if args.all_target_heads else
           " (the 2 randomly chosen; TD-MPC2 evaluates 5 and picks 2: same result)"),
        f"obs dim {O}, action dim {A}, " + runs_line(args, "updates"),
    ], args, cuda, "update", "until the device is idle")
    if modes is None:
        return 2

    # correctness: batched update vs the line-by-line b.6, float64, same weights / data / noise
    if not args.no_check:
        t0 = time.perf_counter()
        if cuda:
            set_tf32(False)
        worst, probs, summary = reference_check(cfg, O, A, device, args.seed, batch=args.check_batch,
                                                all_target_heads=args.all_target_heads)
        arch = check_against_tdmpc2_arch(cfg, O, A, device, args.seed, batch=args.check_batch) \
            if cfg.dropout == 0 else None
        arch_msg = ("scripts/tdmpc2_arch.py not compared (" + ("it has no dropout" if cfg.dropout > 0
                                                             else "not importable") + ")")
        if arch is not None:
            probs += arch[1]
            arch_msg = f"vs scripts/tdmpc2_arch.Model (1 update, losses/td/grads): max rel err {arch[0]:.2e}"
        ok = not probs
        exit_code |= 0 if ok else 1
        s0 = summary["update 0"]
        emit({"type": "check", "max_rel_err": worst, "tdmpc2_arch_max_rel_err": None if arch is None else arch[0],
              "ok": ok, "problems": probs, "summary": summary},
             f"reference check (float64, B={args.check_batch}, T={cfg.horizon}, 5M preset, 2 updates; batched "
             f"update vs line-by-line b.6 with per-head loops, same weights/data/noise/heads"
             f"{'/dropout masks' if cfg.dropout > 0 else ''}; td, losses, every grad, grad norm, params after "
             f"Adam, targets after Polyak): max rel err {worst:.2e}; {arch_msg} -> "
             f"{'PASS' if ok else 'FAIL: ' + '; '.join(probs[:8])} ({time.perf_counter() - t0:.1f} s)\n"
             f"  update 0: losses cons/rew/val/total "
             f"{', '.join(f'{v:.5g}' for v in s0['losses'])}, grad norm {s0['grad_norm']:.4g}, heads {s0['heads']}")

    header = (f"{'mode':<12} {'O':>4} {'A':>3} {'B':>4} {'median ms':>10} {'p90 ms':>9} {'host ms':>9} "
              f"{'updates/s':>10} {'GFLOP/upd':>10} {'run GF':>7} {'TFLOP/s':>8} {'mem GiB':>8} {'setup s':>8}  check")
    print_table_header(args.json, header)

    ctx = update_ctx(args, cuda, device, dev_name, invariant_problems)
    losses = ("consistency", "reward", "value", "total", "grad_norm")
    exit_code |= update_rows(
        emit, modes, args.batch,
        keys=lambda B: ({"obs_dim": O, "action_dim": A, "batch": B}, f"{O:>4} {A:>3} {B:>4}"),
        make_runner=lambda base, B: Runner(base, cfg, O, A, B, device, args.seed, args.all_target_heads),
        flops_of=lambda B: (update_flops(cfg, O, A, B, 2), update_flops(cfg, O, A, B, target_heads)),
        extra=lambda runner: {
            "horizon": cfg.horizon, "dropout": cfg.dropout, "target_heads_evaluated": target_heads,
            "last_losses": dict(zip(losses, runner.out.detach().float().cpu().tolist())),
        },
        ctx=ctx, gf_digits=2)
    if not args.json:
        print("GFLOP/upd = 2*(fwd + bwd) of the linear layers: fwd = enc*(T+1)*B + pi*T*B + 2*q*T*B + "
              "(dyn+rew+5q)*T*B, bwd = 2*((dyn+rew+5q)*T*B + enc*B) (MACs per row); run GF counts the "
              "target heads evaluated; TFLOP/s = GFLOP/upd / median; updates/s = 1 / median.")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
