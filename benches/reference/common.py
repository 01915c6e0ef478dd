"""What the PyTorch reference scripts beside this file share: TD-MPC2's layer and activations,
the head choice, and the timing harness (eager, CUDA graph or torch.compile, CUDA-event
timing, the no-host-sync check).

The scripts run as `python3 benches/reference/NAME.py`, so this folder is on their import
path: copy the folder, not one script, to a GPU host.
"""

import argparse
import json
import math
import sys
import time
import warnings

import torch
import torch.nn.functional as F
from dataclasses import dataclass


class Layer:
    """Linear (+ LayerNorm + activation `act`). Weights [out, in] or, for the Q ensemble,
    stacked [heads, out, in]."""

    def __init__(self, w, b, ln, act=None):
        self.w, self.b, self.act = w, b, act
        out = w.shape[-2]
        if ln:
            self.g = torch.ones(w.shape[:-2] + (out,))
            self.beta = torch.zeros(w.shape[:-2] + (out,))
        else:
            self.g = self.beta = None

    def tensors(self):
        return [t for t in (self.w, self.b, self.g, self.beta) if t is not None]

    def named(self):
        """(name suffix as in TD-MPC2's state dict, attribute) pairs."""
        out = [("weight", "w"), ("bias", "b")]
        if self.g is not None:
            out += [("ln.weight", "g"), ("ln.bias", "beta")]
        return out

    def to(self, device, dtype, requires_grad=False):
        for k in ("w", "b", "g", "beta"):
            v = getattr(self, k)
            if v is not None:
                setattr(self, k, v.to(device=device, dtype=dtype).contiguous().requires_grad_(requires_grad))
        return self

    def clone(self):
        c = Layer.__new__(Layer)
        c.act = self.act
        for k in ("w", "b", "g", "beta"):
            v = getattr(self, k)
            setattr(c, k, None if v is None else v.detach().clone())
        return c

    @property
    def in_dim(self):
        return self.w.shape[-1]

    @property
    def out_dim(self):
        return self.w.shape[-2]


def new_layer(lead, in_dim, out_dim, ln, act, std):
    """A layer with truncated-normal weights of `std` (zeros when `std` is 0) and zero bias, as
    TD-MPC2 initializes them."""
    w = torch.empty(lead + (out_dim, in_dim))
    if std > 0:
        torch.nn.init.trunc_normal_(w, std=std)
    else:
        w.zero_()
    return Layer(w, torch.zeros(lead + (out_dim,)), ln, act)


