"""tracking.raw_episode_files: raw episode files of checkpointed, judged iterations are dropped;
the logview still shows every iteration (from the judged files)."""

from __future__ import annotations

from reinflow.config import TrackingConfig
from reinflow.logview.runs import RunFolder, episode_sets
from reinflow.run.retention import drop_judged_raw_files


def _files(run):
    for name in ("rollouts/iter_1.parquet", "judged/iter_1.parquet", "rollouts/iter_2.parquet",
                 "judged/iter_2.parquet", "rollouts/iter_3.parquet", "judged/iter_3.parquet",
                 "rollouts/iter_4.parquet",  # not judged yet
                 "eval/iter_0/greedy.parquet", "eval/iter_0/greedy_judged.parquet",
                 "eval/iter_2/greedy.parquet", "eval/iter_2/greedy_judged.parquet",
                 "eval/iter_2/sampled.parquet",  # its judge did not finish
                 "eval/iter_4/greedy.parquet", "eval/iter_4/greedy_judged.parquet"):
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_bytes(b"0" * 100)


def test_raw_files_of_checkpointed_judged_iterations_are_dropped(tmp_path):
    run = tmp_path / "exp" / "run-1"
    _files(run)
    before = {s.key: s.judged for s in episode_sets(RunFolder("exp", "run-1", run))}

    assert drop_judged_raw_files(run, checkpointed=3) == 500

    left = sorted(str(p.relative_to(run)) for p in run.rglob("*.parquet"))
    assert left == ["eval/iter_0/greedy_judged.parquet", "eval/iter_2/greedy_judged.parquet",
                    "eval/iter_2/sampled.parquet", "eval/iter_4/greedy.parquet", "eval/iter_4/greedy_judged.parquet",
                    "judged/iter_1.parquet", "judged/iter_2.parquet", "judged/iter_3.parquet",
                    "rollouts/iter_4.parquet"]
    assert not (run / "rollouts" / "iter_1.parquet").exists() and not (run / "eval" / "iter_0" / "greedy.parquet").exists()
    assert (run / "rollouts" / "iter_4.parquet").exists() and (run / "eval" / "iter_4" / "greedy.parquet").exists()
    assert (run / "eval" / "iter_2" / "sampled.parquet").exists()
    # the logview shows the same episode sets, each from the same (judged) file as before
    assert {s.key: s.judged for s in episode_sets(RunFolder("exp", "run-1", run))} == before
    assert drop_judged_raw_files(run, checkpointed=3) == 0


def test_the_default_keeps_every_file():
    assert TrackingConfig().raw_episode_files == "keep"


def test_a_checkpoint_compacts_the_iterations_it_covers_when_configured(tmp_path):
    from types import SimpleNamespace

    import torch

    from reinflow.run.checkpoint_writer import CheckpointWriter
    from reinflow.run.session import save_checkpoint

    def session(policy_value: str, run):
        config = SimpleNamespace(fingerprint=lambda: "f", train=SimpleNamespace(keep_checkpoints=1),
                                 tracking=SimpleNamespace(raw_episode_files=policy_value))
        policy = SimpleNamespace(state=lambda: {"weights": {"w": torch.zeros(2)}})
        return SimpleNamespace(config=config, policy=policy, run_dir=run, checkpoints=run / "checkpoints",
                               info=SimpleNamespace(mlflow_run_id="r"), checkpoint_writer=CheckpointWriter())

    for policy_value, kept in (("keep", True), ("drop_when_judged", False)):
        run = tmp_path / policy_value
        _files(run)
        save_checkpoint(session(policy_value, run), 2, cursor=4)
        assert (run / "rollouts" / "iter_2.parquet").exists() is kept
        assert (run / "rollouts" / "iter_3.parquet").exists() and (run / "judged" / "iter_2.parquet").exists()
        assert (run / "checkpoints" / "iter_2" / "COMPLETE").exists()
