#!/usr/bin/env python3
"""Check export_tdmpc2.py and the pompc architecture against TD-MPC2's own WorldModel.

Run by hand (not in CI); it needs a checkout of TD-MPC2 (github.com/nicklashansen/tdmpc2)
and the Python packages its WorldModel imports:

    pip install torch safetensors numpy tensordict
    python3 scripts/check_export.py /path/to/tdmpc2-checkout [--keep DIR]

For each of four configurations (including TD-MPC2's model_size 1 preset) it
1. builds TD-MPC2's `WorldModel` on the CPU (float32), gives it random non-degenerate
   weights (a different target Q copy), and saves a checkpoint with TD-MPC2's own
   `TDMPC2.save` (`{"model": state_dict}`);
2. rewrites that checkpoint into the release-era layout (flattened `_Qs.params.<n>`,
   `_target_Qs.params.<n>`, no log-std buffers, no detach copy, no tensordict entries);
3. exports both with `export_tdmpc2.py` (its command line);
4. loads each checkpoint back into a float64 TD-MPC2 `WorldModel` with TD-MPC2's own
   `TDMPC2.load` (which converts release-era files with its `api_model_conversion`), and
   compares encode, next, reward (logits and decoded), every online and target Q head
   (logits and decoded), termination and pi (same eps) with the exported file loaded into
   scripts/tdmpc2_arch.py, in float64 (must agree to 1e-5; they agree to ~1e-15) and in
   float32 against the float32 TD-MPC2 model (reported);
5. checks that the exporter refuses broken checkpoints, naming the tensor.

It also compares tests/fixtures/*.safetensors with TD-MPC2's model and math helpers, and
MODEL_SIZE in tdmpc2_arch.py with TD-MPC2's presets.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import types
from collections import OrderedDict
from pathlib import Path

sys.dont_write_bytecode = True
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import export_tdmpc2 as ex  # noqa: E402
import tdmpc2_arch as arch  # noqa: E402
from make_fixtures import init_weights  # noqa: E402
from tdmpc2_arch import Config  # noqa: E402

TOL = 1e-5
B = 64

CASES = [
    # name, Config, model_size flag (or None), TD-MPC2 num_enc_layers
    ("tiny-like", Config(obs_dim=5, action_dim=3, latent_dim=16, mlp_dim=24, enc_dim=20,
                         num_enc_layers=2, num_q=2, episodic=False), None, 2),
    ("small-like", Config(obs_dim=11, action_dim=4, latent_dim=40, mlp_dim=56, enc_dim=36,
                          num_enc_layers=3, num_q=3, episodic=True), None, 3),
    # TD-MPC2 builds max(num_enc_layers - 1, 1) hidden layers: num_enc_layers 1 gives 2 layers.
    ("enc1-q5", Config(obs_dim=7, action_dim=2, latent_dim=24, mlp_dim=32, enc_dim=28,
                       num_enc_layers=2, num_q=5, episodic=True), None, 1),
    ("model_size-1", Config(obs_dim=24, action_dim=6, latent_dim=128, mlp_dim=384, enc_dim=256,
                            num_enc_layers=2, num_q=2, episodic=False), 1, 2),
]


# --------------------------------------------------------------------------- TD-MPC2 side

def import_tdmpc2(repo: Path):
    src = repo / "tdmpc2"
    if not (src / "common" / "world_model.py").exists():
        sys.exit(f"{repo}: not a TD-MPC2 checkout (no tdmpc2/common/world_model.py)")
    sys.path.insert(0, str(src))
    import common  # noqa: F401
    from common import math as tmath
    from common.world_model import WorldModel
    import tdmpc2 as agent_mod
    return types.SimpleNamespace(WorldModel=WorldModel, math=tmath, TDMPC2=agent_mod.TDMPC2,
                                 MODEL_SIZE=common.MODEL_SIZE, src=src)


def tdmpc2_cfg(cfg: Config, num_enc_layers: int):
    """A config object with the fields TD-MPC2's WorldModel and math helpers read."""
    return types.SimpleNamespace(
        multitask=False, obs="state", obs_shape={"state": (cfg.obs_dim,)}, task_dim=0,
        action_dim=cfg.action_dim, latent_dim=cfg.latent_dim, mlp_dim=cfg.mlp_dim,
        enc_dim=cfg.enc_dim, num_enc_layers=num_enc_layers, simnorm_dim=cfg.simnorm_dim,
        num_bins=cfg.num_bins, vmin=int(cfg.vmin), vmax=int(cfg.vmax),
        bin_size=(cfg.vmax - cfg.vmin) / (cfg.num_bins - 1), num_q=cfg.num_q, dropout=0.01,
        episodic=cfg.episodic, log_std_min=int(cfg.log_std_min), log_std_max=int(cfg.log_std_max),
        tau=0.01)