class WorldModelBase:
    """TD-MPC2's networks (encoder, dynamics, reward, policy, Q heads) with weights drawn on
    the CPU from `seed` (the same on every device; the global RNG is left as it was), left on
    the CPU for the subclass to move, and the forward pieces that the plan and the update share."""

    def __init__(self, cfg, obs_dim, action_dim, device, dtype, seed):
        self.cfg, self.obs_dim, self.action_dim = cfg, obs_dim, action_dim
        L, H, A = cfg.latent_dim, cfg.mlp_dim, action_dim
        cpu_rng_state = torch.random.get_rng_state()
        torch.manual_seed(seed)  # init on the CPU: same weights on every device

        def mlp(lead, dims, last_ln, last_act, last_std=0.02):
            layers = []
            for i in range(len(dims) - 1):
                last = i == len(dims) - 2
                layers.append(new_layer(lead, dims[i], dims[i + 1],
                                         last_ln if last else True,
                                         last_act if last else "mish",
                                         last_std if last else 0.02))
            return layers

        self.enc = mlp((), [obs_dim, cfg.enc_dim, L], True, "simnorm")
        self.dyn = mlp((), [L + A, H, H, L], True, "simnorm")
        self.rew = mlp((), [L + A, H, H, cfg.num_bins], False, None, cfg.final_std)
        self.pi = mlp((), [L, H, H, 2 * A], False, None)
        self.q = mlp((cfg.num_q,), [L + A, H, H, cfg.num_bins], False, None, cfg.final_std)
        torch.random.set_rng_state(cpu_rng_state)
        self.bins = torch.linspace(cfg.vmin, cfg.vmax, cfg.num_bins, device=device, dtype=dtype)
        self.device, self.dtype = device, dtype

    def _act(self, x, act):
        if act == "mish":
            return F.mish(x)
        if act == "simnorm":
            return simnorm(x, self.cfg.simnorm_dim)
        return x

    def mlp(self, x, layers):
        for l in layers:
            x = F.linear(x, l.w, l.b)
            if l.g is not None:
                x = F.layer_norm(x, (l.out_dim,), l.g, l.beta, self.cfg.ln_eps)
            x = self._act(x, l.act)
        return x

    def encode(self, obs):
        return self.mlp(obs, self.enc)

    def next(self, za):  # za = cat([z, a])
        return self.mlp(za, self.dyn)

    def reward_logits(self, za):
        return self.mlp(za, self.rew)

    def two_hot_inv(self, logits):
        return symexp(torch.softmax(logits, dim=-1) @ self.bins)

    def pi_sample(self, z, eps):
        """Reparameterised squashed Gaussian sample tanh(mu + eps * sigma)."""
        mu, raw = self.mlp(z, self.pi).chunk(2, dim=-1)
        c = self.cfg
        log_std = c.log_std_min + 0.5 * (c.log_std_max - c.log_std_min) * (torch.tanh(raw) + 1)
        return torch.tanh(mu + eps * torch.exp(log_std))


def prepare_card(cuda, tf32, device):
    """Before a benchmark row: TF32 as the mode wants, cached blocks freed, peak memory reset."""
    if cuda:
        set_tf32(tf32)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def release_card(cuda):
    """After a row (its runner dropped): back to plain FP32, cached blocks freed."""
    if cuda:
        set_tf32(False)
        torch.cuda.empty_cache()


def skip_reason(e):
    """The one-line reason a row was skipped (compile may fail offline, a batch may not fit, ...)."""
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def row_stats(dev_ms, host_ms, cuda, device):
    """Median and p90 device ms, median host ms, and the peak GPU memory (GiB; NaN on the CPU)."""
    med, p90, host = quantile(dev_ms, 0.5), quantile(dev_ms, 0.9), quantile(host_ms, 0.5)
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else float("nan")
    return med, p90, host, mem


def measure_update(make_runner, base, iters, warmup, cuda, invariants):
    """Build an update runner (`make_runner()`), time it and check it (`invariants(runner)`,
    plus no host sync in eager mode on CUDA): (runner, dev_ms, host_ms, setup_s, problems).
    On an error the runner is dropped before it propagates, so the caller can free its memory."""
    runner = None
    try:
        t0 = time.perf_counter()
        runner = make_runner()
        setup_s = time.perf_counter() - t0  # model, optimiser, graph capture (incl. its warm-up)
        dev_ms, host_ms, warmup_s = time_runner(runner, iters, warmup, cuda)
        setup_s += warmup_s  # compile happens in the first warm-up calls
        probs = invariants(runner)
        if cuda and base == "eager":
            sync_problem = check_no_sync(runner)
            if sync_problem:
                probs.append(sync_problem)
    except BaseException:
        runner = None
        raise
    return runner, dev_ms, host_ms, setup_s, probs


