"""Checkpoint writes in the background (reinflow/run/checkpoint_writer.py): the write reads the live
state in one other thread, one at a time, and the policy's next in-place change waits for it; its
errors come back at the next wait (not at the policy's wait); closing the session waits for it; a
process killed mid-write resumes from the previous checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_checkpoint import batch, make_config

import reinflow.run.session as session_module
from reinflow.config.models import TINY_RANDOM_LLAMA, resolve_model
from reinflow.run.checkpoint import COMPLETE, CheckpointWriteError, latest_checkpoint, list_checkpoints, read_checkpoint
from reinflow.run.checkpoint_writer import CheckpointWriter, detach_containers
from reinflow.run.session import close_session, save_checkpoint
from reinflow.training.policy import PolicyTrainer

ROOT = Path(__file__).resolve().parents[1]


def fake_session(run: Path, policy, backbone: str = "debug") -> SimpleNamespace:
    config = SimpleNamespace(fingerprint=lambda: "f", backbone=backbone, train=SimpleNamespace(keep_checkpoints=2),
                             tracking=SimpleNamespace(raw_episode_files="keep"))
    return SimpleNamespace(config=config, policy=policy, run_dir=run, checkpoints=run / "checkpoints",
                           info=SimpleNamespace(mlflow_run_id="r"), checkpoint_writer=CheckpointWriter(),
                           runtime=SimpleNamespace(close=lambda: None))


class LivePolicy:
    """Like ``PolicyTrainer``: ``state()`` hands out views of tensors that the next step changes in
    place, after waiting for the readers ``hold_state`` registered."""

    def __init__(self) -> None:
        self.weight, self.moment, self.closed, self.readers = torch.zeros(4), torch.zeros(4), False, []

    def state(self) -> dict:
        return {"weights": {"w": self.weight.detach()}, "optimizer": {"state": {0: {"exp_avg": self.moment}}}}

    def hold_state(self, until) -> None:
        self.readers.append(until)

    def step(self) -> None:
        while self.readers:
            self.readers.pop()()
        self.weight.add_(1.0)
        self.moment.add_(1.0)

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def blocked_writes(monkeypatch):
    """``write_checkpoint`` held until ``release`` is set; records the thread that ran it."""
    release, threads = threading.Event(), []
    real = session_module.write_checkpoint

    def held(*args, **kwargs):
        threads.append(threading.current_thread())
        assert release.wait(30), "the test never released the write"
        return real(*args, **kwargs)

    monkeypatch.setattr(session_module, "write_checkpoint", held)
    return SimpleNamespace(release=release, threads=threads)


def test_the_write_runs_in_another_thread_and_the_caller_returns_first(tmp_path, blocked_writes):
    session = fake_session(tmp_path, LivePolicy())
    folder = save_checkpoint(session, 1, 5, background=True)
    assert folder == tmp_path / "checkpoints" / "iter_1"
    assert not folder.exists() and session.checkpoint_writer.busy  # the caller is back, the write is not done
    blocked_writes.release.set()
    session.checkpoint_writer.wait()
    assert (folder / COMPLETE).is_file() and not session.checkpoint_writer.busy
    assert blocked_writes.threads[0] is not threading.current_thread()
    assert read_checkpoint(folder, fingerprint="f")[1]["cursor"] == 5


def test_the_step_after_the_submit_waits_for_the_write(tmp_path, blocked_writes):
    policy = LivePolicy()
    session = fake_session(tmp_path, policy)
    save_checkpoint(session, 1, 0, background=True)
    step = threading.Thread(target=policy.step)  # the next update, while the write is still held
    step.start()
    step.join(1.0)
    assert step.is_alive() and torch.equal(policy.weight, torch.zeros(4))  # held by the write
    blocked_writes.release.set()
    step.join(30)
    session.checkpoint_writer.wait()
    state, _ = read_checkpoint(tmp_path / "checkpoints" / "iter_1", fingerprint="f")
    assert torch.equal(state["weights"]["w"], torch.zeros(4))
    assert torch.equal(state["optimizer"]["state"][0]["exp_avg"], torch.zeros(4))
    assert torch.equal(policy.weight, torch.ones(4))


def test_the_write_reads_the_live_tensors_no_copy(tmp_path, monkeypatch):
    policy, written = LivePolicy(), []
    real = session_module.write_checkpoint
    monkeypatch.setattr(session_module, "write_checkpoint",
                        lambda folder, iteration, state, *a, **k: written.append(state) or real(folder, iteration, state, *a, **k))
    session = fake_session(tmp_path, policy)
    save_checkpoint(session, 1, 0, background=True)
    session.checkpoint_writer.wait()
    assert written[0]["weights"]["w"].data_ptr() == policy.weight.data_ptr()
    assert written[0]["optimizer"]["state"][0]["exp_avg"] is policy.moment


def test_detach_containers_rebuilds_all_but_the_tensors():
    tensor, lr = torch.zeros(2), [1e-5]
    live = {"optimizer": {"state": {0: {"exp_avg": tensor}}, "param_groups": [{"lr": lr, "betas": (0.9, 0.99)}]}}
    detached = detach_containers(live)
    assert detached == live and detached["optimizer"]["state"][0]["exp_avg"] is tensor
    live["optimizer"]["state"][0]["exp_avg"] = torch.ones(2)  # what the training thread reassigns
    lr.append(2e-5)
    assert detached["optimizer"]["state"][0]["exp_avg"] is tensor and detached["optimizer"]["param_groups"][0]["lr"] == [1e-5]


def test_the_policy_trainer_update_waits_for_the_write_of_its_live_state(tmp_path, blocked_writes):
    """``PolicyTrainer.state()`` shares memory with the weights and Adam's moments that the next
    ``train_step`` changes: that step's optimizer step waits until the write has read them."""
    config = make_config()
    trainer = PolicyTrainer(config, resolve_model(TINY_RANDOM_LLAMA))
    trainer.train_step(batch(0))
    live = trainer.state()
    before = {key: value.clone() for key, value in live["weights"].items()}
    moments_before = [group["exp_avg"].clone() for group in live["optimizer"]["state"].values()]
    session = fake_session(tmp_path, trainer)
    save_checkpoint(session, 1, 0, background=True)
    update = threading.Thread(target=trainer.train_step, args=(batch(1),))
    update.start()
    update.join(3.0)  # long enough for the tiny model's forward and backward passes
    assert all(torch.equal(live["weights"][key], value) for key, value in before.items())  # not stepped yet
    blocked_writes.release.set()
    update.join(60)
    session.checkpoint_writer.wait()
    name = next(iter(before))
    assert not torch.equal(live["weights"][name], before[name])  # the step ran once the write was done
    state, _ = read_checkpoint(tmp_path / "checkpoints" / "iter_1", fingerprint="f")
    assert all(torch.equal(state["weights"][key], value) for key, value in before.items())
    moments = [group["exp_avg"] for group in state["optimizer"]["state"].values()]
    assert moments and all(torch.equal(a, b) for a, b in zip(moments, moments_before))


