"""Shared fixtures: one Gpu per session (the adapter that WGPU_BACKEND and friends choose;
there is no skip: without an adapter the tests fail with pompc's message on how to get one),
and the Rust reference planner (examples/plan_reference.rs), built with cargo if needed."""

import os
import pathlib
import subprocess

import pytest

import pompc

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def gpu():
    return pompc.Gpu()


@pytest.fixture(scope="session")
def plan_reference():
    """Path of the Rust reference planner: $POMPC_PLAN_REFERENCE, else built by cargo in the
    repository (cargo test --release has usually built it already)."""
    given = os.environ.get("POMPC_PLAN_REFERENCE")
    if given:
        return pathlib.Path(given)
    subprocess.run(
        ["cargo", "build", "--release", "--example", "plan_reference"],
        cwd=REPO,
        check=True,
    )
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    if not target.is_absolute():
        target = REPO / target
    return target / "release" / "examples" / "plan_reference"
