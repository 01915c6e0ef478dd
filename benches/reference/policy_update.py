#!/usr/bin/env python3
"""PyTorch reference benchmark of the PO-MPC family's policy update (one gradient step).

Runs beside pompc's GPU policy update (the PO-MPC family: TD-MPC2, BMPC, TD-M(PC)^2 and PO-MPC
are members, docs/algorithm.md a.3, a.4, b.6, c.1, c.2, d.3) on the same GPU. The script
needs only torch and the standard library (no network, no numpy). It is the policy-side
sibling of update_tdmpc2.py (the world-model update) and shares its conventions: CLI, timing
with CUDA events, CUDA-graph capture on a side stream with capturable Adam, TF32 switch,
compile mode, table or --json output, and a float64 self-check.

Inputs (static device buffers, drawn once per configuration, as a benchmark of the update
alone; the observation dimension does not enter):
  * zs [T+1, B, L]: the detached rollout latents z_0..z_T, SimNorm (groups of 8) of N(0, 1)
    logits, so that they lie on 64 simplices like TD-MPC2 latents;
  * the stored planner Gaussian b = (mu_b, sigma_b) [T, B, A] of steps 0..T-1 (BMPC layout),
    mu_b ~ U(-1, 1), sigma_b ~ U(0.05, 2) (MPPI's std range).
Networks (TD-MPC2's 5M preset, fp32): policy z -> 512 -> 512 -> 2A and, for --preset pompc,
the adaptive prior pi_psi of the same shape (hidden layers Linear -> LayerNorm(eps 1e-5) ->
Mish; weights trunc-normal(std 0.02), biases 0, LayerNorm affine 1 / 0, as TD-MPC2 initialises);
5 Q heads [z, a] -> 512 -> 512 -> 101 with stacked parameters [5, out, in], frozen (TD-MPC2's
detached copy: no parameter gradient); their final layer gets trunc-normal(std --final-std)
instead of TD-MPC2's zeros so that Q and its action gradient are non-trivial. Of the 5 heads
only the 2 randomly chosen ones are evaluated (argsort of 5 uniforms = randperm(5)[:2] on the
device; stacked weights gathered; layer 1 one GEMM for both heads, layers 2-3 baddbmm);
TD-MPC2 evaluates all 5 then picks 2 (same result; --all-heads does that). Optional Dropout
after the first Q layer (--dropout; TD-MPC2 keeps the detached Q in train mode, so 0.01 is
active there; the default 0 matches pompc's GPU update, which has no dropout kernel).

Policy head (b.3, c.1): raw output [m | s], log_std = lo + (hi - lo)(tanh(s) + 1)/2,
sigma = exp(log_std), eps ~ N(0, I) drawn afresh in every update (reparameterised):
  squashed (TD-MPC2, log-std [-10, 2]): x = m + sigma eps, a = tanh(x);
  tanh_mean_clamp (BMPC, log-std [-3, 1]): mu = tanh(m), a = clamp(mu + sigma eps, -1, 1).
  lp = sum_i(-eps_i^2/2 - log_std_i) - A * 0.9189385175704956 (TD-MPC2's constant);
  logp = lp - sum_i log(relu(1 - a_i^2) + 1e-6) (squashed) or lp (BMPC);
  scaled entropy H = -logp * (A lp / (logp + 1e-8)) (TD-MPC2's current code, differentiated
  through all of it), or with --entropy original -log pi = -(A (sum_i(-eps_i^2/2 - log_std_i)
  - log(2 pi)/2) - squash correction) (TD-MPC2 of Oct 2023, TD-M(PC)^2's code).
RunningScale S (TD-MPC2's scale.py): sort the batch, linear interpolation of the 5th and 95th
percentiles (positions computed in float32 as TD-MPC2 does), S <- lerp(S, max(P95 - P5, 1),
0.01); S_Q, S_KL, S_D are separate instances, each updated with its quantity at t = 0 before it
divides. rho^t weights with rho = 0.5 and the mean over t (TD-MPC2: (x.mean(b) * rho).mean()).
alpha = 1e-4. Every update ends with clip_grad_norm_(20) over the trained network and Adam
(lr 3e-4, eps 1e-5, foreach; capturable=True on CUDA in every mode, as TD-MPC2 creates it).

One update per --preset (T = 3; T' = number of latent states used):
  tdmpc2        TD-MPC2's update_pi, z_0..z_3 (T' = 4): Q = average of 2 random heads
                (two_hot_inv, gradient only through a), S_Q.update(Q_0), loss = mean_t rho^t
                mean_b(-(alpha H + Q / S_Q)). Heads: squashed.
  bmpc          BMPC's update_pi, z_0..z_2: KL_t = mean over dims of the closed-form
                KL(N(tanh m, sigma) || N(mu_b, sigma_b)), S_KL.update(KL_0), loss = mean_t rho^t
                mean_b(KL / S_KL - alpha H) with BMPC's H (lp for logp); no Q term, no Q forward.
  tdmpc-square  TD-M(PC)^2 (actor_mode residual), z_0..z_2: TD-MPC2's Q and entropy terms plus
                (A/61) * (-mean_t rho^t mean_b g ell / S_Q), ell = A (sum_i(-((a_i - mu_b,i)/
                sigma'_i)^2/2 - log sigma'_i) - log(2 pi)/2), sigma' = max(sigma_b, 0.05), the
                gate g = 1 if S_Q > 2 else 0 evaluated on the device (no host sync, so the same
                kernels run either way). S_Q starts at --s-q-init (default 5 for this preset,
                so the gate is on during the benchmark: 5 decays toward 1 by 1% per update).
  pompc         PO-MPC (a.3, a.7; default lambda 1), z_0..z_2: first the adaptive prior fit
                L_psi = mean_t rho^t mean_b D_fit / S_D, D_fit = mean over dims of the reverse
                closed-form KL(pi_psi's pre-squash Gaussian || b), S_D.update(D_fit at t = 0),
                clip 20 and Adam on pi_psi; then the policy loss mean_t rho^t mean_b(-Q / S_Q
                - alpha H + lambda D / S_KL) with D = log pi_theta(a) - log pi_psi(a) the
                single-sample estimate of the squashed densities at the policy's sample
                (pi_psi's output from its forward BEFORE its Adam step, no gradient; its
                pre-squash point atanh(a) is taken as x clamped to +-atanh(1 - 1e-6), as
                pompc's kernel does; the squash corrections and 2 pi constants cancel),
                S_KL.update(D at t = 0).
The update's output (device tensor, no host sync inside the update): [Q term, entropy term,
KL term, LL term, total, pi grad norm, prior-fit loss, prior grad norm, S_Q, S_KL, S_D], the
terms being the weighted means that sum to the total (absent terms and pieces are 0).

Timing modes (any of them with the suffix -tf32, which sets
torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32 before the run or
capture):
  eager        plain PyTorch calls;
  graph        the whole update (prior fit, policy forward, Q forward, backward, clips, Adam
               steps, running scales) captured once as a torch.cuda.CUDAGraph after 3 warm-up
               updates on a side stream (static inputs; torch's CUDA generator is graph-safe,
               so every replay draws fresh noise and a fresh head choice);
  graph-tf32   the same with TF32 matmuls;  eager-tf32  eager with TF32 matmuls;
  compile      torch.compile(mode="reduce-overhead") of the update function, as TD-MPC2 does
               (cudagraph_mark_step_begin before each call); skipped with a message if it fails.
CUDA graphs and compile need CUDA; on the CPU those modes are skipped (and said so).
Every (mode, B) row starts from freshly initialised networks, optimisers and scales.
Each row is timed with CUDA events around one update (torch.cuda.synchronize after each),
reporting median and p90 ms, updates/s = 1 / median, GFLOP per update and TFLOP/s; "host ms"
is the host wall clock of one update until the device is idle, "setup s" network and
optimiser creation, capture / compile and the warm-up updates, "mem GiB" torch's peak
allocated memory. After timing, the last output and the parameters are checked to be finite,
and on CUDA one eager update runs under torch's sync debug mode.

FLOP count (2 per multiply-add of every linear layer evaluated, weights only; biases,
LayerNorm, activations, softmax, losses, scales, clips and Adam not counted), per-row MACs
  pi = L*H + H*H + H*2A,  q = (L+A)*H + H*H + H*K   (L = H = 512, K = 101; one Q head),
rows R = T'*B (T' = 4 for tdmpc2, 3 otherwise):
  policy   forward pi*R + backward (dX and dW) 2*pi*R                      = 3*pi*R
  Q        forward 2*q*R (2 heads) + backward to the action only (the dX GEMMs of the Q
           layers; frozen parameters, no dW) 2*q*R                         = 4*q*R  (not bmpc)
  prior    forward pi*R + backward 2*pi*R (pompc only; its output is reused for D) = 3*pi*R
  FLOP/update = 2 * (3*pi*R + [4*q*R] + [3*pi*R])
  (backward = 2 x forward as in update_tdmpc2.py's count, though the first layer's dX of the
  policy and prior is not needed since zs is detached). "run GF" counts the heads actually
  evaluated (5 with --all-heads: 10*q*R instead of 4*q*R). At B = 256:
  A = 6:  tdmpc2 8.00, bmpc 2.44, tdmpc-square 6.00, pompc 8.45 GFLOP;
  A = 38: tdmpc2 8.34, bmpc 2.60, tdmpc-square 6.25, pompc 8.85 GFLOP.

Before timing (skip with --no-check; --check-all checks all four presets), a float64 check
runs two consecutive updates of the batched implementation (the timed code path, with the
noise passed in) and of a straightforward per-preset reference written after the original
code (TD-MPC2's world_model.pi, math.gaussian_logprob / squash, Q(return_type='avg') with all
5 heads evaluated one plain MLP at a time and 2 picked, RunningScale class with float32
percentiles, update_pi; BMPC's pi and torch.distributions' Normal KL; TD-M(PC)^2's residual
loss with its Python-side gate; PO-MPC's prior fit and loss with torch.distributions' Normal
log_prob at atanh(a) and the squash corrections written out; torch.optim.Adam(foreach=False),
clip_grad_norm_(foreach=False)) on the same weights (biases and LayerNorm affines perturbed so
that every index matters), inputs (sigma_b from 0.01 so that TD-M(PC)^2's 0.05 floor
matters), noise, head choice and dropout masks. It compares every loss term, the total, the
policy (and prior) gradients before clipping, the gradient norms, the parameters after Adam
and the running scales (relative error max|x - y| / max|y| per tensor, must be <= 1e-9).

Examples (the H100, beside pompc's policy-update benchmark):
  python3 benches/reference/policy_update.py --preset pompc --lambda 1 --action-dim 6 --batch 256 \\
      --modes eager eager-tf32 graph graph-tf32 compile --iters 50 --warmup 10
  python3 benches/reference/policy_update.py --preset tdmpc2 --action-dim 38 --batch 256 --modes graph
  python3 benches/reference/policy_update.py --device cpu --batch 8 --iters 2 --warmup 1 --modes eager --preset bmpc
"""