def test_a_write_error_is_left_for_the_checkpoint_not_raised_in_the_update(tmp_path):
    writer = CheckpointWriter()
    writer.submit("iter_1", lambda: 1 / 0)
    writer.join()  # what the policy's hold calls: no error here
    with pytest.raises(ZeroDivisionError) as raised:
        writer.wait()
    assert "iter_1" in raised.value.__notes__[0]


def test_a_write_error_comes_back_at_the_next_wait_with_the_checkpoint_name(tmp_path):
    writer, ran, release = CheckpointWriter(), [], threading.Event()

    def fail():
        release.wait(30)
        raise CheckpointWriteError("cannot write checkpoint iter_3: No space left on device")

    writer.submit(str(tmp_path / "iter_3"), fail)
    writer.after_write(lambda: ran.append("after"))  # queued: it must not run after a failed write
    release.set()
    with pytest.raises(CheckpointWriteError, match="No space left") as raised:
        writer.wait()
    assert any(str(tmp_path / "iter_3") in note for note in raised.value.__notes__)
    assert ran == []
    writer.wait()  # raised once, not again


def test_a_write_error_stops_the_next_submit_and_the_next_after_write(tmp_path):
    writer, started = CheckpointWriter(), []
    writer.submit("iter_1", lambda: 1 / 0)
    while writer.busy:
        time.sleep(0.01)
    with pytest.raises(ZeroDivisionError) as raised:
        writer.submit("iter_2", lambda: started.append(2))
    assert "iter_1" in raised.value.__notes__[0] and started == []
    writer.submit("iter_2", lambda: 1 / 0)
    while writer.busy:
        time.sleep(0.01)
    with pytest.raises(ZeroDivisionError, match="division"):
        writer.after_write(lambda: started.append("after"))
    assert started == []


