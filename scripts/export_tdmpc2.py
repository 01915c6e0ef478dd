#!/usr/bin/env python3
"""Convert a TD-MPC2 checkpoint (`{"model": WorldModel.state_dict()}`) to a pompc weights file.

    python3 scripts/export_tdmpc2.py CHECKPOINT.pt OUT.safetensors --obs-dim O --action-dim A \
        [--model-size 5] [--episodic]

The architecture (obs_dim, action_dim, latent_dim, mlp_dim, enc_dim, number of encoder
layers, num_q, num_bins, episodic) is read from the tensor shapes; the flags, when given,
are checked against it. What the shapes cannot tell (vmin, vmax, simnorm_dim, and the
log-std range of release-era checkpoints, which lack the buffers) comes from flags with
TD-MPC2's defaults.

Both checkpoint layouts are read (see scripts/README.md):
* current code: `_Qs.params.<layer>.<name>` stacked tensors, `_detach_Qs_params.*` (dropped),
  `_target_Qs_params.*` (kept), tensordict `__batch_size` / `__device` entries (skipped),
  int64 `log_std_min` / `log_std_dif` buffers (written as float32);
* release-era code: `_Qs.params.<n>` and `_target_Qs.params.<n>` with
  n = 4 * layer + (weight, bias, ln.weight, ln.bias), converted to the stacked names.

The file is refused, with the tensor named, when a tensor is missing, has the wrong shape,
is not finite, or is not understood. Only single-task, state-observation models convert.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections import OrderedDict

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from tdmpc2_arch import MODEL_SIZE, Config, expected_shapes, write_pompc  # noqa: E402

Q_PARTS = ("weight", "bias", "ln.weight", "ln.bias")
_RELEASE_Q = re.compile(r"^(_Qs|_target_Qs)\.params\.(\d+)$")


class ExportError(Exception):
    pass


def load_checkpoint(path: str) -> dict:
    """The model's state dict from a checkpoint file, read without unpickling code."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"{path}: cannot be read with torch.load(weights_only=True): {e}")
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        return obj["model"]
    if isinstance(obj, dict) and any(str(k).startswith("_encoder.") for k in obj):
        return obj  # a bare state dict
    raise ExportError(f"{path}: expected a dict with key 'model' holding the WorldModel state dict")


def normalize(sd: dict) -> "tuple[OrderedDict, str, dict]":
    """Rename both layouts to pompc names; returns (tensors, layout name, renamed -> original)."""
    keys = list(sd)
    if any(k.startswith("_task_emb.") or k == "_action_masks" for k in keys):
        raise ExportError("multi-task checkpoint (_task_emb / _action_masks present): pompc "
                          "converts single-task models only")
    if any(k.startswith("_encoder.") and not k.startswith("_encoder.state.") for k in keys):
        bad = next(k for k in keys if k.startswith("_encoder.") and not k.startswith("_encoder.state."))
        raise ExportError(f"{bad}: only state-observation encoders (_encoder.state.*) convert")
    release = any(_RELEASE_Q.match(k) for k in keys)
    current = any(k.startswith("_Qs.params.") and not _RELEASE_Q.match(k)
                  and not k.endswith((".__batch_size", ".__device")) for k in keys)
    if release and current:
        raise ExportError("checkpoint mixes release-era (_Qs.params.<n>) and current "
                          "(_Qs.params.<layer>.<name>) Q-ensemble names")
    out = OrderedDict()
    origin = {}
    for k, v in sd.items():
        if k.endswith(".__batch_size") or k.endswith(".__device"):
            continue  # tensordict metadata, not tensors
        if k.startswith("_detach_Qs_params."):
            continue  # a view of the online heads
        m = _RELEASE_Q.match(k)
        if m:
            n = int(m.group(2))
            prefix = "_Qs.params" if m.group(1) == "_Qs" else "_target_Qs_params"
            name = f"{prefix}.{n // 4}.{Q_PARTS[n % 4]}"
            origin[name] = k
        else:
            name = k
        if not isinstance(v, torch.Tensor):
            raise ExportError(f"{k}: is a {type(v).__name__}, not a tensor")
        if name in out:
            raise ExportError(f"{k}: maps to {name}, which is already present")
        out[name] = v
    layout = "release-era (flattened Q ensemble)" if release else "current (tensordict)"
    return out, layout, origin