import math
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from common import Runner as GraphRunner, parse_with_check, start_run, device_meta, emit_header, runs_line, print_table_header, update_ctx, check_draws, ref_mlp, new_parser, nonfinite_parameters, Errors, layer_tensors, named_tensors, add_update_args, update_rows, reporters, ModelConfig, chosen_heads, new_layer, set_tf32, simnorm, symexp


# --------------------------------------------------------------------------------------------
# Settings (tdmpc2/config.yaml model_size 5; BMPC, TD-M(PC)^2 configs; PO-MPC a.7)
# --------------------------------------------------------------------------------------------

HALF_LOG_2PI_TDMPC2 = 0.9189385175704956  # TD-MPC2's math.gaussian_logprob constant
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)  # TD-M(PC)^2's (and torch.distributions')


@dataclass(frozen=True)
class Config(ModelConfig):
    horizon: int = 3  # T
    rho: float = 0.5
    lr: float = 3e-4
    adam_eps: float = 1e-5  # pi_optim (and the prior's optimiser)
    grad_clip_norm: float = 20.0
    scale_tau: float = 0.01
    entropy_coef: float = 1e-4  # alpha
    entropy: str = "scaled"  # "scaled" (TD-MPC2 now, BMPC) or "original" (Oct 2023, TD-M(PC)^2)
    lam: float = 1.0  # PO-MPC lambda
    s_q_init: float = 1.0  # initial S_Q (tdmpc-square: 5 by default so the gate is on)
    min_std: float = 0.05  # TD-M(PC)^2's floor on the planner std in ell
    scale_threshold: float = 2.0  # TD-M(PC)^2's gate S_Q > 2
    prior_coef: float = 1.0  # TD-M(PC)^2's prior_coef
    prior_coef_dim: int = 61  # ... times A / 61
    squash_clip: float = 1e-6  # PO-MPC D: atanh(a) taken with |a| <= 1 - squash_clip
    dropout: float = 0.0  # TD-MPC2: 0.01 on the first Q layer; pompc's GPU update: none
    final_std: float = 0.1  # init std of the final Q layer (0 in TD-MPC2)

    @property
    def u_max(self):
        """atanh(1 - squash_clip)."""
        c = self.squash_clip
        return 0.5 * math.log((2.0 - c) / c)


@dataclass(frozen=True)
class Preset:
    name: str
    param: str  # "squashed" (TD-MPC2) or "tanh_mean_clamp" (BMPC)
    log_std_min: float
    log_std_max: float
    all_states: bool  # z_0..z_T (TD-MPC2, T' = T+1) or z_0..z_{T-1} (T' = T)
    q: bool  # Q term (and the Q forward / action backward)
    kl: bool  # KL term: BMPC's closed form to b, or PO-MPC's single sample to pi_psi
    ll: bool  # TD-M(PC)^2's gated planner log-likelihood
    prior: bool  # PO-MPC's adaptive prior network and its fit


