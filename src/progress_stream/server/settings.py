"""Every service setting, read from ``PROGRESS_*`` environment variables (or a ``.env`` file).

The engine's settings take their defaults from :class:`~progress_stream.engine.engine.EngineConfig` and are handed
to it by :meth:`Settings.engine_config`; the rest belong to the web layer.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from progress_stream.engine.durability.store import DEFAULT_PREFIX
from progress_stream.engine.engine import EngineConfig

ENGINE = EngineConfig()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PROGRESS_", env_file=".env", extra="ignore")

    model_path: Path = Field(Path("models/progress_head.onnx"), description="the exported ONNX cell")
    providers: str = Field("auto", description="auto (CUDA if usable, else CPU) or e.g. 'cuda,cpu' / 'cpu'")
    threads: int = Field(1, ge=0, description="onnxruntime intra-op threads (0: all cores)")
    host: str = "127.0.0.1"
    port: int = 8000
    max_streams: int = Field(ENGINE.max_streams, ge=1, description="streams held at once; creating more answers 503")
    idle_ttl_s: float = Field(ENGINE.idle_ttl_s, gt=0, description="a stream idle this long is evicted")
    max_batch: int = Field(ENGINE.max_batch, ge=1, description="most streams (one frame each) per inference call")
    max_wait_us: int = Field(
        ENGINE.max_wait_us, ge=0, description="an idle batcher waits up to this for as many streams as last time"
    )
    inference_in_thread: bool = Field(
        ENGINE.inference_in_thread, description="run inference in a worker thread, not on the event loop"
    )
    max_queue_frames: int = Field(
        ENGINE.max_queue_frames, ge=1, description="frames waiting for inference before 503/1013"
    )
    retained_window: int = Field(ENGINE.retained_window, ge=1, description="outputs kept per stream for retries")
    max_frames_per_message: int = Field(ENGINE.max_frames_per_message, ge=1)
    max_frames_stateless: int = Field(8192, ge=1, description="frames of one action at POST /v1/progress")
    max_frames_per_tick: int = Field(
        1024, ge=1, description="frames of all the streams of one gateway message (/v1/ws, POST /v1/frames)"
    )
    api_key: str | None = Field(None, description="when set, /v1/* needs 'Authorization: Bearer KEY'")
    allowed_origins: str = Field(
        "",
        description="comma-separated browser origins allowed besides the server's own ('*': any); "
        "a request or WebSocket whose Origin header is not allowed gets 403",
    )
    ws_plane: Literal["native", "asgi"] = Field(
        "native",
        description="what carries /v1/streams/{id}/ws: native (picows, on the same port and loop) or asgi "
        "(the FastAPI route); both speak the same protocol",
    )
    ws_ping_interval_s: float = Field(
        20.0,
        gt=0,
        description="a WebSocket is pinged this often (native plane: after this long with nothing from its client)",
    )
    ws_ping_timeout_s: float = Field(
        20.0,
        gt=0,
        description="a WebSocket whose client does not answer a ping within this, or (native plane) leaves "
        "over 64 KB of replies unread this long, is closed (≤ the interval)",
    )
    max_connections: int | None = Field(
        None,
        ge=1,
        description="open connections at once (HTTP and WebSocket); past it 503 too_many_connections. Unset: "
        "the open-file limit (raised to its hard limit at start) less max(128, an eighth) for files and the store",
    )
    board_max_subscribers: int = Field(
        32, ge=1, description="clients of the live board (GET /v1/board/events) at once; past it 503"
    )
    header_timeout_s: float = Field(10.0, gt=0, description="a connection whose request headers take longer is closed")
    body_timeout_s: float = Field(10.0, gt=0, description="a request whose body takes longer gets 408")
    demo_dir: Path = Field(Path("models/demo"), description="the web page's demo pack (progress demo-pack)")
    state_file: Path | None = Field(ENGINE.state_file, description="snapshot all streams here; restored at start")
    state_url: str | None = Field(
        None,
        description="redis://host:port/db or rediss://… to share stream state between replicas; "
        "file:///path is the same as PROGRESS_STATE_FILE",
    )
    state_password: str | None = Field(None, description="the state store's password (else from the URL)")
    state_prefix: str = Field(
        DEFAULT_PREFIX,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,39}$",
        description="the state store's keys are PREFIX:stream:ID; deployments that share a database each "
        "need their own (1-40 characters of A-Z a-z 0-9 _ . : -, the first a letter or digit)",
    )
    state_required: bool = Field(True, description="an unreachable state store at start fails the start")
    state_on_mismatch: Literal["fail", "discard"] = Field(
        ENGINE.state_on_mismatch,
        description="a state file this server cannot restore: fail the start, or move it aside and start empty",
    )
    snapshot_interval_s: float = Field(ENGINE.snapshot_interval_s, gt=0)

    @model_validator(mode="after")
    def _ping(self) -> Settings:
        if self.ws_ping_timeout_s > self.ws_ping_interval_s:
            raise ValueError("ws_ping_timeout_s must not exceed ws_ping_interval_s")
        return self

    @model_validator(mode="after")
    def _state_url(self) -> Settings:
        if self.state_url and self.state_url.startswith("file://"):
            self.state_file = Path(self.state_url.removeprefix("file://"))
        elif self.state_url and not self.state_url.startswith(("redis://", "rediss://")):
            raise ValueError("state_url must start with redis://, rediss:// or file://")
        return self

    @property
    def redis_url(self) -> str | None:
        return self.state_url if self.state_url and self.state_url.startswith("redis") else None

    def engine_config(self) -> EngineConfig:
        return EngineConfig(**{f.name: getattr(self, f.name) for f in fields(EngineConfig)})
