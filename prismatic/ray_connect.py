"""Joining the Ray cluster of `orchestration.ray` (docs/architecture.md "Executors"): one clear error,
naming `orchestration.ray.address`, when its head cannot be reached."""

from __future__ import annotations

import socket
from pathlib import Path

from prismatic.config import RayConfig
from prismatic.errors import InputError

ADDRESS_FIELD = "orchestration.ray.address"
CONNECT_TIMEOUT_S = 10.0
"""How long the head's port gets to accept a TCP connection before the address is reported unreachable
(Ray itself would retry for minutes)."""


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of `host:port` or `ray://host:port`; None for `auto`."""
    if address == "auto":
        return None
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def check_head(ray_config: RayConfig, config_path: str | Path) -> None:
    """An `InputError` naming `orchestration.ray.address` in `config_path` unless the address is
    `auto`, `host:port` or `ray://host:port` and, for the latter two, the head's port accepts a TCP
    connection within `CONNECT_TIMEOUT_S` (`prism run` checks this before it writes anything)."""
    address = ray_config.address
    where = _host_port(address)
    if address != "auto" and where is None:
        raise InputError(config_path, f"{address!r} is not host:port, ray://host:port or auto", field=ADDRESS_FIELD)
    if where is not None:
        try:
            socket.create_connection(where, timeout=CONNECT_TIMEOUT_S).close()
        except OSError as exc:
            raise InputError(config_path, f"cannot reach the Ray head at {address} ({exc}); start it with "
                             "`ray start --head` or fix the address", field=ADDRESS_FIELD) from None


def connect(ray_config: RayConfig, config_path: str | Path) -> bool:
    """Join the cluster at `ray_config.address` with `ray_config.runtime_env`, unless this process has
    joined one already; True when this call joined it (the caller then leaves with `ray.shutdown()`).

    A head that cannot be reached is an `InputError` naming `orchestration.ray.address` in
    `config_path`: a failed `check_head`, or any failure of `ray.init` (`auto` with no cluster running, a wrong
    cluster, ...). This process never starts a cluster of its own.
    """
    import ray

    if ray.is_initialized():
        return False
    check_head(ray_config, config_path)
    address = ray_config.address
    try:
        ray.init(address=address, runtime_env=ray_config.runtime_env or None, namespace="prismatic",
                 logging_level="WARNING", log_to_driver=False)
    except Exception as exc:  # Ray raises ConnectionError, RuntimeError or ValueError for a cluster it cannot join
        raise InputError(config_path, f"cannot join the Ray cluster at {address}: {exc}".replace("\n", " "),
                         field=ADDRESS_FIELD) from None
    return True