PRESETS = {
    "tdmpc2": Preset("tdmpc2", "squashed", -10.0, 2.0, True, True, False, False, False),
    "bmpc": Preset("bmpc", "tanh_mean_clamp", -3.0, 1.0, False, False, True, False, False),
    "tdmpc-square": Preset("tdmpc-square", "squashed", -10.0, 2.0, False, True, False, True, False),
    "pompc": Preset("pompc", "squashed", -10.0, 2.0, False, True, True, False, True),
}

TERMS = ("q", "entropy", "kl", "ll")
OUT_NAMES = ("q_term", "entropy_term", "kl_term", "ll_term", "total", "pi_grad_norm",
             "prior_fit_loss", "prior_grad_norm", "s_q", "s_kl", "s_d")


def states(cfg, preset):
    """T', the number of latent states the policy loss uses."""
    return cfg.horizon + 1 if preset.all_states else cfg.horizon


# --------------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------------


def _mlp_layers(lead, dims, last_std=0.02):
    """Hidden layers with LayerNorm + Mish, a plain final Linear."""
    n = len(dims) - 1
    return [new_layer(lead, dims[i], dims[i + 1], i < n - 1, None, last_std if i == n - 1 else 0.02)
            for i in range(n)]


PREFIX = {"pi": "_pi", "q": "_Qs.params", "prior": "_prior"}


class PolicyModel:
    def __init__(self, cfg, preset, action_dim, device, dtype, seed):
        self.cfg, self.preset, self.action_dim = cfg, preset, action_dim
        L, H, A, K = cfg.latent_dim, cfg.mlp_dim, action_dim, cfg.num_bins
        cpu_rng_state = torch.random.get_rng_state()
        torch.manual_seed(seed)  # init on the CPU: same weights on every device
        self.pi = _mlp_layers((), [L, H, H, 2 * A])
        self.q = _mlp_layers((cfg.num_q,), [L + A, H, H, K], cfg.final_std)
        self.prior = _mlp_layers((), [L, H, H, 2 * A]) if preset.prior else []
        torch.random.set_rng_state(cpu_rng_state)
        for layer in self.pi + self.prior:
            layer.to(device, dtype, True)
        for layer in self.q:
            layer.to(device, dtype, False)  # TD-MPC2's detached Q: frozen parameters
        self.bins = torch.linspace(cfg.vmin, cfg.vmax, cfg.num_bins, device=device, dtype=dtype)
        self.rho_w = cfg.rho ** torch.arange(states(cfg, preset), device=device, dtype=dtype)
        self.zero = torch.zeros((), device=device, dtype=dtype)
        self.device, self.dtype = device, dtype

    def nets(self):
        out = {"pi": self.pi, "q": self.q}
        if self.prior:
            out["prior"] = self.prior
        return out

    def pi_params(self):
        return layer_tensors(self.pi)

    def prior_params(self):
        return layer_tensors(self.prior)

    def state_dict(self):
        """{TD-MPC2-style tensor name: tensor} (the tensors themselves, not copies)."""
        return named_tensors(self.nets(), PREFIX)

    def mlp(self, x, layers):
        for l in layers:
            x = F.linear(x, l.w, l.b)
            if l.g is not None:
                x = F.mish(F.layer_norm(x, (l.out_dim,), l.g, l.beta, self.cfg.ln_eps))
        return x

    def q_heads(self, za, heads=None, drop_mask=None, dropout=0.0):
        """Logits [k, R, bins] of the Q heads on the shared input za [R, L+A]: all heads
        (heads=None) or the ones in `heads` ([k] long tensor on the device; their stacked
        weights are gathered). Layer 1 is one GEMM for all k heads, the others batched matmuls
        over the heads. Dropout after layer 1: the given scaled mask [R, num_q, H] (its
        columns of the evaluated heads), or F.dropout with probability `dropout`."""

        def pick(t, dim=0):
            return t if heads is None else t.index_select(dim, heads)

        R = za.shape[0]
        l0 = self.q[0]
        w, b = pick(l0.w), pick(l0.b)
        k, H = w.shape[0], w.shape[1]
        x = F.linear(za, w.reshape(k * H, w.shape[2]), b.reshape(k * H)).view(R, k, H)
        if drop_mask is not None:
            x = x * pick(drop_mask, 1)
        elif dropout > 0:
            x = F.dropout(x, dropout, training=True)
        x = F.layer_norm(x, (H,), None, None, self.cfg.ln_eps)
        x = F.mish(torch.addcmul(pick(l0.beta), x, pick(l0.g)))  # per-head affine [k, H]
        x = x.transpose(0, 1)  # [k, R, H]
        for l in self.q[1:]:
            x = torch.baddbmm(pick(l.b).unsqueeze(1), x, pick(l.w).transpose(1, 2))
            if l.g is not None:
                x = F.layer_norm(x, (l.out_dim,), None, None, self.cfg.ln_eps)
                x = F.mish(torch.addcmul(pick(l.beta).unsqueeze(1), x, pick(l.g).unsqueeze(1)))
        return x

    def q_avg(self, za, heads, drop_mask=None, all_heads=False):
        """Average of the two chosen heads' two_hot_inv values [R] (TD-MPC2's Q(..., 'avg'))."""
        if all_heads:  # as TD-MPC2 codes it: all heads, then pick 2
            logits = self.q_heads(za, None, drop_mask, self.cfg.dropout).index_select(0, heads)
        else:
            logits = self.q_heads(za, heads, drop_mask, self.cfg.dropout)
        v = symexp(torch.softmax(logits, dim=-1) @ self.bins)  # [2, R]
        return (v[0] + v[1]) / 2


class RunningScale:
    """TD-MPC2's RunningScale on a device tensor: 5th/95th percentile of a batch by a sort and
    linear interpolation (positions computed in float32 as TD-MPC2 does; static indices for a
    batch of n), value <- lerp(value, max(P95 - P5, 1), tau)."""

    def __init__(self, n, init, tau, device, dtype):
        self.value = torch.full((1,), float(init), device=device, dtype=dtype)
        self.tau = tau
        pos = torch.tensor([5.0, 95.0], dtype=torch.float32) * (n - 1) / 100
        fl = torch.floor(pos)
        ce = torch.clamp(fl + 1, max=n - 1)
        wc = pos - fl
        wf = 1.0 - wc
        self.taps = [(int(fl[i]), int(ce[i]), float(wf[i]), float(wc[i])) for i in range(2)]

    def update(self, x):
        s = torch.sort(x.detach().reshape(-1)).values
        p5, p95 = (s[f] * wf + s[c] * wc for f, c, wf, wc in self.taps)
        self.value.lerp_(torch.clamp(p95 - p5, min=1.0).reshape(1), self.tau)


class Scales:
    def __init__(self, cfg, batch, device, dtype):
        self.q = RunningScale(batch, cfg.s_q_init, cfg.scale_tau, device, dtype)
        self.kl = RunningScale(batch, 1.0, cfg.scale_tau, device, dtype)
        self.d = RunningScale(batch, 1.0, cfg.scale_tau, device, dtype)


# --------------------------------------------------------------------------------------------
# The batched update
# --------------------------------------------------------------------------------------------


def log_std_map(raw, lo, hi):
    return lo + 0.5 * (hi - lo) * (torch.tanh(raw) + 1)


