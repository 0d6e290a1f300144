"""The real Kafka broker and PostgreSQL server tests run against, started by the project's own scripts."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import SecretStr, TypeAdapter

from shared.kafka import PLAINTEXT, KafkaSecurity
from shared.settings import KafkaSaslMechanism, KafkaSecurityProtocol

ROOT = Path(__file__).resolve().parents[2]
KAFKA_SCRIPT = ROOT / "deploy" / "kafka" / "kafka.sh"
PG_SCRIPT = ROOT / "deploy" / "postgres" / "pg.sh"


def free_port() -> int:
    """A TCP port nobody uses right now, below the kernel's ephemeral range.

    A port from the ephemeral range (what binding port 0 gives) can be taken, before the service binds it, as the
    source port of any outgoing connection — a pooled database or Kafka connection then holds it for minutes.
    """
    low, _ = _ephemeral_range()
    candidates = list(range(max(1024, low - 12_000), low))
    random.shuffle(candidates)
    for port in candidates:
        if port in _HANDED_OUT:  # free, but promised to a service that may not have bound it yet
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no free port below the ephemeral range")


_HANDED_OUT: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _run_script(script: Path, command: str, env: dict[str, str], *, timeout: float = 600) -> str:
    result = subprocess.run(
        ["bash", str(script), command], env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise RuntimeError(f"{script.name} {command} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.stdout


def _last_assignment(output: str, name: str) -> str:
    value = _assignment(output, name)
    if value is None:
        raise RuntimeError(f"no {name}= line in:\n{output}")
    return value


def _assignment(output: str, name: str) -> str | None:
    for line in reversed(output.strip().splitlines()):
        if line.startswith(name + "="):
            return line.split("=", 1)[1]
    return None


ListenerProtocol = Literal["PLAINTEXT", "SASL_PLAINTEXT", "SSL", "SASL_SSL"]
SASL_USERNAME = "baton"


@dataclass
class KafkaBroker:
    """A broker started for this test run (or one given by KAFKA_BOOTSTRAP_SERVERS)."""

    bootstrap_servers: str
    env: dict[str, str]
    owned: bool
    # What a client of this broker needs besides the address: the services' environment and in-process clients'
    # security (both plaintext unless the broker was started with another listener protocol).
    client_env: dict[str, str] = field(default_factory=dict)
    security: KafkaSecurity = PLAINTEXT

    @classmethod
    def start(
        cls,
        run_dir: Path,
        *,
        use_given: bool = True,
        listener: ListenerProtocol = "PLAINTEXT",
        sasl_password: str | None = None,
    ) -> KafkaBroker:
        """Use KAFKA_BOOTSTRAP_SERVERS if set (and allowed, and plaintext is asked for), else start a single-node
        KRaft broker on a free port whose client listener speaks `listener` (SASL_*: user `baton`, SCRAM-SHA-512
        or PLAIN, with `sasl_password`; *SSL: a throwaway CA, whose file the client settings name)."""
        given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") if use_given and listener == "PLAINTEXT" else None
        if given:
            return cls(bootstrap_servers=given, env={}, owned=False)
        port = free_port()
        env = {"KAFKA_PORT": str(port), "KAFKA_DATA_DIR": str(run_dir / f"kafka-{port}")}
        if listener != "PLAINTEXT":
            env["KAFKA_LISTENER_PROTOCOL"] = listener
        if listener.startswith("SASL_"):
            if not sasl_password:
                raise ValueError(f"a {listener} broker needs a sasl_password")
            env |= {"KAFKA_SASL_USERNAME": SASL_USERNAME, "KAFKA_SASL_PASSWORD": sasl_password}
        output = _run_script(KAFKA_SCRIPT, "start", env)
        client_env = _client_env(output, sasl_password if listener.startswith("SASL_") else None)
        return cls(
            bootstrap_servers=_last_assignment(output, "KAFKA_BOOTSTRAP_SERVERS"),
            env=env,
            owned=True,
            client_env=client_env,
            security=_security(client_env),
        )

    def restart(self) -> None:
        """Start the same broker again after `stop` or `kill` (same port, same data)."""
        _run_script(KAFKA_SCRIPT, "start", self.env)

    def stop(self, *, clean: bool = True) -> None:
        """Stop the broker if this run started it."""
        if self.owned:
            _run_script(KAFKA_SCRIPT, "stop", {**self.env, "KAFKA_CLEAN": "1" if clean else "0"})

    def kill(self) -> None:
        """SIGKILL the broker (it keeps its data for `restart`)."""
        _run_script(KAFKA_SCRIPT, "kill", self.env)


def _client_env(output: str, sasl_password: str | None) -> dict[str, str]:
    """The client settings kafka.sh printed, plus the credentials it was given (it never prints those)."""
    names = ("KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_MECHANISM", "KAFKA_SSL_CAFILE")
    env = {name: value for name in names if (value := _assignment(output, name)) is not None}
    if sasl_password is not None:
        env |= {"KAFKA_SASL_USERNAME": SASL_USERNAME, "KAFKA_SASL_PASSWORD": sasl_password}
    return env


def _security(client_env: dict[str, str]) -> KafkaSecurity:
    """The same settings as a KafkaSecurity, for clients the tests run in-process."""
    if "KAFKA_SECURITY_PROTOCOL" not in client_env:
        return PLAINTEXT
    password = client_env.get("KAFKA_SASL_PASSWORD")
    cafile = client_env.get("KAFKA_SSL_CAFILE")
    return KafkaSecurity(
        protocol=TypeAdapter(KafkaSecurityProtocol).validate_python(client_env["KAFKA_SECURITY_PROTOCOL"]),
        sasl_mechanism=TypeAdapter(KafkaSaslMechanism).validate_python(
            client_env.get("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
        ),
        sasl_username=client_env.get("KAFKA_SASL_USERNAME"),
        sasl_password=SecretStr(password) if password else None,
        ssl_cafile=Path(cafile) if cafile else None,
    )


@dataclass
class PostgresServer:
    """A throwaway PostgreSQL cluster (or the server given by DATABASE_URL)."""

    url: str
    env: dict[str, str]
    owned: bool

    @classmethod
    def start(cls, *, use_given: bool = True) -> PostgresServer:
        """Use DATABASE_URL if set (and allowed), else initdb and start a cluster on a free port."""
        given = os.environ.get("DATABASE_URL") if use_given else None
        if given:
            return cls(url=given, env={}, owned=False)
        port = free_port()
        # pg.sh picks the data dir: the server runs as the postgres user, which may not reach run_dir.
        env = {"PG_PORT": str(port)}
        output = _run_script(PG_SCRIPT, "start", env, timeout=300)
        return cls(url=_last_assignment(output, "DATABASE_URL"), env=env, owned=True)

    def create_database(self, prefix: str) -> str:
        """A new empty database on this server; returns its URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        base, _, _ = self.url.rpartition("/")
        admin_url = self.url.replace("postgresql+asyncpg://", "postgresql://")
        subprocess.run(["psql", admin_url, "-q", "-c", f'CREATE DATABASE "{name}"'], check=True, capture_output=True)
        return f"{base}/{name}"

    def stop(self) -> None:
        """Stop and remove the cluster if this run started it."""
        if self.owned:
            _run_script(PG_SCRIPT, "stop", {**self.env, "PG_CLEAN": "1"})

    def halt(self) -> None:
        """Stop the server but keep its data (an outage)."""
        _run_script(PG_SCRIPT, "stop", {**self.env, "PG_CLEAN": "0"})

    def resume(self) -> None:
        """Start the server again after `halt` or `kill`."""
        _run_script(PG_SCRIPT, "start", self.env, timeout=120)

    def kill(self) -> None:
        """SIGKILL the postmaster and its children (a crash)."""
        _run_script(PG_SCRIPT, "kill", self.env)
