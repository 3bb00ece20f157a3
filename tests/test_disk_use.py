"""Disk use of a run: the run folder and its MLflow artifacts (what is left), /proc/self/io (written)."""

from __future__ import annotations

from mlflow import MlflowClient

from reinflow.tracking.disk_use import RUN_BYTES, WRITTEN_BYTES, disk_use, folder_bytes, gigabytes, written_bytes


def test_folder_bytes_sums_the_files_under_a_folder(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "x.bin").write_bytes(b"0" * 1000)
    (tmp_path / "a" / "b" / "y.bin").write_bytes(b"0" * 24)
    (tmp_path / "link").symlink_to(tmp_path / "a" / "x.bin")  # not followed: its own (short) size
    assert folder_bytes(tmp_path / "a") == 1024
    assert folder_bytes(tmp_path / "missing") == 0


def test_written_bytes_reads_proc_io_less_the_cancelled_writes(tmp_path):
    io = tmp_path / "io"
    io.write_text("rchar: 5\nwchar: 9\nwrite_bytes: 8192\ncancelled_write_bytes: 4096\n")
    assert written_bytes(io) == 4096
    assert written_bytes(tmp_path / "absent") is None
    before = written_bytes()
    if before is not None:  # Linux: a written file is counted
        path = tmp_path / "data.bin"
        path.write_bytes(b"1" * 2_000_000)
        assert written_bytes() - before >= 1_000_000


def test_disk_use_counts_the_run_folder_and_the_runs_local_artifacts(tmp_path):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "mlartifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    run_dir = tmp_path / "runs" / "e" / "run-1"
    run_dir.mkdir(parents=True)
    (run_dir / "rollouts.bin").write_bytes(b"0" * 3000)
    artifact = tmp_path / "sample.txt"
    artifact.write_bytes(b"0" * 500)
    client.log_artifact(run_id, str(artifact), "trajectories")
    use = disk_use(client, run_id, run_dir)
    assert use[RUN_BYTES] == 3500
    assert WRITTEN_BYTES in use or written_bytes() is None
    assert gigabytes(2_147_483_648) == "2.15 GB"