def gauss_kl(mu_p, log_std_p, mu_q, sig_q):
    """Closed-form KL(N(mu_p, exp(log_std_p)) || N(mu_q, sig_q)) per dimension."""
    return (torch.log(sig_q) - log_std_p
            + (torch.exp(2 * log_std_p) + (mu_p - mu_q).square()) / (2 * sig_q.square()) - 0.5)


def draw_noise(model, batch):
    """The random draws of one update: the policy noise and (with a Q term) the head choice.
    (Dropout, if any, is drawn by F.dropout inside the Q forward.)"""
    Tp = states(model.cfg, model.preset)
    eps = torch.randn(Tp, batch, model.action_dim, device=model.device, dtype=model.dtype)
    u = torch.rand(model.cfg.num_q, device=model.device, dtype=model.dtype) if model.preset.q else None
    return eps, u, None


def prior_fit(model, scales, zs, b_mu, b_sig):
    """PO-MPC's a.3.1 (reverse KL, mean over dims): (loss, pi_psi's raw output [T, B, 2A])."""
    p = model.preset
    hp = model.mlp(zs[:-1], model.prior)
    m, raw = hp.chunk(2, dim=-1)
    d_fit = gauss_kl(m, log_std_map(raw, p.log_std_min, p.log_std_max), b_mu, b_sig).mean(-1)  # [T, B]
    scales.d.update(d_fit[0])
    loss = ((d_fit / scales.d.value).mean(1) * model.rho_w).mean()
    return loss, hp


def policy_losses(model, scales, zs, b_mu, b_sig, noise, prior_h=None, all_heads=False):
    """The policy loss of the preset. Returns (total, [4] weighted terms q, entropy, kl, ll)."""
    cfg, p = model.cfg, model.preset
    eps, head_u, drop_mask = noise
    z = zs if p.all_states else zs[:-1]  # [T', B, L]
    Tp, B, L = z.shape
    A = model.action_dim
    m, raw = model.mlp(z, model.pi).chunk(2, dim=-1)
    log_std = log_std_map(raw, p.log_std_min, p.log_std_max)
    res = (-0.5 * eps.square() - log_std).sum(-1)  # [T', B]
    lp = res - A * HALF_LOG_2PI_TDMPC2
    if p.param == "squashed":
        mu = m
        x = mu + eps * torch.exp(log_std)
        a = torch.tanh(x)
        sq = torch.log(F.relu(1 - a.square()) + 1e-6).sum(-1)
        logp = lp - sq
    else:  # BMPC: mu = tanh(m); the clamped sample enters no term of BMPC's loss
        mu = torch.tanh(m)
        x = a = None
        sq = 0.0
        logp = lp
    if cfg.entropy == "scaled":
        ent = -logp * (A * lp / (logp + 1e-8))
    else:
        ent = -(A * (res - HALF_LOG_2PI) - sq)
    terms = {"entropy": -cfg.entropy_coef * ent}
    s_q = None
    if p.q:
        heads = chosen_heads(head_u)
        q = model.q_avg(torch.cat([z, a], dim=-1).view(Tp * B, L + A), heads, drop_mask,
                        all_heads).view(Tp, B)
        scales.q.update(q[0])
        s_q = scales.q.value
        terms["q"] = -q / s_q
    if p.ll:
        sig_f = torch.clamp(b_sig, min=cfg.min_std)
        e = (a - b_mu) / sig_f
        ell = A * ((-0.5 * e.square() - torch.log(sig_f)).sum(-1) - HALF_LOG_2PI)
        gate = (s_q > cfg.scale_threshold).to(ell.dtype)
        terms["ll"] = (-cfg.prior_coef * A / cfg.prior_coef_dim) * gate * ell / s_q
    if p.kl:
        if p.prior:  # PO-MPC: single-sample log pi_theta(a) - log pi_psi(a), squashed densities
            mp, rawp = prior_h.chunk(2, dim=-1)
            lsp = log_std_map(rawp, p.log_std_min, p.log_std_max)
            u = torch.clamp(x, -cfg.u_max, cfg.u_max)
            zp = (u - mp) * torch.exp(-lsp)
            d = res - (-0.5 * zp.square() - lsp).sum(-1)  # constants and squash terms cancel
            coef = cfg.lam
        else:  # BMPC: closed-form reverse KL to the planner Gaussian, mean over dims
            d = gauss_kl(mu, log_std, b_mu, b_sig).mean(-1)
            coef = 1.0
        scales.kl.update(d[0])
        terms["kl"] = coef * d / scales.kl.value
    present = [k for k in TERMS if k in terms]
    vals = (torch.stack([terms[k] for k in present]).mean(2) * model.rho_w).mean(1)
    total = vals.sum()
    vals = vals.detach()
    out = [vals[present.index(k)] if k in present else model.zero for k in TERMS]
    return total, torch.stack(out)


def make_optimizers(model):
    cfg = model.cfg
    kw = {"capturable": True} if model.device.type == "cuda" else {}
    opts = {"pi": torch.optim.Adam(model.pi_params(), lr=cfg.lr, eps=cfg.adam_eps, **kw)}
    if model.prior:
        opts["prior"] = torch.optim.Adam(model.prior_params(), lr=cfg.lr, eps=cfg.adam_eps, **kw)
    return opts


def clipped_step(opt, losses, params, clip, probe, probe_key):
    """One optimizer step as the prior fit and the policy update each take it: zero the
    gradients, `losses()` -> (loss, extra), backward, the gradients into `probe[probe_key]`
    before clipping (check only), clip to norm `clip`, step. Returns (loss, extra, norm)."""
    opt.zero_grad(set_to_none=True)
    loss, extra = losses()
    loss.backward()
    if probe is not None:
        probe[probe_key] = [t.grad.detach().clone() for t in params]
    norm = torch.nn.utils.clip_grad_norm_(params, clip)
    opt.step()
    return loss, extra, norm


def update_step(model, opts, scales, zs, b_mu, b_sig, noise=None, all_heads=False, probe=None):
    """One policy update of the preset (PO-MPC: prior fit first). Returns the 11 outputs
    (OUT_NAMES) as a device tensor. `noise` None draws fresh noise; `probe` (a dict, check
    only) receives the gradients before clipping."""
    cfg = model.cfg
    if noise is None:
        noise = draw_noise(model, zs.shape[1])
    fit = prior_norm = model.zero
    prior_h = None
    if model.prior:
        fit, prior_h, prior_norm = clipped_step(
            opts["prior"], lambda: prior_fit(model, scales, zs, b_mu, b_sig), model.prior_params(),
            cfg.grad_clip_norm, probe, "prior_grads")
        prior_h = prior_h.detach()  # pi_psi before its Adam step, no gradient
        fit = fit.detach()
    total, terms, norm = clipped_step(
        opts["pi"], lambda: policy_losses(model, scales, zs, b_mu, b_sig, noise, prior_h, all_heads),
        model.pi_params(), cfg.grad_clip_norm, probe, "grads")
    dt = terms.dtype
    return torch.cat([terms, total.detach().reshape(1), norm.detach().reshape(1).to(dt),
                      fit.reshape(1), prior_norm.detach().reshape(1).to(dt),
                      scales.q.value, scales.kl.value, scales.d.value])


