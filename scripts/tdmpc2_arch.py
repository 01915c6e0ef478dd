"""TD-MPC2's world model (state observations, single task) written for pompc.

This module is shared by `make_fixtures.py`, `export_tdmpc2.py` and `check_export.py`.
It holds:

* `Config`: the hyper-parameters stored in a pompc weights file's metadata;
* `MODEL_SIZE`: TD-MPC2's model-size presets;
* `expected_shapes`: every tensor of a pompc weights file with its shape;
* `Model`: the networks as torch modules whose `state_dict()` names are exactly the
  pompc tensor names, with `encode`, `next`, `reward_logits`, `q_logits`,
  `termination_logit` and `pi`;
* the scalar helpers (symlog, symexp, two_hot, two_hot_inv, the log-std map);
* `read_pompc` / `write_pompc`: the safetensors file with its metadata.

Everything works in whatever float dtype the model and inputs are in; the fixtures use
float64 (`model.double()`).

The math follows docs/algorithm.md sections b.2 and b.3 (the shared docs).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

FORMAT = "pompc-tdmpc2"

# TD-MPC2's model sizes (millions of parameters) and the settings each one overrides
# in the default config (tdmpc2/common/__init__.py, checked at HEAD e9f5932).
# Keys not listed keep the config defaults: num_q 5, simnorm_dim 8, num_bins 101.
# Note: TD-MPC2 uses latent_dim 512 instead of 768 for its mt30 19M checkpoint.
MODEL_SIZE = {
    1: dict(enc_dim=256, mlp_dim=384, latent_dim=128, num_enc_layers=2, num_q=2),
    5: dict(enc_dim=256, mlp_dim=512, latent_dim=512, num_enc_layers=2, num_q=5),
    19: dict(enc_dim=1024, mlp_dim=1024, latent_dim=768, num_enc_layers=3, num_q=5),
    48: dict(enc_dim=1792, mlp_dim=1792, latent_dim=768, num_enc_layers=4, num_q=5),
    317: dict(enc_dim=4096, mlp_dim=4096, latent_dim=1376, num_enc_layers=5, num_q=8),
}

# 0.5 * ln(2 pi) exactly as TD-MPC2 writes it (the float32 value, as a double literal).
HALF_LOG_2PI = 0.9189385175704956
LN_EPS = 1e-5


# --------------------------------------------------------------------------- config

_INT_KEYS = ("obs_dim", "action_dim", "latent_dim", "mlp_dim", "enc_dim", "num_enc_layers",
             "num_q", "num_bins", "simnorm_dim")
_FLOAT_KEYS = ("vmin", "vmax", "log_std_min", "log_std_max")


@dataclasses.dataclass
class Config:
    obs_dim: int
    action_dim: int
    latent_dim: int
    mlp_dim: int
    enc_dim: int
    num_enc_layers: int
    num_q: int
    num_bins: int = 101
    vmin: float = -10.0
    vmax: float = 10.0
    simnorm_dim: int = 8
    log_std_min: float = -10.0
    log_std_max: float = 2.0
    episodic: bool = False

    @property
    def enc_hidden_layers(self) -> int:
        """Hidden (LN, Mish) layers of the encoder. TD-MPC2 uses max(num_enc_layers - 1, 1)."""
        return max(self.num_enc_layers - 1, 1)

    @property
    def bin_size(self) -> float:
        return (self.vmax - self.vmin) / (self.num_bins - 1)

    def validate(self) -> None:
        for k in _INT_KEYS:
            if getattr(self, k) < 1:
                raise ValueError(f"config: {k} = {getattr(self, k)} must be >= 1")
        if self.num_bins < 2:
            raise ValueError("config: num_bins must be >= 2 (two-hot regression)")
        if self.latent_dim % self.simnorm_dim:
            raise ValueError(f"config: latent_dim {self.latent_dim} is not a multiple of "
                             f"simnorm_dim {self.simnorm_dim}")
        if not self.vmin < self.vmax:
            raise ValueError("config: vmin must be < vmax")
        if not self.log_std_min < self.log_std_max:
            raise ValueError("config: log_std_min must be < log_std_max")

    def metadata(self) -> dict:
        md = {"format": FORMAT}
        for k in _INT_KEYS:
            md[k] = str(int(getattr(self, k)))
        for k in _FLOAT_KEYS:
            md[k] = repr(float(getattr(self, k)))
        md["episodic"] = "true" if self.episodic else "false"
        return md

    @classmethod
    def from_metadata(cls, md: dict) -> "Config":
        if md.get("format") != FORMAT:
            raise ValueError(f"metadata format is {md.get('format')!r}, expected {FORMAT!r}")
        kw = {}
        for k in _INT_KEYS:
            kw[k] = int(md[k])
        for k in _FLOAT_KEYS:
            kw[k] = float(md[k])
        if md["episodic"] not in ("true", "false"):
            raise ValueError(f"metadata episodic is {md['episodic']!r}, expected true or false")
        kw["episodic"] = md["episodic"] == "true"
        cfg = cls(**kw)
        cfg.validate()
        return cfg


# --------------------------------------------------------------------------- names

def _mlp_shapes(prefix, dims, last_ln):
    """Shapes of one MLP: every layer but the last has LayerNorm; the last has it if last_ln."""
    out = OrderedDict()
    n = len(dims) - 1
    for i in range(n):
        fan_in, fan_out = dims[i], dims[i + 1]
        out[f"{prefix}.{i}.weight"] = (fan_out, fan_in)
        out[f"{prefix}.{i}.bias"] = (fan_out,)
        if i < n - 1 or last_ln:
            out[f"{prefix}.{i}.ln.weight"] = (fan_out,)
            out[f"{prefix}.{i}.ln.bias"] = (fan_out,)
    return out


def q_shapes(cfg: Config, prefix: str = "_Qs.params") -> "OrderedDict[str, tuple]":
    L, A, H, K, N = cfg.latent_dim, cfg.action_dim, cfg.mlp_dim, cfg.num_bins, cfg.num_q
    one = _mlp_shapes(prefix, [L + A, H, H, K], last_ln=False)
    return OrderedDict((k, (N,) + v) for k, v in one.items())


def expected_shapes(cfg: Config, target: bool = False) -> "OrderedDict[str, tuple]":
    """Every tensor of a pompc weights file, in a fixed order, with its shape.

    With target=True the Polyak target copy of the Q ensemble (`_target_Qs_params.*`) is
    listed too; it is optional in the format.
    """
    L, A, H, O, E, K = (cfg.latent_dim, cfg.action_dim, cfg.mlp_dim, cfg.obs_dim,
                        cfg.enc_dim, cfg.num_bins)
    s = OrderedDict()
    s.update(_mlp_shapes("_encoder.state", [O] + [E] * cfg.enc_hidden_layers + [L], last_ln=True))
    s.update(_mlp_shapes("_dynamics", [L + A, H, H, L], last_ln=True))
    s.update(_mlp_shapes("_reward", [L + A, H, H, K], last_ln=False))
    if cfg.episodic:
        s.update(_mlp_shapes("_termination", [L, H, H, 1], last_ln=False))
    s.update(_mlp_shapes("_pi", [L, H, H, 2 * A], last_ln=False))
    s.update(q_shapes(cfg))
    if target:
        s.update(q_shapes(cfg, "_target_Qs_params"))
    s["log_std_min"] = ()
    s["log_std_dif"] = ()
    return s


# --------------------------------------------------------------------------- helpers

def symlog(x):
    return torch.sign(x) * torch.log1p(torch.abs(x))


def symexp(x):
    return torch.sign(x) * torch.expm1(torch.abs(x))


def bins(cfg: Config, like: torch.Tensor) -> torch.Tensor:
    return torch.linspace(cfg.vmin, cfg.vmax, cfg.num_bins, dtype=like.dtype, device=like.device)


def two_hot_inv(logits: torch.Tensor, cfg: Config) -> torch.Tensor:
    """symexp of the softmax-weighted mean bin; reduces the last dimension."""
    p = torch.softmax(logits, dim=-1)
    return symexp((p * bins(cfg, logits)).sum(-1))


def two_hot(x: torch.Tensor, cfg: Config) -> torch.Tensor:
    """[B] scalars -> [B, num_bins] soft two-hot targets in symlog space."""
    y = torch.clamp(symlog(x), cfg.vmin, cfg.vmax)
    pos = (y - cfg.vmin) / cfg.bin_size
    k = torch.floor(pos)
    frac = pos - k
    k = k.long()
    out = torch.zeros(x.shape[0], cfg.num_bins, dtype=x.dtype, device=x.device)
    rows = torch.arange(x.shape[0], device=x.device)
    # The upper neighbour wraps around (k + 1 = num_bins only when frac = 0).
    out[rows, k] += 1 - frac
    out[rows, (k + 1) % cfg.num_bins] += frac
    return out


def log_std_map(raw, lo, dif):
    """Raw network output -> log std in [lo, lo + dif]."""
    return lo + 0.5 * dif * (torch.tanh(raw) + 1)


# --------------------------------------------------------------------------- modules

class SimNorm(nn.Module):
    """Softmax within consecutive groups of `group` entries of the last dimension."""

    def __init__(self, group: int):
        super().__init__()
        self.group = group

    def forward(self, x):
        shape = x.shape
        g = torch.softmax(x.reshape(*shape[:-1], shape[-1] // self.group, self.group), dim=-1)
        return g.reshape(shape)


class NormedLinear(nn.Module):
    """y = act(LayerNorm(x W^T + b)); parameters named weight, bias, ln.weight, ln.bias."""

    def __init__(self, fan_in: int, fan_out: int, act: nn.Module):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(fan_out, fan_in))
        self.bias = nn.Parameter(torch.empty(fan_out))
        self.ln = nn.LayerNorm(fan_out, eps=LN_EPS)
        self.act = act

    def forward(self, x):
        return self.act(self.ln(F.linear(x, self.weight, self.bias)))


def make_mlp(dims, last_act=None) -> nn.Sequential:
    """NormedLinear (Mish) hidden layers, then NormedLinear(last_act) or a plain Linear."""
    layers = [NormedLinear(dims[i], dims[i + 1], nn.Mish()) for i in range(len(dims) - 2)]
    if last_act is None:
        layers.append(nn.Linear(dims[-2], dims[-1]))
    else:
        layers.append(NormedLinear(dims[-2], dims[-1], last_act))
    return nn.Sequential(*layers)


class _StackedLN(nn.Module):
    def __init__(self, n: int, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, width))
        self.bias = nn.Parameter(torch.empty(n, width))

    def forward(self, x):  # x [n, B, width]
        y = F.layer_norm(x, (x.shape[-1],), eps=LN_EPS)
        return y * self.weight[:, None, :] + self.bias[:, None, :]


class StackedLinear(nn.Module):
    """num_q independent linear layers: weight [n, out, in], bias [n, out], optional ln."""

    def __init__(self, n: int, fan_in: int, fan_out: int, normed: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, fan_out, fan_in))
        self.bias = nn.Parameter(torch.empty(n, fan_out))
        self.ln = _StackedLN(n, fan_out) if normed else None
        self.act = nn.Mish() if normed else None

    def forward(self, x):  # x [B, in] (shared) or [n, B, in]
        if x.dim() == 2:
            y = torch.einsum("bi,noi->nbo", x, self.weight)
        else:
            y = torch.einsum("nbi,noi->nbo", x, self.weight)
        y = y + self.bias[:, None, :]
        if self.ln is not None:
            y = self.act(self.ln(y))
        return y


class QEnsemble(nn.Module):
    """The Q heads with stacked parameters, state_dict names `params.<layer>.*`."""

    def __init__(self, n: int, dims):
        super().__init__()
        last = len(dims) - 2
        self.params = nn.ModuleDict({
            str(i): StackedLinear(n, dims[i], dims[i + 1], normed=i < last)
            for i in range(len(dims) - 1)
        })

    def forward(self, x):
        for i in range(len(self.params)):
            x = self.params[str(i)](x)
        return x


class Model(nn.Module):
    """TD-MPC2's world model; `state_dict()` yields the pompc tensor names.

    The Q heads run without dropout (pompc plans and evaluates without it).
    """

    def __init__(self, cfg: Config, with_target: bool = False):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        L, A, H, O, E, K = (cfg.latent_dim, cfg.action_dim, cfg.mlp_dim, cfg.obs_dim,
                            cfg.enc_dim, cfg.num_bins)
        self._encoder = nn.ModuleDict({
            "state": make_mlp([O] + [E] * cfg.enc_hidden_layers + [L], SimNorm(cfg.simnorm_dim))
        })
        self._dynamics = make_mlp([L + A, H, H, L], SimNorm(cfg.simnorm_dim))
        self._reward = make_mlp([L + A, H, H, K])
        self._termination = make_mlp([L, H, H, 1]) if cfg.episodic else None
        self._pi = make_mlp([L, H, H, 2 * A])
        self._Qs = QEnsemble(cfg.num_q, [L + A, H, H, K])
        # Not a submodule attribute name with a dot, so it is stored as `_target_Qs_params.*`.
        self._target_Qs_params = (QEnsemble(cfg.num_q, [L + A, H, H, K]).params
                                  if with_target else None)
        self.register_buffer("log_std_min", torch.tensor(float(cfg.log_std_min)))
        self.register_buffer("log_std_dif", torch.tensor(float(cfg.log_std_max - cfg.log_std_min)))

    # ---- networks
    def encode(self, obs):
        return self._encoder["state"](obs)

    def next(self, z, a):
        return self._dynamics(torch.cat([z, a], dim=-1))

    def reward_logits(self, z, a):
        return self._reward(torch.cat([z, a], dim=-1))

    def q_logits(self, z, a, target: bool = False):
        """[num_q, B, num_bins] logits of every head."""
        x = torch.cat([z, a], dim=-1)
        if not target:
            return self._Qs(x)
        if self._target_Qs_params is None:
            raise ValueError("this model has no target Q parameters")
        for i in range(len(self._target_Qs_params)):
            x = self._target_Qs_params[str(i)](x)
        return x

    def termination_logit(self, z):
        if self._termination is None:
            raise ValueError("this model is not episodic (no termination head)")
        return self._termination(z).squeeze(-1)

    def pi(self, z, eps):
        """The policy prior with given noise eps [B, A], as TD-MPC2's `WorldModel.pi`.

        Returns a dict of [B, A] `mean` (tanh of the raw mean), `log_std`, `action`
        (tanh(raw_mean + exp(log_std) * eps)) and [B] `log_prob` (after the squash
        correction), `entropy` (= -log_prob) and `scaled_entropy`.
        """
        raw_mean, raw_log_std = self._pi(z).chunk(2, dim=-1)
        log_std = log_std_map(raw_log_std, self.log_std_min, self.log_std_dif)
        # Gaussian log-prob of the pre-squash sample, summed over actions.
        lp_gauss = (-0.5 * eps.pow(2) - log_std - HALF_LOG_2PI).sum(-1)
        scaled_lp = lp_gauss * eps.shape[-1]
        pre = raw_mean + eps * log_std.exp()
        mean = torch.tanh(raw_mean)
        action = torch.tanh(pre)
        log_prob = lp_gauss - torch.log(F.relu(1 - action.pow(2)) + 1e-6).sum(-1)
        entropy_scale = scaled_lp / (log_prob + 1e-8)
        return {
            "mean": mean,
            "log_std": log_std,
            "action": action,
            "log_prob": log_prob,
            "entropy": -log_prob,
            "scaled_entropy": -log_prob * entropy_scale,
            "pre_squash": pre,
        }

    def pompc_tensors(self) -> "OrderedDict[str, torch.Tensor]":
        """The weights as float32 tensors under their pompc names, in expected_shapes order."""
        sd = self.state_dict()
        names = expected_shapes(self.cfg, target=self._target_Qs_params is not None)
        out = OrderedDict()
        for k, shape in names.items():
            t = sd[k].detach().to(torch.float32).contiguous()
            assert tuple(t.shape) == shape, (k, t.shape, shape)
            out[k] = t
        return out


# --------------------------------------------------------------------------- files

def write_pompc(path, tensors: "dict[str, torch.Tensor]", metadata: "dict[str, str]") -> None:
    """Write a safetensors file with deterministic bytes.

    Tensors are laid out in sorted-name order, the JSON header has sorted keys and no
    spaces, and is padded with spaces to a multiple of 8 bytes, as the safetensors
    spec allows. Only float32 tensors are accepted.
    """
    header = {"__metadata__": {k: str(v) for k, v in sorted(metadata.items())}}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name]
        if t.dtype != torch.float32:
            raise TypeError(f"{name}: dtype {t.dtype}, only float32 is written")
        data = t.detach().cpu().contiguous().numpy().astype("<f4", copy=False).tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    h = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for b in blobs:
            f.write(b)


def read_pompc(path):
    """(Config, {name: float32 tensor}, metadata) from a pompc weights file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        md = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return Config.from_metadata(md), tensors, md


def load_model(path, dtype=torch.float64, with_target=None):
    """Build a Model from a pompc file (weights cast to dtype); returns (model, tensors, md)."""
    cfg, tensors, md = read_pompc(path)
    has_target = any(k.startswith("_target_Qs_params.") for k in tensors)
    if with_target is None:
        with_target = has_target
    model = Model(cfg, with_target=with_target)
    weights = {k: v for k, v in tensors.items() if k in expected_shapes(cfg, target=with_target)}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing:
        raise ValueError(f"{path}: missing tensors {missing}")
    model = model.to(dtype).eval()
    return model, tensors, md


def param_count(cfg: Config) -> int:
    return sum(math.prod(s) for k, s in expected_shapes(cfg).items() if s)
