"""Every service setting, read from ``PROGRESS_*`` environment variables (or a ``.env`` file).

The engine's settings take their defaults from :class:`~progress_stream.engine.engine.EngineConfig` and are handed
to it by :meth:`Settings.engine_config`; the rest belong to the web layer.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import fields
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from progress_stream.engine.durability.store import DEFAULT_PREFIX
from progress_stream.engine.engine import EngineConfig
from progress_stream.engine.streams import DEFAULT_OWNER, Tenant
from progress_stream.server.edge import host_name

ENGINE = EngineConfig()
#: The names a server bound to a loopback address answers by default (any port).
LOOPBACK_HOSTS = "localhost,127.0.0.1,[::1]"


#: The name of the admin key's own streams; no tenant of PROGRESS_API_KEYS may take it.
ADMIN_NAME = "admin"
TENANT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def key_pairs(value: str) -> list[tuple[str, str]]:
    """``name:key,name:key`` → ``[(name, key)]`` (a key may hold ``:``); a ValueError names the pair at fault,
    never a key."""
    pairs = []
    for i, pair in enumerate(value.split(","), 1):
        name, sep, key = pair.strip().partition(":")
        if not sep or not TENANT_NAME.fullmatch(name):
            raise ValueError(f"pair {i} is not name:key with a name of 1-64 characters of [A-Za-z0-9_.-]")
        if not key.strip():
            raise ValueError(f"pair {i} ({name!r}) has an empty key")
        if name == ADMIN_NAME:
            raise ValueError(f"pair {i}: {ADMIN_NAME!r} is the admin key's name (PROGRESS_ADMIN_KEY)")
        pairs.append((name, key))
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise ValueError("a name is given twice")
    return pairs


def is_loopback(host: str) -> bool:
    """Whether a bind address reaches this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PROGRESS_", env_file=".env", extra="ignore")

    model_path: Path = Field(Path("models/progress_head.onnx"), description="the exported ONNX cell")
    providers: str = Field("auto", description="auto (CUDA if usable, else CPU) or e.g. 'cuda,cpu' / 'cpu'")
    threads: int = Field(1, ge=0, description="onnxruntime intra-op threads (0: all cores)")
    host: str = "127.0.0.1"
    port: int = 8000
    max_streams: int = Field(ENGINE.max_streams, ge=1, description="streams held at once; creating more answers 503")
    max_streams_per_key: int | None = Field(
        ENGINE.max_streams_per_key,
        ge=1,
        description="streams one API key holds at once (the admin key aside); creating more answers 429 "
        "stream_quota. Unset: only max_streams bounds them",
    )
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
    api_key: str | None = Field(
        None,
        description="when set, /v1/* needs 'Authorization: Bearer KEY': one tenant, named 'default'; "
        "empty refuses to start",
    )
    api_keys: str | None = Field(
        None,
        description="comma-separated name:key pairs, one tenant each (names: 1-64 of [A-Za-z0-9_.-]): a stream "
        "belongs to the key that created it, and another key gets 404 for it",
    )
    admin_key: str | None = Field(None, description="a key that sees and may delete every tenant's streams")
    allowed_origins: str = Field(
        "",
        description="comma-separated browser origins allowed besides the server's own ('*': any); "
        "a request or WebSocket whose Origin header is not allowed gets 403",
    )
    allowed_hosts: str | None = Field(
        None,
        description="comma-separated Host names this server answers, any port ('.example.com': it and its "
        "subdomains; '*': any); another Host gets 421. Unset: localhost,127.0.0.1,[::1] when PROGRESS_HOST is a "
        "loopback address, else any (a proxy in front names the host: list it)",
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
            raise ValueError("PROGRESS_STATE_URL: must start with redis://, rediss:// or file://")
        return self

    @field_validator("api_key", "admin_key")
    @classmethod
    def _key(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("is empty: unset it to serve without a key (then bind to loopback), or set a key")
        return value

    @field_validator("api_keys")
    @classmethod
    def _api_keys(cls, value: str | None) -> str | None:
        if value is not None:
            key_pairs(value)
        return value

    @model_validator(mode="after")
    def _distinct_keys(self) -> Settings:
        if sum(t.name == DEFAULT_OWNER for _, t in self.tenants()) > 1:
            raise ValueError(
                f"PROGRESS_API_KEYS: names {DEFAULT_OWNER!r}, the tenant of PROGRESS_API_KEY: set one of the two"
            )
        keys = [key for key, _ in self.tenants()]
        if len(set(keys)) != len(keys):
            raise ValueError(
                "PROGRESS_API_KEYS: one key is given twice (with PROGRESS_API_KEY and PROGRESS_ADMIN_KEY): "
                "each key is one tenant"
            )
        return self

    def tenants(self) -> list[tuple[str, Tenant]]:
        """Every key and the tenant it is; empty when the server has no key (everyone may do anything)."""
        pairs = [(key, Tenant(name)) for name, key in key_pairs(self.api_keys)] if self.api_keys is not None else []
        if self.api_key is not None:
            pairs.append((self.api_key, Tenant(DEFAULT_OWNER)))
        if self.admin_key is not None:
            pairs.append((self.admin_key, Tenant(ADMIN_NAME, admin=True)))
        return pairs

    @field_validator("allowed_hosts")
    @classmethod
    def _allowed_hosts(cls, value: str | None) -> str | None:
        if value is None:
            return None
        for entry in (e.strip() for e in value.split(",")):
            if entry != "*" and host_name(entry.removeprefix(".")) is None:
                raise ValueError(f"{entry[:40]!r} is not a host name, '.domain' or '*'")
        return value

    @property
    def hosts(self) -> str:
        """The Host names answered: ``allowed_hosts``, or by default the loopback names on a loopback
        address and any name on another."""
        if self.allowed_hosts is not None:
            return self.allowed_hosts
        return LOOPBACK_HOSTS if is_loopback(self.host) else "*"

    @property
    def redis_url(self) -> str | None:
        return self.state_url if self.state_url and self.state_url.startswith("redis") else None

    def engine_config(self) -> EngineConfig:
        return EngineConfig(**{f.name: getattr(self, f.name) for f in fields(EngineConfig)})


def settings_error(exc: ValidationError) -> str:
    """One line for settings that cannot be used: the first variable at fault and why (never its value)."""
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    message = first["msg"].removeprefix("Value error, ")
    if first["loc"]:  # a field's own check; the checks across fields name the fields themselves
        message = f"{Settings.model_config['env_prefix']}{str(first['loc'][0]).upper()}: {message}"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return message + more