def simnorm(x, group):
    shp = x.shape
    return torch.softmax(x.reshape(*shp[:-1], shp[-1] // group, group), dim=-1).reshape(shp)


def symlog(x):
    return torch.sign(x) * torch.log(1 + torch.abs(x))


def symexp(x):
    return torch.sign(x) * (torch.exp(torch.abs(x)) - 1)


def chosen_heads(u, k=2):
    # a random k-subset of the heads (TD-MPC2: randperm(num_q)[:2]), graph-safe
    return torch.argsort(u)[:k]


def rel_err(x, y):
    """Largest |x - y| relative to the largest |y| (absolute where y is all zero)."""
    x, y = torch.as_tensor(x).double(), torch.as_tensor(y).double()
    d = float((x - y.to(x.device)).abs().max()) if x.numel() else 0.0
    s = float(y.abs().max()) if y.numel() else 0.0
    return d / s if s > 0 else d


def set_tf32(on):
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


class Runner:
    """One configuration's static buffers; step() runs one unit of work (`_body`) whose outputs
    are in self.out afterwards: eagerly, replayed as a CUDA graph, or compiled with
    torch.compile (reduce-overhead). Subclasses set their buffers, then call `_start`."""

    def _start(self, base_mode):
        self.out = None
        self.graph = None
        self.compiled = None
        if base_mode == "eager":
            self.step = self._eager
        elif base_mode == "graph":
            self._capture()
            self.step = self.graph.replay
        elif base_mode == "compile":
            # a fresh dynamo cache per configuration: each one is its own static graph, and the
            # default recompile limit (8) would otherwise send later rows to eager
            torch._dynamo.reset()
            for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit"):
                if hasattr(torch._dynamo.config, name):
                    setattr(torch._dynamo.config, name, max(256, getattr(torch._dynamo.config, name)))
            self.compiled = self._compile()
            self.step = self._compiled
        else:
            raise ValueError(base_mode)

    def _body(self):
        raise NotImplementedError

    def _compile(self):
        return torch.compile(self._body, mode="reduce-overhead")

    def _compiled(self):
        torch.compiler.cudagraph_mark_step_begin()
        self.out = self.compiled()

    def _eager(self):
        self.out = self._body()

    def _before_capture(self):
        """After the warm-up runs, before capture (an optimiser drops its gradients here)."""

    def _capture(self):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):  # also creates optimiser state before capture
                self._body()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        self._before_capture()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = self._body()  # static outputs, refreshed by every replay
        torch.cuda.synchronize()


def parse_modes(names, cuda, note):
    """The benchmark modes named ("eager", "graph" or "compile", each optionally "-tf32") as
    (name, base, tf32) tuples; on the CPU the modes that need CUDA are skipped with a `note`.
    None (after a message on stderr) when a name is not a mode."""
    modes = []
    for mode in names:
        base, _, suffix = mode.partition("-")
        if base not in ("eager", "graph", "compile") or suffix not in ("", "tf32"):
            print(f"unknown mode {mode!r}", file=sys.stderr)
            return None
        if not cuda and (base != "eager" or suffix):
            note(f"mode {mode} skipped: " + ("CUDA graphs (and torch.compile reduce-overhead) need a CUDA "
                                             "device" if base != "eager" else "TF32 is a CUDA setting")
                 + "; running on the CPU")
            continue
        modes.append((mode, base, suffix == "tf32"))
    return modes


def quantile(sorted_xs, q):
    if len(sorted_xs) == 1:
        return sorted_xs[0]
    pos = q * (len(sorted_xs) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def time_runner(runner, iters, warmup, cuda, fetch=None):
    """Sorted device and host milliseconds of `iters` steps after `warmup` untimed ones, and
    the warm-up's seconds. `fetch(runner)` runs after each step inside the timed span (e.g. the
    read-back an environment loop waits for). Without CUDA the device times are the host's."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        runner.step()
    if cuda:
        torch.cuda.synchronize()
    warmup_s = time.perf_counter() - t0
    dev_ms, host_ms = [], []
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(iters):
        t0 = time.perf_counter()
        if cuda:
            start.record()
        runner.step()
        if cuda:
            end.record()
        if fetch is not None:
            fetch(runner)
        if cuda:
            torch.cuda.synchronize()
        host_ms.append((time.perf_counter() - t0) * 1e3)
        if cuda:
            dev_ms.append(start.elapsed_time(end))
    if not cuda:
        dev_ms = list(host_ms)
    return sorted(dev_ms), sorted(host_ms), warmup_s


def check_no_sync(runner, what="update"):
    """Run one eager `what` with torch's sync debug mode set to error: the problem, or None."""
    try:
        with warnings.catch_warnings():  # "prototype feature" warning
            warnings.simplefilter("ignore")
            torch.cuda.set_sync_debug_mode("error")
        try:
            runner.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return None
    except RuntimeError as e:
        return f"host synchronisation inside the {what}: {str(e).splitlines()[0]}"


# Multiply-adds per row of each TD-MPC2 network (linear layers only), for the FLOP counts.
def macs_per_row(cfg, obs_dim, action_dim):
    L, H, A, K = cfg.latent_dim, cfg.mlp_dim, action_dim, cfg.num_bins
    return {
        "enc": obs_dim * cfg.enc_dim + cfg.enc_dim * L,
        "dyn": (L + A) * H + H * H + H * L,
        "rew": (L + A) * H + H * H + H * K,
        "pi": L * H + H * H + H * 2 * A,
        "q": (L + A) * H + H * H + H * K,
    }


# The 5M preset's architecture (tdmpc2/config.yaml, model_size 5): what every script's Config
# starts from.
@dataclass(frozen=True)
class ModelConfig:
    latent_dim: int = 512
    mlp_dim: int = 512
    num_q: int = 5
    num_bins: int = 101
    vmin: float = -10.0
    vmax: float = 10.0
    simnorm_dim: int = 8
    ln_eps: float = 1e-5


# ... with the encoder and the policy's log-std range (the plan and world-model scripts).
@dataclass(frozen=True)
class WorldModelConfig(ModelConfig):
    enc_dim: int = 256
    log_std_min: float = -10.0
    log_std_max: float = 2.0


def timing_note(cuda, unit, host):
    """The header line that says how a script times each `unit` (step, update)."""
    if not cuda:
        return "timing: host wall clock (CPU)"
    return (f"timing: CUDA events around each {unit} (synchronised after each); host ms = wall "
            f"clock {host}")


def reporters(as_json):
    """`emit(obj, text)`: one JSON object per line with `as_json`, else the text (if any);
    `note(msg)`: a note either way."""

    def emit(obj, text=None):
        if as_json:
            print(json.dumps(obj), flush=True)
        elif text is not None:
            print(text, flush=True)

    def note(msg):
        emit({"type": "note", "message": msg}, "note: " + msg)

    return emit, note


def update_rows(emit, modes, batches, keys, make_runner, flops_of, extra, ctx, gf_digits=3):
    """Time an update script's rows: for each mode and batch, `measure_update` on
    `make_runner(base, B)` and emit a result row (or a skip row); returns the exit-code bits.
    `keys(B)` gives the row's key fields (dict, text columns), `flops_of(B)` the FLOPs per
    update and per run, `extra(runner)` the result-only fields; `ctx` holds cuda, device,
    dev_name, iters, warmup and invariants."""
    exit_code = 0
    cuda, device = ctx["cuda"], ctx["device"]
    for mode, base, tf32 in modes:
        for B in batches:
            key, cols = keys(B)
            flops, run_flops = flops_of(B)
            prepare_card(cuda, tf32, device)
            try:
                runner, dev_ms, host_ms, setup_s, probs = measure_update(
                    lambda: make_runner(base, B), base, ctx["iters"], ctx["warmup"], cuda,
                    ctx["invariants"])
            except Exception as e:  # compile may fail offline, a batch may not fit, ...
                msg = skip_reason(e)
                emit({"type": "skip", "mode": mode, **key, "reason": msg},
                     f"{mode:<12} {cols}  skipped: {msg}")
                if base != "compile":
                    exit_code |= 1
                release_card(cuda)
                continue
            exit_code |= 1 if probs else 0
            med, p90, host, mem = row_stats(dev_ms, host_ms, cuda, device)
            row = {
                "type": "result", "mode": mode, "tf32": tf32, **key, **extra(runner),
                "median_ms": med, "p90_ms": p90, "host_median_ms": host, "updates_per_s": 1e3 / med,
                "gflop_per_update": flops / 1e9, "gflop_run": run_flops / 1e9,
                "tflops": flops / (med / 1e3) / 1e12, "peak_mem_gib": mem, "setup_s": setup_s,
                "ok": not probs, "problems": probs, "device": ctx["dev_name"],
                "torch": torch.__version__,
            }
            g = gf_digits
            emit(row, f"{mode:<12} {cols} {med:>10.3f} {p90:>9.3f} {host:>9.3f} "
                      f"{row['updates_per_s']:>10.1f} {flops / 1e9:>10.{g}f} {run_flops / 1e9:>7.{g}f} "
                      f"{row['tflops']:>8.3f} {mem:>8.2f} {setup_s:>8.1f}  "
                      f"{'ok' if not probs else '; '.join(probs)}")
            del runner
            release_card(cuda)
    return exit_code


def start_run(args, fp32_precision_hint=True):
    """A script's run: the device (`--device`, else CUDA when available) and whether it is
    CUDA, with torch seeded by `--seed` and inductor's TF32 hint silenced (also newer torch's
    fp32_precision one when `fp32_precision_hint`)."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(args.seed)
    warnings.filterwarnings("ignore", message=".*TensorFloat32 tensor cores.*")  # inductor's hint
    if fp32_precision_hint:
        warnings.filterwarnings("ignore", message=".*allow_tf32.*")  # newer torch: fp32_precision API
    return device, device.type == "cuda"


def device_meta(device, cuda):
    """The device's name, the meta record's leading fields (device, torch, CUDA, Python) and
    the header's device line."""
    dev_name = torch.cuda.get_device_name(device) if cuda else "CPU"
    fields = {
        "type": "meta", "device": dev_name, "device_type": device.type,
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0],
    }
    line = (f"device: {dev_name} ({device.type}), torch {torch.__version__}, CUDA {torch.version.cuda}, "
            f"python {fields['python']}")
    return dev_name, fields, line


def emit_header(emit, note, meta, lines, args, cuda, unit, host):
    """Emit the run's `meta` record, its text the header `lines` and the timing note (each
    `unit` timed, the host clock `host`); returns `args.modes` parsed (None: one is unusable,
    noted)."""
    emit(meta, "\n".join(lines + [timing_note(cuda, unit, host)]))
    return parse_modes(args.modes, cuda, note)


def runs_line(args, units):
    """The header's words on the batches, modes, and timed and warm-up `units` per row."""
    return (f"batches {args.batch}, modes {args.modes}, "
            f"{args.iters} timed {units} after {args.warmup} warm-up {units} per row")


def print_table_header(as_json, header):
    """The results table's header and rule (none with --json)."""
    if not as_json:
        print(header)
        print("-" * len(header), flush=True)


def update_ctx(args, cuda, device, dev_name, invariants):
    """The `ctx` of `update_rows` for a script's arguments and device."""
    return {"cuda": cuda, "device": device, "dev_name": dev_name, "iters": args.iters,
            "warmup": args.warmup, "invariants": invariants}


def check_draws(seed, dtype, device):
    """`rnd(*shape, lo=None, hi=None)` for a reference check's data: standard normal, or
    uniform in [lo, hi), drawn in `dtype` on the CPU from a generator seeded with `seed`, then
    moved to `device` (so the data does not depend on the device)."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, lo=None, hi=None):
        if lo is None:
            x = torch.randn(*shape, generator=gen, dtype=dtype)
        else:
            x = lo + (hi - lo) * torch.rand(*shape, generator=gen, dtype=dtype)
        return x.to(device)

    return rnd


def ref_mlp(P, prefix, n, x, last_act, cfg, head=None, drop=None):
    """One plain MLP from the named tensors P (one head `head` of a stacked ensemble), written
    out for the reference checks: Linear -> (dropout mask `drop` after layer 0) -> LayerNorm ->
    Mish on the hidden layers; the last layer plain (`last_act` None) or with LayerNorm and
    `last_act` ("simnorm", else Mish)."""
    for i in range(n):
        w, b = P[f"{prefix}.{i}.weight"], P[f"{prefix}.{i}.bias"]
        if head is not None:
            w, b = w[head], b[head]
        x = F.linear(x, w, b)
        if i == 0 and drop is not None:
            x = x * drop
        last = i == n - 1
        if not last or last_act is not None:
            g, beta = P[f"{prefix}.{i}.ln.weight"], P[f"{prefix}.{i}.ln.bias"]
            if head is not None:
                g, beta = g[head], beta[head]
            x = F.layer_norm(x, (x.shape[-1],), g, beta, cfg.ln_eps)
            x = simnorm(x, cfg.simnorm_dim) if (last and last_act == "simnorm") else F.mish(x)
    return x


def add_run_args(p, units, modes):
    """The options every script shares: modes, timed and warm-up `units`, device, JSON, seed."""
    p.add_argument("--modes", nargs="+", default=modes,
                   help="eager, graph, compile, each optionally with -tf32")
    p.add_argument("--iters", type=int, default=50, help=f"timed {units} per configuration")
    p.add_argument("--warmup", type=int, default=10, help=f"untimed {units} before timing")
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    p.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    p.add_argument("--seed", type=int, default=0)


def layer_tensors(layers):
    """Every tensor of `layers`, in order (weights, biases, LayerNorm gains and shifts)."""
    return [t for l in layers for t in l.tensors()]


def named_tensors(nets, prefix):
    """{name: tensor} of `nets` ({key: layers}), named `{prefix[key]}.{layer}.{suffix}` as
    TD-MPC2's state dicts (the tensors themselves, not copies)."""
    out = {}
    for key, layers in nets.items():
        for i, l in enumerate(layers):
            for suffix, attr in l.named():
                out[f"{prefix[key]}.{i}.{suffix}"] = getattr(l, attr)
    return out


class Errors:
    """Relative errors of a reference check: `errors(what, x, y)` records rel_err(x, y), the
    worst so far in `worst`, and a problem when one exceeds `tol`."""

    def __init__(self, tol):
        self.tol, self.worst, self.problems = tol, 0.0, []

    def __call__(self, what, x, y):
        e = rel_err(x, y)
        self.worst = max(self.worst, e)
        if not e <= self.tol:
            self.problems.append(f"{what}: relative error {e:.3g}")


def new_parser(doc):
    """An argument parser described by the first paragraph of a script's docstring."""
    return argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def parse_with_check(p, argv, against):
    """`argv` parsed by `p` with the scripts' last option, --no-check, which skips the float64
    check of the batched code against the `against` reference (words ending in a space)."""
    p.add_argument("--no-check", action="store_true",
                   help=f"skip the float64 batched-vs-{against}reference check")
    return p.parse_args(argv)


def nonfinite_parameters(model):
    """["non-finite parameter NAME"] for the first of `model`'s tensors that is not finite."""
    for name, t in model.state_dict().items():
        if not bool(torch.isfinite(t).all()):
            return [f"non-finite parameter {name}"]
    return []


def add_update_args(p, cfg, dropout_help, final_layers):
    """The update scripts' shared options (batch, horizon, action dimension, the run options,
    dropout, the final layers' init std, the check's batch), defaults from `cfg`."""
    p.add_argument("--batch", type=int, nargs="+", default=[256], help="sub-trajectories per update (B)")
    p.add_argument("--horizon", type=int, default=cfg.horizon, help="T")
    p.add_argument("--action-dim", type=int, default=6, help="A")
    add_run_args(p, "updates", ["eager", "eager-tf32", "graph", "graph-tf32"])
    p.add_argument("--dropout", type=float, default=cfg.dropout, help=dropout_help)
    p.add_argument("--final-std", type=float, default=cfg.final_std,
                   help=f"init std of {final_layers} (0 = TD-MPC2's zero init)")
    p.add_argument("--check-batch", type=int, default=6, help="batch of the float64 check")