def _release_name(name: str, layout: str) -> str:
    """The release-era key a stacked Q name comes from, for error messages."""
    m = re.match(r"^(_Qs\.params|_target_Qs_params)\.(\d+)\.(.+)$", name)
    if not layout.startswith("release") or not m or m.group(3) not in Q_PARTS:
        return name
    prefix = "_Qs.params" if m.group(1) == "_Qs.params" else "_target_Qs.params"
    return f"{name} (release-era {prefix}.{4 * int(m.group(2)) + Q_PARTS.index(m.group(3))})"


def _shape(t: dict, name: str) -> tuple:
    if name not in t:
        raise ExportError(f"missing tensor {name}")
    return tuple(t[name].shape)


def infer_config(t: dict, args) -> Config:
    """The architecture from the tensor shapes, checked against the flags."""
    n_enc = 0
    while f"_encoder.state.{n_enc}.weight" in t:
        n_enc += 1
    if n_enc < 2:
        raise ExportError(f"missing tensor _encoder.state.{n_enc}.weight (an encoder has at "
                          "least 2 layers)")
    enc_dim, obs_dim = _shape(t, "_encoder.state.0.weight")
    latent_dim = _shape(t, f"_encoder.state.{n_enc - 1}.weight")[0]
    mlp_dim, dyn_in = _shape(t, "_dynamics.0.weight")
    pi_out = _shape(t, "_pi.2.weight")[0]
    if pi_out % 2:
        raise ExportError(f"_pi.2.weight: {pi_out} outputs, expected 2 * action_dim")
    action_dim = pi_out // 2
    num_bins = _shape(t, "_reward.2.weight")[0]
    qs = _shape(t, "_Qs.params.0.weight")
    if len(qs) != 3:
        raise ExportError(f"_Qs.params.0.weight: shape {list(qs)}, expected [num_q, out, in]")
    num_q = qs[0]
    episodic = "_termination.0.weight" in t

    if dyn_in != latent_dim + action_dim:
        raise ExportError(f"_dynamics.0.weight: input width {dyn_in}, expected latent_dim "
                          f"{latent_dim} + action_dim {action_dim} (task embeddings are not supported)")
    for flag, got, what in ((args.obs_dim, obs_dim, "obs_dim"), (args.action_dim, action_dim, "action_dim")):
        if flag is not None and flag != got:
            raise ExportError(f"--{what.replace('_', '-')} {flag}, but the checkpoint's shapes give {got}")
    if args.episodic and not episodic:
        raise ExportError("--episodic given, but the checkpoint has no termination head "
                          "(missing tensor _termination.0.weight)")
    if args.model_size is not None:
        p = MODEL_SIZE[args.model_size]
        got = dict(enc_dim=enc_dim, mlp_dim=mlp_dim, latent_dim=latent_dim, num_q=num_q,
                   enc_layers=n_enc)
        want = dict(p, enc_layers=max(p["num_enc_layers"] - 1, 1) + 1)
        want.pop("num_enc_layers")
        diff = [f"{k} {got[k]} (preset {want[k]})" for k in want if got[k] != want[k]]
        if diff:
            raise ExportError(f"--model-size {args.model_size} does not match the checkpoint: "
                              + ", ".join(diff))

    for k in ("log_std_min", "log_std_dif"):
        if k in t and tuple(t[k].shape) != ():
            raise ExportError(f"{k}: shape {list(t[k].shape)}, expected a scalar []")
    if "log_std_min" in t or "log_std_dif" in t:
        lo = float(t["log_std_min"]) if "log_std_min" in t else None
        dif = float(t["log_std_dif"]) if "log_std_dif" in t else None
        if lo is None or dif is None:
            raise ExportError("missing tensor " + ("log_std_min" if lo is None else "log_std_dif")
                              + " (the other log-std buffer is present)")
        log_std_min, log_std_max = lo, lo + dif
    else:
        log_std_min, log_std_max = args.log_std_min, args.log_std_max

    cfg = Config(obs_dim=obs_dim, action_dim=action_dim, latent_dim=latent_dim, mlp_dim=mlp_dim,
                 enc_dim=enc_dim, num_enc_layers=n_enc, num_q=num_q, num_bins=num_bins,
                 vmin=args.vmin, vmax=args.vmax, simnorm_dim=args.simnorm_dim,
                 log_std_min=log_std_min, log_std_max=log_std_max, episodic=episodic)
    try:
        cfg.validate()
    except ValueError as e:
        raise ExportError(str(e))
    return cfg