# --------------------------------------------------------------------------------------------
# Straightforward per-preset references (after the original code) for the check
# --------------------------------------------------------------------------------------------


def ref_log_std(x, low, dif):  # math.log_std
    return low + 0.5 * dif * (torch.tanh(x) + 1)


def ref_gaussian_logprob(eps, log_std):  # TD-MPC2's current math.gaussian_logprob
    residual = -0.5 * eps.pow(2) - log_std
    log_prob = residual - 0.9189385175704956
    return log_prob.sum(-1, keepdim=True)


def ref_gaussian_logprob_x_size(eps, log_std):  # TD-M(PC)^2's (and TD-MPC2 Oct 2023)
    residual = (-0.5 * eps.pow(2) - log_std).sum(-1, keepdim=True)
    return (residual - 0.5 * math.log(2 * math.pi)) * eps.size(-1)


def ref_squash_term(pi):
    return torch.log(F.relu(1 - pi.pow(2)) + 1e-6)


def ref_squash(mu, pi, log_pi):  # math.squash
    mu = torch.tanh(mu)
    pi = torch.tanh(pi)
    log_pi = log_pi - ref_squash_term(pi).sum(-1, keepdim=True)
    return mu, pi, log_pi


def ref_pi(P, prefix, z, eps, preset, cfg):
    """world_model.pi of TD-MPC2 (bmpc = False) or BMPC (bmpc = True) with the noise given;
    info also holds the pre-squash mean and TD-M(PC)^2's log pi (its original form)."""
    mean, log_std = ref_mlp(P, prefix, 3, z, None, cfg).chunk(2, dim=-1)
    log_std = ref_log_std(log_std, preset.log_std_min, preset.log_std_max - preset.log_std_min)
    log_prob = ref_gaussian_logprob(eps, log_std)
    size = eps.shape[-1]
    scaled_log_prob = log_prob * size
    pre_mean = mean
    log_pi_original = ref_gaussian_logprob_x_size(eps, log_std)
    if preset.param == "tanh_mean_clamp":
        mean = torch.tanh(mean)
        action = (mean + eps * log_std.exp()).clamp(-1, 1)
    else:
        action = mean + eps * log_std.exp()
        _, _, log_pi_original = ref_squash(mean, action, log_pi_original)
        mean, action, log_prob = ref_squash(mean, action, log_prob)
    entropy_scale = scaled_log_prob / (log_prob + 1e-8)
    info = {"mean": mean, "pre_mean": pre_mean, "log_std": log_std, "entropy": -log_prob,
            "scaled_entropy": -log_prob * entropy_scale, "log_pi_original": log_pi_original}
    return action, info


def ref_entropy(info, cfg):
    """H of the entropy term alpha * H (TD-MPC2's scaled entropy, or -log pi original)."""
    return info["scaled_entropy"] if cfg.entropy == "scaled" else -info["log_pi_original"]


def ref_two_hot_inv(x, cfg):
    bins = torch.linspace(cfg.vmin, cfg.vmax, cfg.num_bins, device=x.device, dtype=x.dtype)
    return symexp(torch.sum(F.softmax(x, dim=-1) * bins, dim=-1, keepdim=True))


def ref_q_avg(P, z, a, cfg, heads, drop):
    """TD-MPC2's Q(z, a, return_type='avg', detach=True): all 5 heads, then 2 picked."""
    za = torch.cat([z, a], dim=-1)
    Tp, B = za.shape[:2]
    outs = []
    for h in range(cfg.num_q):
        dh = None if drop is None else drop.view(Tp, B, cfg.num_q, -1)[:, :, h]
        outs.append(ref_mlp(P, "_Qs.params", 3, za, None, cfg, head=h, drop=dh))
    out = torch.stack(outs)
    Q = ref_two_hot_inv(out[heads], cfg)
    return Q.sum(0) / 2


class RefRunningScale:
    """TD-MPC2's common/scale.py RunningScale (a buffer of `dtype` on `device`)."""

    def __init__(self, tau, device, dtype, init=1.0):
        self.tau = tau
        self.value = torch.full((1,), float(init), dtype=dtype, device=device)
        self._percentiles = torch.tensor([5, 95], dtype=torch.float32, device=device)

    def _positions(self, x_shape):
        positions = self._percentiles * (x_shape - 1) / 100
        floored = torch.floor(positions)
        ceiled = floored + 1
        ceiled = torch.where(ceiled > x_shape - 1, x_shape - 1, ceiled)
        weight_ceiled = positions - floored
        weight_floored = 1.0 - weight_ceiled
        return floored.long(), ceiled.long(), weight_floored.unsqueeze(1), weight_ceiled.unsqueeze(1)

    def _percentile(self, x):
        x_dtype, x_shape = x.dtype, x.shape
        x = x.flatten(1, x.ndim - 1)
        in_sorted = torch.sort(x, dim=0).values
        floored, ceiled, weight_floored, weight_ceiled = self._positions(x.shape[0])
        d0 = in_sorted[floored] * weight_floored
        d1 = in_sorted[ceiled] * weight_ceiled
        return (d0 + d1).reshape(-1, *x_shape[1:]).to(x_dtype)

    def update(self, x):
        percentiles = self._percentile(x.detach())
        value = torch.clamp(percentiles[1] - percentiles[0], min=1.)
        self.value.data.lerp_(value, self.tau)

    def __call__(self, x):
        return x / self.value


