"""pompc.Population: two PO-MPC agents of different lambda on Gymnasium's Pendulum-v1 (the Rust
population stepping Python environments) plan and update in shared dispatches and give each
agent the events and history its own Trainer gives with the same seed; the population saves
and resumes; bad arguments raise the right exceptions."""

import gymnasium as gym
import pytest

import pompc

EPISODE = 50  # Pendulum-v1 cut short: one seed episode, as many pre-training updates
STEPS = EPISODE + 4
LAMS = [0.5, 2.0]


def make():
    return gym.make("Pendulum-v1", max_episode_steps=EPISODE)


def settings(gpu):
    return dict(model="tiny", steps=STEPS, quick=True, gpu=gpu, eval_every=0, log_every=1)


def replayable(e):
    """The event without its wall-clock time."""
    return {k: v for k, v in e.items() if k != "seconds"}


def test_population_agents_train_as_they_do_alone(gpu, tmp_path):
    kw = settings(gpu)
    pop = pompc.Population(make, methods=["po-mpc"], lams=LAMS, seeds=[3], **kw)
    assert len(pop) == 2
    assert [a["lam"] for a in pop.agents] == LAMS
    assert pop.shares_plan_steps is None and pop.shares_updates is None
    events = [[], []]
    assert pop.run(STEPS, lambda i, e: events[i].append(replayable(e))) == [STEPS, STEPS]
    for i, lam in enumerate(LAMS):
        alone = pompc.Trainer(make(), "po-mpc", lam=lam, seed=3, eval_env=make(), **kw)
        own = []
        alone.run(STEPS, lambda e: own.append(replayable(e)))
        assert any(e["kind"] == "losses" for e in own)
        assert own == events[i], f"agent {i}"
        assert alone.history == pop.history(i)
    pop.save(tmp_path)
    back = pompc.Population.resume(tmp_path, make, methods=["po-mpc"], lams=LAMS, seeds=[3],
                                   **dict(kw, steps=STEPS + 2))
    assert back.steps == [STEPS, STEPS]
    assert back.run(2) == [STEPS + 2, STEPS + 2]


def test_bad_population_arguments_raise(gpu):
    kw = settings(gpu)
    with pytest.raises(ValueError, match="seed"):
        pompc.Population(make, seeds=[], **kw)
    with pytest.raises(ValueError, match="twice"):
        pompc.Population(make, seeds=[1, 1], **kw)
    with pytest.raises(ValueError, match="lams"):
        pompc.Population(make, methods=["tdmpc2"], lams=[1.0], **kw)
    with pytest.raises(TypeError, match="env"):
        pompc.Population(5, **kw)
    pop = pompc.Population("pendulum-swingup", seeds=[0, 1], **kw)
    with pytest.raises(ValueError, match="agent 2"):
        pop.history(2)
    with pytest.raises(TypeError, match="callable"):
        pop.run(1, callback=3)