def test_one_write_at_a_time_and_actions_after_it_in_order(tmp_path):
    writer, events, release = CheckpointWriter(), [], threading.Event()

    def first():
        events.append("first started")
        release.wait(30)
        events.append("first done")

    writer.submit("iter_1", first)
    writer.after_write(lambda: events.append(("after 1", threading.current_thread().name)))
    second = threading.Thread(target=writer.submit, args=("iter_2", lambda: events.append("second")))
    second.start()
    time.sleep(0.2)
    assert events == ["first started"]  # the second submit waits for the first write
    release.set()
    second.join(30)
    writer.wait()
    assert events == ["first started", "first done", ("after 1", "checkpoint-writer"), "second"]
    writer.after_write(lambda: events.append(("idle", threading.current_thread().name)))
    assert events[-1] == ("idle", threading.current_thread().name)  # nothing in flight: at once, here


def test_closing_the_session_waits_for_the_write(tmp_path, blocked_writes):
    policy = LivePolicy()
    session = fake_session(tmp_path, policy)
    save_checkpoint(session, 1, 0, background=True)
    threading.Timer(0.3, blocked_writes.release.set).start()
    close_session(session)
    assert (tmp_path / "checkpoints" / "iter_1" / COMPLETE).is_file() and policy.closed


KILLED_MID_WRITE = textwrap.dedent("""
    import sys, torch
    from pathlib import Path
    from types import SimpleNamespace
    from reinflow.run.checkpoint_writer import CheckpointWriter, detach_containers
    from reinflow.run.session import save_checkpoint

    run = Path(sys.argv[1])
    config = SimpleNamespace(fingerprint=lambda: "f", backbone="debug", train=SimpleNamespace(keep_checkpoints=2),
                             tracking=SimpleNamespace(raw_episode_files="keep"))
    policy = SimpleNamespace(state=lambda: {"weights": {"w": torch.full((64,), float(len(list(run.rglob("COMPLETE")))))}},
                             hold_state=lambda until: None)
    session = SimpleNamespace(config=config, policy=policy, run_dir=run, checkpoints=run / "checkpoints",
                              info=SimpleNamespace(mlflow_run_id="r"), checkpoint_writer=CheckpointWriter())
    save_checkpoint(session, 1, 2, background=True)
    save_checkpoint(session, 2, 4, background=True)  # REINFLOW_CRASH_AT=checkpoint:2 kills it mid-write
    print("training thread went on", flush=True)
    session.checkpoint_writer.wait()
    print("not killed", flush=True)
""")


def test_a_process_killed_mid_background_write_resumes_from_the_previous_checkpoint(tmp_path):
    environment = {**os.environ, "REINFLOW_CRASH_AT": "checkpoint:2", "PYTHONPATH": str(ROOT)}
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, str(tmp_path)], env=environment,
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert "not killed" not in killed.stdout
    checkpoints = tmp_path / "checkpoints"
    assert [i for i, _ in list_checkpoints(checkpoints)] == [1]
    assert [p.name for p in checkpoints.iterdir() if p.name.startswith(".tmp-iter_2-")]  # the half write
    state, extra = read_checkpoint(latest_checkpoint(checkpoints), fingerprint="f")
    assert extra["cursor"] == 2 and torch.equal(state["weights"]["w"], torch.zeros(64))