def ref_update(preset, P, opts, sc, cfg, zs, b_mu, b_sig, eps, heads, drop):
    """One update of `preset` written after the original code. Returns a dict with the terms
    (q, entropy, kl, ll, total), the gradients before clipping and the gradient norms."""
    A = eps.shape[-1]
    dt, dev = zs.dtype, zs.device
    alpha = cfg.entropy_coef
    pi_names = [n for n in P if n.startswith("_pi.")]
    prior_names = [n for n in P if n.startswith("_prior.")]
    r = {"q": 0.0, "entropy": 0.0, "kl": 0.0, "ll": 0.0, "fit": 0.0, "prior_norm": 0.0}

    def rho_of(n):
        return torch.pow(cfg.rho, torch.arange(n, device=dev, dtype=dt))

    def wmean(x):  # (x.mean(dim=(1, 2)) * rho).mean() of a [T', B, 1] term, detached
        with torch.no_grad():
            return (x.mean(dim=(1, 2)) * rho_of(len(x))).mean()

    if preset.name == "tdmpc2":  # tdmpc2.py update_pi
        action, info = ref_pi(P, "_pi", zs, eps, preset, cfg)
        qs = ref_q_avg(P, zs, action, cfg, heads, drop)
        sc["q"].update(qs[0])
        qs = sc["q"](qs)
        rho = rho_of(len(qs))
        H = ref_entropy(info, cfg)
        pi_loss = (-(cfg.entropy_coef * H + qs).mean(dim=(1, 2)) * rho).mean()
        r["q"], r["entropy"] = wmean(-qs), wmean(-alpha * H)

    elif preset.name == "bmpc":  # bmpc.py update_pi
        _, info = ref_pi(P, "_pi", zs[:-1], eps, preset, cfg)
        kl_loss = torch.distributions.kl_divergence(
            torch.distributions.Normal(info["mean"], info["log_std"].exp()),
            torch.distributions.Normal(b_mu, b_sig)).mean(-1, keepdim=True)
        sc["kl"].update(kl_loss[0])
        kl_loss = sc["kl"](kl_loss)
        rho = rho_of(len(kl_loss))
        H = ref_entropy(info, cfg)
        pi_loss = ((kl_loss - cfg.entropy_coef * H).mean(dim=(1, 2)) * rho).mean()
        r["kl"], r["entropy"] = wmean(kl_loss), wmean(-alpha * H)

    elif preset.name == "tdmpc-square":  # tdmpc_square.py update_pi, actor_mode residual
        pis, info = ref_pi(P, "_pi", zs[:-1], eps, preset, cfg)
        log_pis = -ref_entropy(info, cfg)
        qs = ref_q_avg(P, zs[:-1], pis, cfg, heads, drop)
        sc["q"].update(qs[0])
        qs = sc["q"](qs)
        rho = rho_of(len(qs))
        std = torch.max(b_sig, cfg.min_std * torch.ones_like(b_sig))
        e = (pis - b_mu) / std
        log_pis_prior = ref_gaussian_logprob_x_size(e, std.log()).mean(dim=-1)
        log_pis_prior = sc["q"](log_pis_prior) if float(sc["q"].value) > cfg.scale_threshold \
            else torch.zeros_like(log_pis_prior)
        q_loss = ((cfg.entropy_coef * log_pis - qs).mean(dim=(1, 2)) * rho).mean()
        prior_loss = -(log_pis_prior.mean(dim=-1) * rho).mean()
        pi_loss = q_loss + (cfg.prior_coef * A / cfg.prior_coef_dim) * prior_loss
        r["q"], r["entropy"] = wmean(-qs), wmean(alpha * log_pis)
        r["ll"] = (cfg.prior_coef * A / cfg.prior_coef_dim) * prior_loss.detach()

    elif preset.name == "pompc":  # a.3.1 then a.3.2 with pi_p = pi_psi
        opts["prior"].zero_grad(set_to_none=True)
        out_p = ref_mlp(P, "_prior", 3, zs[:-1], None, cfg)
        mean_p, log_std_p = out_p.chunk(2, dim=-1)
        log_std_p = ref_log_std(log_std_p, preset.log_std_min, preset.log_std_max - preset.log_std_min)
        fit = torch.distributions.kl_divergence(
            torch.distributions.Normal(mean_p, log_std_p.exp()),
            torch.distributions.Normal(b_mu, b_sig)).mean(-1, keepdim=True)
        sc["d"].update(fit[0])
        fit = sc["d"](fit)
        fit_loss = (fit.mean(dim=(1, 2)) * rho_of(len(fit))).mean()
        fit_loss.backward()
        r["prior_grads"] = [P[n].grad.detach().clone() for n in prior_names]
        r["prior_norm"] = torch.nn.utils.clip_grad_norm_([P[n] for n in prior_names], cfg.grad_clip_norm,
                                                         foreach=False)
        opts["prior"].step()
        r["fit"] = fit_loss.detach()
        mean_p, std_p = mean_p.detach(), log_std_p.exp().detach()  # before the step, no grad

        action, info = ref_pi(P, "_pi", zs[:-1], eps, preset, cfg)
        qs = ref_q_avg(P, zs[:-1], action, cfg, heads, drop)
        sc["q"].update(qs[0])
        qs = sc["q"](qs)
        c = 1 - cfg.squash_clip
        pre = torch.atanh(action.clamp(-c, c))  # pre-squash point of the sample
        corr = ref_squash_term(action).sum(-1, keepdim=True)
        log_pi = torch.distributions.Normal(info["pre_mean"], info["log_std"].exp()).log_prob(pre) \
            .sum(-1, keepdim=True) - corr
        log_pp = torch.distributions.Normal(mean_p, std_p).log_prob(pre).sum(-1, keepdim=True) - corr
        kl = log_pi - log_pp
        sc["kl"].update(kl[0])
        kl = sc["kl"](kl)
        rho = rho_of(len(qs))
        H = ref_entropy(info, cfg)
        pi_loss = ((-(cfg.entropy_coef * H + qs) + cfg.lam * kl).mean(dim=(1, 2)) * rho).mean()
        r["q"], r["entropy"], r["kl"] = wmean(-qs), wmean(-alpha * H), wmean(cfg.lam * kl)
    else:
        raise ValueError(preset.name)

    opts["pi"].zero_grad(set_to_none=True)
    pi_loss.backward()
    r["grads"] = [P[n].grad.detach().clone() for n in pi_names]
    r["norm"] = torch.nn.utils.clip_grad_norm_([P[n] for n in pi_names], cfg.grad_clip_norm, foreach=False)
    opts["pi"].step()
    r["total"] = pi_loss.detach()
    return r


