"""The options of ``reinflow logview`` and their defaults (the only place they are set)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from reinflow.config import TrackingConfig


class LogviewSettings(BaseModel):
    """Where the runs are and where the page is served."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    runs_dir: Path = Field(
        TrackingConfig.model_fields["run_dir"].default,
        description="Folder holding <experiment>/<run>/ folders (a config's tracking.run_dir).",
    )
    host: str = Field("127.0.0.1", min_length=1, description="Address to bind; anything but loopback prints a warning.")
    port: int = Field(0, ge=0, le=65535, description="TCP port; 0 picks a free one (the URL is printed).")
    cached_tables: int = Field(8, ge=1, le=1024, description="Full Parquet row groups (token data included) kept in memory.")
    cached_summaries: int = Field(64, ge=1, le=100_000, description="Episode tables (summary columns only) kept in memory.")
    cached_stats: int = Field(
        10_000, ge=1, le=1_000_000, description="Per-file curve statistics and run settings kept in memory."
    )