def new_world_model(T, tcfg, dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return T.WorldModel(tcfg)
    finally:
        torch.set_default_dtype(old)


def fill_world_model(wm, weights: dict, target: dict):
    """Load pompc-named weights (and a target Q copy) into TD-MPC2's WorldModel.

    The tensordict ensembles hand out copies in state_dict(), so this goes through
    load_state_dict, as TD-MPC2's own loader does; the detach copy gets the online values.
    """
    sd = wm.state_dict()
    done = set()
    for k, v in list(weights.items()) + list(target.items()):
        if k in ("log_std_min", "log_std_dif"):
            continue
        assert tuple(sd[k].shape) == tuple(v.shape), (k, sd[k].shape, v.shape)
        sd[k] = v.to(sd[k].dtype)
        done.add(k)
        if k.startswith("_Qs.params."):
            sd[k.replace("_Qs.params.", "_detach_Qs_params.")] = sd[k]
    # Newer tensordict versions also list the ensembles' meta-device module templates.
    left = [k for k, v in sd.items() if isinstance(v, torch.Tensor) and v.is_floating_point()
            and not v.is_meta and k not in done and not k.startswith("_detach_Qs_params.")]
    assert not left, left
    wm.load_state_dict(sd)
    again = wm.state_dict()
    for k in done:
        assert torch.equal(again[k], sd[k]), k
        if k.startswith("_Qs.params."):
            assert torch.equal(again[k.replace("_Qs.params.", "_detach_Qs_params.")], sd[k]), k


def tdmpc2_outputs(T, wm, tcfg, obs, act, eps):
    wm.eval()
    out = {}
    with torch.no_grad():
        z = wm.encode(obs, None)
        out["z"] = z
        out["next_z"] = wm.next(z, act, None)
        rl = wm.reward(z, act, None)
        out["reward_logits"] = rl
        out["reward"] = T.math.two_hot_inv(rl, tcfg).squeeze(-1)
        q = wm.Q(z, act, None, return_type="all")
        out["q_logits"] = q
        out["q"] = T.math.two_hot_inv(q, tcfg).squeeze(-1)
        qd = wm.Q(z, act, None, return_type="all", detach=True)
        assert torch.equal(qd, q), "detach Q heads differ from online heads"
        qt = wm.Q(z, act, None, return_type="all", target=True)
        out["target_q_logits"] = qt
        if tcfg.episodic:
            out["termination_logit"] = wm.termination(z, None, unnormalized=True).squeeze(-1)
        real = torch.randn_like
        torch.randn_like = lambda x, *a, **k: eps.to(x.dtype).clone()
        try:
            action, info = wm.pi(z, None)
        finally:
            torch.randn_like = real
        out["pi_mean"] = info["mean"]
        out["pi_log_std"] = info["log_std"]
        out["pi_action"] = action
        out["pi_entropy"] = info["entropy"].squeeze(-1)
        out["pi_log_prob"] = -info["entropy"].squeeze(-1)
        out["pi_scaled_entropy"] = info["scaled_entropy"].squeeze(-1)
    return out


def pompc_outputs(model, obs, act, eps):
    cfg = model.cfg
    out = {}
    with torch.no_grad():
        z = model.encode(obs)
        out["z"] = z
        out["next_z"] = model.next(z, act)
        rl = model.reward_logits(z, act)
        out["reward_logits"] = rl
        out["reward"] = arch.two_hot_inv(rl, cfg)
        q = model.q_logits(z, act)
        out["q_logits"] = q
        out["q"] = arch.two_hot_inv(q, cfg)
        if model._target_Qs_params is not None:
            out["target_q_logits"] = model.q_logits(z, act, target=True)
        if cfg.episodic:
            out["termination_logit"] = model.termination_logit(z)
        p = model.pi(z, eps)
        for k in ("mean", "log_std", "action", "entropy", "log_prob", "scaled_entropy"):
            out[f"pi_{k}"] = p[k]
    return out


def compare(ref: dict, got: dict, keys=None) -> "OrderedDict[str, tuple]":
    """name -> (max abs error, max error / max(1, |ref|))."""
    res = OrderedDict()
    for k in keys or ref:
        r, g = ref[k].double(), got[k].double()
        assert r.shape == g.shape, (k, r.shape, g.shape)
        d = (r - g).abs()
        res[k] = (float(d.max()), float((d / r.abs().clamp(min=1.0)).max()))
    return res


def report(title, res, tol=None):
    worst = max(v[1] for v in res.values())
    print(f"  {title}: max scaled error {worst:.2e}" + (f" (limit {tol:g})" if tol else ""))
    for k, (a, s) in res.items():
        print(f"      {k:<20} abs {a:.2e}  scaled {s:.2e}")
    if tol is not None and worst > tol:
        raise SystemExit(f"FAILED: {title}: error {worst:.3e} > {tol:g}")
    return worst


# --------------------------------------------------------------------------- checks

def to_release(sd: dict) -> OrderedDict:
    """The current-layout state dict rewritten as the release-era code saved it."""
    out = OrderedDict()
    for k, v in sd.items():
        if k.endswith((".__batch_size", ".__device")) or k.startswith("_detach_Qs_params."):
            continue
        if k in ("log_std_min", "log_std_dif"):
            continue
        m = re.match(r"^(_Qs\.params|_target_Qs_params)\.(\d+)\.(.+)$", k)
        if m:
            n = 4 * int(m.group(2)) + ex.Q_PARTS.index(m.group(3))
            prefix = "_Qs.params" if m.group(1) == "_Qs.params" else "_target_Qs.params"
            out[f"{prefix}.{n}"] = v
        else:
            out[k] = v
    return out


def run_export(ckpt, out, cfg: Config, model_size):
    cmd = [sys.executable, str(HERE / "export_tdmpc2.py"), str(ckpt), str(out),
           "--obs-dim", str(cfg.obs_dim), "--action-dim", str(cfg.action_dim)]
    if cfg.episodic:
        cmd.append("--episodic")
    if model_size is not None:
        cmd += ["--model-size", str(model_size)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"FAILED: export of {ckpt}: {r.stderr.strip()}")
    for line in r.stdout.strip().splitlines():
        print("    | " + line)


def check_case(T, name, cfg, model_size, tdmpc2_enc_layers, work: Path, seed: int):
    print(f"\n== {name}: obs {cfg.obs_dim}, action {cfg.action_dim}, latent {cfg.latent_dim}, "
          f"mlp {cfg.mlp_dim}, enc {cfg.enc_dim}, TD-MPC2 num_enc_layers {tdmpc2_enc_layers}, "
          f"num_q {cfg.num_q}, episodic {cfg.episodic}"
          + (f", --model-size {model_size}" if model_size else ""))
    tcfg = tdmpc2_cfg(cfg, tdmpc2_enc_layers)
    rng = np.random.default_rng(seed)
    weights = {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in init_weights(cfg, rng).items()}
    target = {k.replace("_Qs.params.", "_target_Qs_params."): torch.from_numpy(np.asarray(v, np.float32))
              for k, v in init_weights(cfg, rng).items() if k.startswith("_Qs.params.")}
    obs = torch.from_numpy(rng.standard_normal((B, cfg.obs_dim)).astype(np.float32))
    act = torch.from_numpy(rng.uniform(-1, 1, (B, cfg.action_dim)).astype(np.float32))
    eps = torch.from_numpy(rng.standard_normal((B, cfg.action_dim)).astype(np.float32))

    wm32 = new_world_model(T, tcfg, torch.float32)
    fill_world_model(wm32, weights, target)
    ckpt = work / f"{name}.pt"
    T.TDMPC2.save(types.SimpleNamespace(model=wm32), str(ckpt))  # TD-MPC2's own save
    sd = torch.load(ckpt, map_location="cpu", weights_only=True)["model"]
    print(f"  checkpoint: {ckpt.name}, {len(sd)} entries, "
          f"log_std_min {sd['log_std_min'].dtype} {int(sd['log_std_min'])}, "
          f"log_std_dif {int(sd['log_std_dif'])}")
    rel_ckpt = work / f"{name}-release.pt"
    rel_sd = to_release(sd)
    torch.save({"model": rel_sd}, rel_ckpt)
    print(f"  release-era checkpoint: {rel_ckpt.name}, {len(rel_sd)} entries "
          f"(e.g. {[k for k in rel_sd if k.startswith('_Qs.')][:3]} ...)")

    ref32 = tdmpc2_outputs(T, wm32, tcfg, obs, act, eps)
    worst = {}
    for layout, path in (("current", ckpt), ("release", rel_ckpt)):
        out = work / f"{name}-{layout}.safetensors"
        print(f"  export ({layout} layout):")
        run_export(path, out, cfg, model_size)
        # TD-MPC2 float64 model, loaded from the checkpoint by TD-MPC2's own load().
        wm64 = new_world_model(T, tcfg, torch.float64)
        T.TDMPC2.load(types.SimpleNamespace(model=wm64), str(path))
        ref64 = tdmpc2_outputs(T, wm64, tcfg, obs.double(), act.double(), eps.double())
        mine64, tensors, md = arch.load_model(out, torch.float64)
        assert md["format"] == arch.FORMAT
        got64 = pompc_outputs(mine64, obs.double(), act.double(), eps.double())
        assert set(got64) == set(ref64), (set(got64) ^ set(ref64))
        w = report(f"{layout}: exported file (float64) vs TD-MPC2 WorldModel (float64)",
                   compare(ref64, got64), TOL)
        mine32, _, _ = arch.load_model(out, torch.float32)
        got32 = pompc_outputs(mine32, obs, act, eps)
        w32 = report(f"{layout}: exported file (float32) vs TD-MPC2 WorldModel (float32)",
                     compare(ref32, got32))
        worst[layout] = (w, w32)
        # The exported weights are bit-identical to the checkpoint's.
        for k, v in weights.items():
            if k in tensors:
                assert torch.equal(tensors[k], v), k
        for k, v in target.items():
            assert torch.equal(tensors[k], v), k
    return worst


def expect_refusal(what, sd, args, needle):
    try:
        ex.convert(sd, args)
    except ex.ExportError as e:
        if needle not in str(e):
            raise SystemExit(f"FAILED: {what}: message {str(e)!r} does not name {needle!r}")
        print(f"  refused ({what}): {e}")
        return
    raise SystemExit(f"FAILED: {what}: the exporter accepted it")


def check_refusals(work: Path):
    print("\n== the exporter refuses broken checkpoints")
    sd = torch.load(work / "small-like.pt", map_location="cpu", weights_only=True)["model"]
    rel = torch.load(work / "small-like-release.pt", map_location="cpu", weights_only=True)["model"]
    ok = ex.parser().parse_args(["x", "y"])

    def args(**kw):
        return argparse.Namespace(**{**vars(ok), **kw})

    def edit(src, drop=(), **put):
        d = OrderedDict((k, v) for k, v in src.items() if k not in drop)
        d.update(put)
        return d

    expect_refusal("missing LN", edit(sd, drop=["_pi.1.ln.bias"]), ok, "_pi.1.ln.bias")
    expect_refusal("wrong shape", edit(sd, **{"_reward.0.bias": torch.zeros(3)}), ok, "_reward.0.bias")
    bad = sd["_Qs.params.1.weight"].clone()
    bad[0, 0, 0] = float("nan")
    expect_refusal("NaN", edit(sd, **{"_Qs.params.1.weight": bad}), ok, "_Qs.params.1.weight")
    bad = sd["_target_Qs_params.2.bias"].clone()
    bad[-1, -1] = float("inf")
    expect_refusal("inf in target", edit(sd, **{"_target_Qs_params.2.bias": bad}), ok,
                   "_target_Qs_params.2.bias")
    expect_refusal("missing target layer", edit(sd, drop=["_target_Qs_params.0.ln.weight"]), ok,
                   "_target_Qs_params.0.ln.weight")
    expect_refusal("release-era missing", edit(rel, drop=["_Qs.params.9"]), ok, "_Qs.params.9")
    expect_refusal("release-era wrong shape", edit(rel, **{"_Qs.params.5": torch.zeros(3, 5)}), ok,
                   "_Qs.params.5")
    expect_refusal("unknown tensor", edit(sd, **{"_extra.weight": torch.zeros(2)}), ok, "_extra.weight")
    expect_refusal("multi-task", edit(sd, **{"_task_emb.weight": torch.zeros(2, 96)}), ok, "_task_emb")
    expect_refusal("int weights", edit(sd, **{"_pi.0.bias": torch.zeros(56, dtype=torch.int64)}), ok,
                   "_pi.0.bias")
    expect_refusal("--obs-dim", sd, args(obs_dim=12), "obs-dim")
    expect_refusal("--action-dim", sd, args(action_dim=5), "action-dim")
    expect_refusal("--model-size", sd, args(model_size=5), "--model-size 5")
    tiny = torch.load(work / "tiny-like.pt", map_location="cpu", weights_only=True)["model"]
    expect_refusal("--episodic", tiny, args(episodic=True), "_termination.0.weight")
    # A non-episodic file with a stray termination layer is caught too.
    expect_refusal("partial termination head", edit(sd, drop=["_termination.2.weight"]), ok,
                   "_termination.2.weight")


def check_fixtures(T):
    print("\n== tests/fixtures vs TD-MPC2 (float64 WorldModel, fixture values stored as float32)")
    # The world-model fixtures; the update, policy and plan fixtures are checked by their tests.
    for path in [HERE.parent / "tests" / "fixtures" / f"{n}.safetensors" for n in ("tiny", "small")]:
        cfg, t, _ = arch.read_pompc(path)
        tcfg = tdmpc2_cfg(cfg, cfg.num_enc_layers)
        wm = new_world_model(T, tcfg, torch.float64)
        weights = {k: v for k, v in t.items() if not k.startswith("fixture.")}
        assert float(weights["log_std_min"]) == cfg.log_std_min
        assert float(weights["log_std_dif"]) == cfg.log_std_max - cfg.log_std_min
        target = {k.replace("_Qs.params.", "_target_Qs_params."): v for k, v in weights.items()
                  if k.startswith("_Qs.params.")}
        fill_world_model(wm, weights, target)
        f = {k[len("fixture."):]: v.double() for k, v in t.items() if k.startswith("fixture.")}
        ref = tdmpc2_outputs(T, wm, tcfg, f["obs"], f["action"], f["eps"])
        ref["decoded"] = T.math.two_hot_inv(f["logits"], tcfg).squeeze(-1)
        ref["two_hot"] = T.math.two_hot(f["targets"][:, None], tcfg)
        keys = [k for k in ref if k in f]
        missing = sorted(set(f) - set(keys) - {"obs", "action", "eps", "logits", "targets"})
        assert not missing, missing
        # float32 storage: scaled error up to ~1e-7.
        report(f"{path.name}", compare(ref, f, keys), 1e-6)


def check_presets(T):
    text = (T.src / "config.yaml").read_text()
    num_q = int(re.search(r"^num_q:\s*(\d+)", text, re.M).group(1))
    theirs = {k: {"num_q": num_q, **v} for k, v in T.MODEL_SIZE.items()}
    if theirs != arch.MODEL_SIZE:
        raise SystemExit(f"FAILED: MODEL_SIZE differs from TD-MPC2's: {theirs}")
    print(f"\n== MODEL_SIZE presets match TD-MPC2's (num_q default {num_q}): {sorted(theirs)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tdmpc2", type=Path, help="path to a TD-MPC2 checkout (the repository root)")
    ap.add_argument("--keep", type=Path, help="write checkpoints and exports here (kept)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    T = import_tdmpc2(args.tdmpc2.resolve())
    try:
        head = subprocess.run(["git", "-C", str(args.tdmpc2), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
    except OSError:
        head = ""
    import tensordict
    print(f"TD-MPC2 at {args.tdmpc2} {head}; torch {torch.__version__}, "
          f"tensordict {tensordict.__version__}")
    check_presets(T)
    ctx = contextlib.nullcontext(str(args.keep)) if args.keep else tempfile.TemporaryDirectory()
    with ctx as d:
        work = Path(d)
        work.mkdir(parents=True, exist_ok=True)
        summary = {}
        for i, (name, cfg, size, n_enc) in enumerate(CASES):
            summary[name] = check_case(T, name, cfg, size, n_enc, work, 7000 + i)
        check_refusals(work)
    check_fixtures(T)
    print("\n== summary (max scaled error: float64 vs float64 | float32 vs float32)")
    for name, w in summary.items():
        print(f"  {name:<14} " + "   ".join(f"{lay}: {a:.1e} | {b:.1e}" for lay, (a, b) in w.items()))
    print("all checks passed")


if __name__ == "__main__":
    main()