def reference_check(cfg, preset, action_dim, device, seed, batch=6, steps=2, all_heads=False, tol=1e-9):
    """Batched update (update_step, noise passed in) vs the straightforward reference in
    float64 on the 5M preset with a small batch, `steps` consecutive updates. Returns (worst
    relative error, problems, summary dict)."""
    dt = torch.float64
    T, A, L, H = cfg.horizon, action_dim, cfg.latent_dim, cfg.mlp_dim
    Tp = states(cfg, preset)
    model = PolicyModel(cfg, preset, A, device, dt, seed)
    rnd = check_draws(seed + 1, dt, device)  # check data on the CPU, then moved

    with torch.no_grad():  # perturb what is 0 / 1 at init
        for l in model.pi + model.prior + model.q:
            l.b.add_(0.05 * rnd(*l.b.shape))
            if l.g is not None:
                l.g.add_(0.1 * rnd(*l.g.shape))
                l.beta.add_(0.05 * rnd(*l.beta.shape))
    P = {k: v.detach().clone().requires_grad_(not k.startswith("_Qs."))
         for k, v in model.state_dict().items()}
    pi_names = [n for n in P if n.startswith("_pi.")]
    prior_names = [n for n in P if n.startswith("_prior.")]
    sd = model.state_dict()
    assert all(sd[n] is t for n, t in zip(pi_names, model.pi_params())), "parameter order"
    assert all(sd[n] is t for n, t in zip(prior_names, model.prior_params())), "parameter order"
    ref_opts = {"pi": torch.optim.Adam([P[n] for n in pi_names], lr=cfg.lr, eps=cfg.adam_eps, foreach=False)}
    if prior_names:
        ref_opts["prior"] = torch.optim.Adam([P[n] for n in prior_names], lr=cfg.lr, eps=cfg.adam_eps,
                                             foreach=False)
    ref_sc = {"q": RefRunningScale(cfg.scale_tau, device, dt, cfg.s_q_init),
              "kl": RefRunningScale(cfg.scale_tau, device, dt), "d": RefRunningScale(cfg.scale_tau, device, dt)}
    opts = make_optimizers(model)
    scales = Scales(cfg, batch, device, dt)

    zs = simnorm(rnd(T + 1, batch, L), cfg.simnorm_dim)
    b_mu = rnd(T, batch, A, lo=-1.0, hi=1.0)
    b_sig = rnd(T, batch, A, lo=0.01, hi=2.0)  # below 0.05 too: TD-M(PC)^2's floor matters

    cmp, summary = Errors(tol), {}
    problems = cmp.problems

    for step in range(steps):
        eps = rnd(Tp, batch, A)
        head_u = rnd(cfg.num_q, lo=0.0, hi=1.0)
        heads = chosen_heads(head_u).tolist()
        drop = None
        if cfg.dropout > 0 and preset.q:
            keep = rnd(Tp * batch, cfg.num_q, H, lo=0.0, hi=1.0) >= cfg.dropout
            drop = keep.to(dt) / (1 - cfg.dropout)
        probe = {}
        out = update_step(model, opts, scales, zs, b_mu, b_sig, (eps, head_u if preset.q else None, drop),
                          all_heads, probe)
        ref = ref_update(preset, P, ref_opts, ref_sc, cfg, zs, b_mu, b_sig, eps, heads, drop)

        for i, k in enumerate(TERMS):
            cmp(f"update {step}: {k} term", out[i], ref[k])
        cmp(f"update {step}: total loss", out[4], ref["total"])
        for n, g, rg in zip(pi_names, probe["grads"], ref["grads"]):
            cmp(f"update {step}: grad {n}", g, rg)
        cmp(f"update {step}: pi grad norm", out[5], ref["norm"])
        if preset.prior:
            cmp(f"update {step}: prior fit loss", out[6], ref["fit"])
            for n, g, rg in zip(prior_names, probe["prior_grads"], ref["prior_grads"]):
                cmp(f"update {step}: grad {n}", g, rg)
            cmp(f"update {step}: prior grad norm", out[7], ref["prior_norm"])
        for j, k in ((8, "q"), (9, "kl"), (10, "d")):
            cmp(f"update {step}: S_{k.upper()}", out[j], ref_sc[k].value)
        for n, v in model.state_dict().items():
            cmp(f"update {step}: {n} after the update", v.detach(), P[n].detach())
        grads = ref["grads"] + ref.get("prior_grads", [])
        min_g = min(float(g.abs().max()) for g in grads)
        if not min_g > 0:
            problems.append(f"update {step}: a parameter has an all-zero gradient")
        summary[f"update {step}"] = {
            **{k: float(v) for k, v in zip(OUT_NAMES, out)}, "heads": heads if preset.q else None,
            "min_abs_grad_tensor": min_g,
        }
    return cmp.worst, problems, summary


# --------------------------------------------------------------------------------------------
# FLOPs
# --------------------------------------------------------------------------------------------


def macs_per_row(cfg, action_dim):
    L, H, A, K = cfg.latent_dim, cfg.mlp_dim, action_dim, cfg.num_bins
    return {"pi": L * H + H * H + H * 2 * A, "q": (L + A) * H + H * H + H * K}


def update_flops(cfg, preset, action_dim, batch, q_heads=2):
    """2 * MACs: policy 3*pi*R, Q 2*q_heads*q*R (forward + dX), prior 3*pi*R; q_heads = 2 is
    the count of record, 5 what --all-heads runs."""
    m = macs_per_row(cfg, action_dim)
    R = states(cfg, preset) * batch
    macs = 3 * m["pi"] * R
    if preset.q:
        macs += 2 * q_heads * m["q"] * R
    if preset.prior:
        macs += 3 * m["pi"] * R
    return 2 * macs


# --------------------------------------------------------------------------------------------
# Runners and timing
# --------------------------------------------------------------------------------------------


def make_inputs(cfg, action_dim, batch, device, dtype=torch.float32):
    T = cfg.horizon
    zs = simnorm(torch.randn(T + 1, batch, cfg.latent_dim, device=device, dtype=dtype), cfg.simnorm_dim)
    b_mu = torch.rand(T, batch, action_dim, device=device, dtype=dtype) * 2 - 1
    b_sig = 0.05 + 1.95 * torch.rand(T, batch, action_dim, device=device, dtype=dtype)
    return zs, b_mu, b_sig


class Runner(GraphRunner):
    """Fresh networks, optimisers and scales with static input buffers for one (mode, B);
    step() runs one update whose output (OUT_NAMES) is in self.out."""

    def __init__(self, base_mode, cfg, preset, action_dim, batch, device, seed, all_heads):
        self.model = PolicyModel(cfg, preset, action_dim, device, torch.float32, seed)
        self.opts = make_optimizers(self.model)
        self.scales = Scales(cfg, batch, device, torch.float32)
        self.all_heads = all_heads
        self.zs, self.b_mu, self.b_sig = make_inputs(cfg, action_dim, batch, device)
        self._start(base_mode)

    def _body(self):
        return update_step(self.model, self.opts, self.scales, self.zs, self.b_mu, self.b_sig,
                           all_heads=self.all_heads)

    def _before_capture(self):
        for opt in self.opts.values():
            opt.zero_grad(set_to_none=True)


def invariant_problems(runner):
    """Host-side checks after timing: finite outputs and parameters, a non-zero gradient."""
    probs = []
    out = runner.out.detach().float().cpu()
    if not bool(torch.isfinite(out).all()):
        probs.append(f"non-finite outputs {out.tolist()}")
    elif not float(out[5]) > 0:
        probs.append(f"pi grad norm {float(out[5])} is not positive")
    elif runner.model.prior and not float(out[7]) > 0:
        probs.append(f"prior grad norm {float(out[7])} is not positive")
    probs += nonfinite_parameters(runner.model)
    return probs


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv):
    p = new_parser(__doc__)
    p.add_argument("--preset", choices=list(PRESETS), default="pompc", help="the policy update (default pompc)")
    p.add_argument("--lambda", dest="lam", type=float, default=Config.lam,
                   help="PO-MPC's KL coefficient lambda (pompc preset; default 1)")
    p.add_argument("--s-q-init", type=float, default=None,
                   help="initial S_Q (default 5 for tdmpc-square, so that its S_Q > 2 gate is on; 1 otherwise "
                        "as TD-MPC2)")
    p.add_argument("--entropy", choices=["scaled", "original"], default=Config.entropy,
                   help="entropy term: TD-MPC2's current scaled entropy (default, all presets) or the "
                        "original -log pi of Oct 2023 that TD-M(PC)^2's code uses")
    add_update_args(p, Config(), "dropout after the first Q layer (TD-MPC2: 0.01 in the policy update; "
                                 "default 0 as pompc's GPU update)", "the final Q layer")
    p.add_argument("--all-heads", action="store_true",
                   help="evaluate all 5 Q heads, then pick 2 (as TD-MPC2 codes it)")
    p.add_argument("--check-all", action="store_true", help="run the float64 check for all four presets")
    return parse_with_check(p, argv, "")


