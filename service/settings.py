"""Every service setting, read from ``PROGRESS_*`` environment variables (or a ``.env`` file)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PROGRESS_", env_file=".env", extra="ignore")

    model_path: Path = Field(Path("models/progress_head.onnx"), description="the exported ONNX cell")
    providers: str = Field("auto", description="auto (CUDA if usable, else CPU) or e.g. 'cuda,cpu' / 'cpu'")
    threads: int = Field(1, ge=0, description="onnxruntime intra-op threads (0: all cores)")
    host: str = "127.0.0.1"
    port: int = 8000
    max_streams: int = Field(10_000, ge=1, description="streams held at once; creating more answers 503")
    idle_ttl_s: float = Field(600.0, gt=0, description="a stream idle this long is evicted")
    max_batch: int = Field(1024, ge=1, description="most streams (one frame each) per inference call")
    max_wait_us: int = Field(200, ge=0, description="an idle batcher waits up to this for as many streams as last time")
    inference_in_thread: bool = Field(False, description="run inference in a worker thread, not on the event loop")
    max_queue_frames: int = Field(200_000, ge=1, description="frames waiting for inference before 503/1013")
    retained_window: int = Field(512, ge=1, description="outputs kept per stream for retries")
    max_frames_per_message: int = Field(256, ge=1)
    max_frames_stateless: int = Field(8192, ge=1, description="frames of one action at POST /v1/progress")
    max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="larger HTTP bodies get 413, WS 1009")
    api_key: str | None = Field(None, description="when set, /v1/* needs 'Authorization: Bearer KEY'")
    state_file: Path | None = Field(None, description="snapshot all streams here; restored at start")
    state_on_mismatch: Literal["fail", "discard"] = Field(
        "fail", description="a state file this server cannot restore: fail the start, or move it aside and start empty"
    )
    snapshot_interval_s: float = Field(5.0, gt=0)