def convert(sd: dict, args) -> "tuple[Config, OrderedDict, str]":
    """A TD-MPC2 state dict -> (Config, pompc float32 tensors, layout name)."""
    t, layout, origin = normalize(sd)
    try:
        cfg = infer_config(t, args)
    except ExportError as e:
        msg = str(e)
        if msg.startswith("missing tensor "):
            name = msg[len("missing tensor "):].split(" ")[0]
            msg = msg.replace(name, _release_name(name, layout), 1)
        raise ExportError(msg)
    has_target = any(k.startswith("_target_Qs_params.") for k in t) and not args.drop_target
    want = expected_shapes(cfg, target=has_target)
    out = OrderedDict()
    for name, shape in want.items():
        if name in ("log_std_min", "log_std_dif") and name not in t:
            v = torch.tensor(cfg.log_std_min if name == "log_std_min"
                             else cfg.log_std_max - cfg.log_std_min)
        elif name not in t:
            raise ExportError(f"missing tensor {_release_name(name, layout)} "
                              f"(expected shape {list(shape)})")
        else:
            v = t[name]
        shown = f"{name} (release-era {origin[name]})" if name in origin else name
        if tuple(v.shape) != shape:
            raise ExportError(f"{shown}: shape {list(v.shape)}, expected {list(shape)}")
        if name in ("log_std_min", "log_std_dif"):
            if v.dtype not in (torch.int64, torch.int32, torch.float32, torch.float64):
                raise ExportError(f"{name}: dtype {v.dtype}, expected an integer or float scalar")
        elif not v.is_floating_point():
            raise ExportError(f"{shown}: dtype {v.dtype}, expected floating point")
        v = v.detach().to(torch.float32).contiguous()
        if not torch.isfinite(v).all():
            bad = int((~torch.isfinite(v)).sum())
            raise ExportError(f"{shown}: {bad} non-finite value(s)")
        out[name] = v
    ignored = {k for k in t if k.startswith("_target_Qs_params.")} if args.drop_target else set()
    extra = sorted(set(t) - set(want) - ignored)
    if extra:
        kind = "an episodic" if cfg.episodic else "a non-episodic"
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise ExportError(f"tensor {origin.get(extra[0], extra[0])} is not part of {kind} "
                          f"single-task TD-MPC2 world model{more}")
    return cfg, out, layout


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="Convert a TD-MPC2 checkpoint to a pompc weights file.")
    ap.add_argument("checkpoint", help="TD-MPC2 checkpoint (.pt): {'model': state_dict}")
    ap.add_argument("out", help="output .safetensors file")
    ap.add_argument("--obs-dim", type=int, help="observation size (checked against the encoder)")
    ap.add_argument("--action-dim", type=int, help="action size (checked against the policy)")
    ap.add_argument("--model-size", type=int, choices=sorted(MODEL_SIZE),
                    help="TD-MPC2 model size preset in millions of parameters (checked)")
    ap.add_argument("--episodic", action="store_true",
                    help="require a termination head (it is exported whenever present)")
    ap.add_argument("--vmin", type=float, default=-10.0, help="lowest two-hot bin (symlog space)")
    ap.add_argument("--vmax", type=float, default=10.0, help="highest two-hot bin (symlog space)")
    ap.add_argument("--simnorm-dim", type=int, default=8, help="SimNorm group size")
    ap.add_argument("--log-std-min", type=float, default=-10.0,
                    help="used only when the checkpoint has no log_std buffers (release-era)")
    ap.add_argument("--log-std-max", type=float, default=2.0,
                    help="used only when the checkpoint has no log_std buffers (release-era)")
    ap.add_argument("--drop-target", action="store_true",
                    help="do not write the target Q ensemble (_target_Qs_params.*)")
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        sd = load_checkpoint(args.checkpoint)
        cfg, tensors, layout = convert(sd, args)
    except ExportError as e:
        print(f"export_tdmpc2: refused: {e}", file=sys.stderr)
        return 1
    write_pompc(args.out, tensors, cfg.metadata())
    n = sum(v.numel() for k, v in tensors.items() if not k.startswith("_target_Qs_params."))
    print(f"{args.checkpoint}: {layout} layout -> {args.out}")
    print(f"  obs {cfg.obs_dim}, action {cfg.action_dim}, latent {cfg.latent_dim}, mlp {cfg.mlp_dim}, "
          f"enc {cfg.enc_dim} x {cfg.num_enc_layers} layers, num_q {cfg.num_q}, bins {cfg.num_bins}, "
          f"episodic {str(cfg.episodic).lower()}, log_std [{cfg.log_std_min:g}, {cfg.log_std_max:g}]")
    print(f"  {len(tensors)} tensors, {n:,} parameters"
          + (" (+ target Q copy)" if any(k.startswith("_target_Qs_params.") for k in tensors) else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