def make_config(args, preset_name):
    s_q_init = args.s_q_init if args.s_q_init is not None else (5.0 if preset_name == "tdmpc-square" else 1.0)
    return Config(horizon=args.horizon, dropout=args.dropout, final_std=args.final_std, lam=args.lam,
                  s_q_init=s_q_init, entropy=args.entropy)


def main(argv=None):
    args = parse_args(argv)
    device, cuda = start_run(args)
    preset = PRESETS[args.preset]
    cfg = make_config(args, args.preset)
    A = args.action_dim
    exit_code = 0
    q_heads = cfg.num_q if args.all_heads else 2
    Tp = states(cfg, preset)

    emit, note = reporters(args.json)

    describe = {
        "tdmpc2": f"TD-MPC2 update_pi on z_0..z_{cfg.horizon}: -(alpha H + Q/S_Q), squashed head, log-std [-10, 2]",
        "bmpc": f"BMPC update_pi on z_0..z_{cfg.horizon - 1}: KL(pi || b)/S_KL (closed form, mean over dims) "
                "- alpha H, tanh-mean-clamp head, log-std [-3, 1], no Q",
        "tdmpc-square": f"TD-M(PC)^2 residual on z_0..z_{cfg.horizon - 1}: -(alpha H + Q/S_Q) - (A/61) g ell/S_Q "
                        f"(sigma floor {cfg.min_std:g}, gate S_Q > {cfg.scale_threshold:g}), S_Q init {cfg.s_q_init:g}",
        "pompc": f"PO-MPC on z_0..z_{cfg.horizon - 1}, lambda {cfg.lam:g}: prior fit KL(pi_psi || b)/S_D "
                 "(reverse, mean over dims; own clip and Adam), then -Q/S_Q - alpha H + lambda D/S_KL with "
                 "D = log pi(a) - log pi_psi(a) (single sample, squashed densities)",
    }[args.preset]
    dev_name, device_fields, device_line = device_meta(device, cuda)
    m = macs_per_row(cfg, A)
    meta = {
        **device_fields,
        "preset": args.preset, "description": describe, "action_dim": A, "batches": args.batch,
        "horizon": cfg.horizon, "states": Tp, "modes": args.modes, "iters": args.iters, "warmup": args.warmup,
        "dtype": "float32", "settings": asdict(cfg), "q_heads_evaluated": q_heads if preset.q else 0,
        "adam_capturable": cuda, "macs_per_row": m,
        "gflop_per_update": {str(B): update_flops(cfg, preset, A, B) / 1e9 for B in args.batch},
        "flop_formula": "2*(3*pi*R + [Q] 4*q*R + [prior] 3*pi*R), R = T'*B; MACs of linear-layer weights per row",
    }
    modes = emit_header(emit, note, meta, [
        device_line,
        f"preset {args.preset}: {describe}",
        f"model: TD-MPC2 5M preset, latent {cfg.latent_dim}, policy{' and prior' if preset.prior else ''} "
        f"{cfg.latent_dim}->{cfg.mlp_dim}->{cfg.mlp_dim}->{2 * A}"
        + (f", {cfg.num_q} frozen Q heads (stacked, {q_heads} evaluated), {cfg.num_bins} bins, final Q layer "
           f"trunc-normal {cfg.final_std:g}, Q dropout {cfg.dropout:g}" if preset.q else ", no Q")
        + f"; LayerNorm eps {cfg.ln_eps:g}, Mish, fp32",
        f"update: T' = {Tp} states x B rows, rho {cfg.rho:g}, alpha {cfg.entropy_coef:g} ({cfg.entropy} entropy), "
        f"clip {cfg.grad_clip_norm:g}, Adam lr {cfg.lr:g} eps {cfg.adam_eps:g}{' capturable' if cuda else ''}, "
        f"running scales tau {cfg.scale_tau:g}",
        f"action dim {A}, " + runs_line(args, "updates"),
        "FLOP per update: " + ", ".join(f"B={B}: {update_flops(cfg, preset, A, B) / 1e9:.3f} GFLOP"
                                        for B in args.batch),
    ], args, cuda, "update", "until the device is idle")
    if modes is None:
        return 2

    # correctness: batched update vs the straightforward per-preset reference, float64
    if not args.no_check:
        if cuda:
            set_tf32(False)
        for name in (list(PRESETS) if args.check_all else [args.preset]):
            t0 = time.perf_counter()
            ccfg = make_config(args, name)
            worst, probs, summary = reference_check(ccfg, PRESETS[name], A, device, args.seed,
                                                    batch=args.check_batch, all_heads=args.all_heads)
            ok = not probs
            exit_code |= 0 if ok else 1
            s0 = summary["update 0"]
            emit({"type": "check", "preset": name, "max_rel_err": worst, "ok": ok, "problems": probs,
                  "summary": summary},
                 f"reference check {name} (float64, B={args.check_batch}, A={A}, T'={states(ccfg, PRESETS[name])}, "
                 f"2 updates; batched update vs the original-code reference, same weights/inputs/noise/heads"
                 f"{'/dropout masks' if ccfg.dropout > 0 else ''}; loss terms, total, every grad, grad norms, "
                 f"params after Adam, scales): max rel err {worst:.2e} -> "
                 f"{'PASS' if ok else 'FAIL: ' + '; '.join(probs[:8])} ({time.perf_counter() - t0:.1f} s)\n"
                 f"  update 0: " + ", ".join(f"{k} {s0[k]:.5g}" for k in OUT_NAMES)
                 + (f", heads {s0['heads']}" if s0["heads"] is not None else ""))

    header = (f"{'mode':<12} {'preset':<12} {'A':>3} {'B':>4} {'median ms':>10} {'p90 ms':>9} {'host ms':>9} "
              f"{'updates/s':>10} {'GFLOP/upd':>10} {'run GF':>7} {'TFLOP/s':>8} {'mem GiB':>8} {'setup s':>8}  check")
    print_table_header(args.json, header)

    ctx = update_ctx(args, cuda, device, dev_name, invariant_problems)
    exit_code |= update_rows(
        emit, modes, args.batch,
        keys=lambda B: ({"preset": args.preset, "action_dim": A, "batch": B},
                        f"{args.preset:<12} {A:>3} {B:>4}"),
        make_runner=lambda base, B: Runner(base, cfg, preset, A, B, device, args.seed, args.all_heads),
        flops_of=lambda B: (update_flops(cfg, preset, A, B, 2), update_flops(cfg, preset, A, B, q_heads)),
        extra=lambda runner: {
            "lambda": cfg.lam, "horizon": cfg.horizon, "states": Tp, "dropout": cfg.dropout,
            "q_heads_evaluated": q_heads if preset.q else 0,
            "last_outputs": dict(zip(OUT_NAMES, runner.out.detach().float().cpu().tolist())),
        },
        ctx=ctx)
    if not args.json:
        print("GFLOP/upd = 2*(3*pi*R + 4*q*R [Q: 2 heads forward + action backward] + 3*pi*R [pompc prior]), "
              "R = T'*B, pi/q = MACs per row of the policy / one Q head; run GF counts the heads evaluated; "
              "TFLOP/s = GFLOP/upd / median; updates/s = 1 / median.")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
