"""What runs beside the load: the subscriber that sees each routing decision, and the once-a-second samplers of
CPU per process and consumer lag per group."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import psutil  # type: ignore[import-untyped,unused-ignore]  # no stubs; make lint runs without .[bench]
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from shared.topics import LEADS_CAPTURED, LEADS_ROUTED, LEADS_SCORED
from speed.kafka import topic_partitions
from speed.load import Ledger

ProcessFinder = Callable[[], list[psutil.Process]]


class RoutedWatcher:
    """Reads leads.routed outside any group, from its end as of `start`, and notes when each decision is seen."""

    def __init__(self, bootstrap_servers: str, ledger: Ledger) -> None:
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=None, enable_auto_commit=False)
        self._ledger = ledger
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Position at the end of every partition, then read in the background."""
        await self._consumer.start()
        partitions = await topic_partitions(self._consumer, LEADS_ROUTED)
        self._consumer.assign(partitions)
        await self._consumer.seek_to_end(*partitions)
        for partition in partitions:
            await self._consumer.position(partition)  # resolve "end" now, before any lead is sent
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=100)
            seen = time.monotonic()
            for records in batches.values():
                for record in records:
                    payload = orjson.loads(record.value)
                    self._ledger.decision(record.key.decode(), payload["kind"], payload["assignment_id"], seen)

    async def stop(self) -> None:
        """Stop reading."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()


class StageReader:
    """Reads leads.captured, leads.scored and leads.routed from a moment on, outside any group, and notes when each
    lead's events were committed (their time) and published (their record's timestamp). Run after a phase, not
    beside it: decoding three topics would take CPU from the system being measured."""

    def __init__(self, bootstrap_servers: str, ledger: Ledger) -> None:
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=None, enable_auto_commit=False)
        self._ledger = ledger
        self._partitions: list[TopicPartition] = []

    async def start(self) -> None:
        """Connect and take every partition of the three topics."""
        await self._consumer.start()
        for topic in (LEADS_CAPTURED, LEADS_SCORED, LEADS_ROUTED):
            self._partitions += await topic_partitions(self._consumer, topic)
        self._consumer.assign(self._partitions)

    async def read_since(self, since_ms: float, timeout: float = 120.0) -> None:
        """Every record from `since_ms` (epoch ms) to the current ends."""
        starts = await self._consumer.offsets_for_times({partition: int(since_ms) for partition in self._partitions})
        ends = await self._consumer.end_offsets(self._partitions)
        for partition in self._partitions:
            found = starts.get(partition)
            self._consumer.seek(partition, found.offset if found is not None else ends[partition])
        deadline = time.monotonic() + timeout
        while any([await self._consumer.position(partition) < ends[partition] for partition in self._partitions]):
            if time.monotonic() > deadline:
                raise TimeoutError(f"stages not read within {timeout:.0f} s")
            for records in (await self._consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    committed = datetime.fromisoformat(dict(record.headers)["ce_time"].decode()).timestamp() * 1000
                    self._ledger.stage(record.key.decode(), record.topic, committed, float(record.timestamp))

    async def stop(self) -> None:
        """Disconnect."""
        await self._consumer.stop()


@dataclass
class CpuSampler:
    """cpu_percent of named groups of processes (a service, Kafka's JVM, PostgreSQL and its backends), and of the
    machine: `other` is what processes outside the groups used, `steal` what the hypervisor gave to other guests,
    `idle` what nobody used. A phase slow with idle cores, or with `other` or `steal` high, was slowed by the
    machine, not by the code: on this shared host the same code's p99 at 100 leads/s ranged from 117 to 303 ms."""

    finders: dict[str, ProcessFinder] = field(default_factory=dict)
    _known: dict[int, psutil.Process] = field(default_factory=dict)
    _machine_before: Any = None

    def sample(self) -> dict[str, float]:
        """Percent of one core each group used since the previous sample (100 = one core busy)."""
        shares: dict[str, float] = {}
        for label, find in self.finders.items():
            total = 0.0
            for process in find():
                known = self._known.setdefault(process.pid, process)
                with contextlib.suppress(psutil.Error):
                    total += known.cpu_percent(None)
            shares[label] = round(total, 1)
        now = psutil.cpu_times()
        if self._machine_before is not None:
            shares |= machine_shares(self._machine_before._asdict(), now._asdict(), sum(shares.values()))
        self._machine_before = now
        return shares


def machine_shares(before: dict[str, float], after: dict[str, float], grouped: float) -> dict[str, float]:
    """`idle`, `steal` and `other` (busy beyond the `grouped` percent the named groups used) between two readings of
    the machine's CPU times, in percent of one core. Linux counts guest time in user time: it is left out."""
    spent = {name: after[name] - before[name] for name in after if name not in ("guest", "guest_nice")}
    total = sum(spent.values())
    if total <= 0:
        return {}
    cores = psutil.cpu_count() or 1
    share = {name: 100.0 * cores * seconds / total for name, seconds in spent.items()}
    idle = share.get("idle", 0.0) + share.get("iowait", 0.0)
    steal = share.get("steal", 0.0)
    busy = 100.0 * cores - idle - steal
    return {"other": round(max(busy - grouped, 0.0), 1), "steal": round(steal, 1), "idle": round(idle, 1)}


@dataclass
class _Family:
    """Each process's children, read from /proc once for all the trees of one sample: psutil's `children()` reads
    every process's parent on each call, and with one call per group it was a fifth of the bench's CPU."""

    read_at: float = float("-inf")
    children: dict[int, list[int]] = field(default_factory=dict)

    def of(self, pid: int) -> list[int]:
        now = time.monotonic()
        if now - self.read_at > FAMILY_FRESH_SECONDS:
            self.children = {}
            for process in psutil.process_iter(["ppid"]):
                self.children.setdefault(process.info["ppid"], []).append(process.pid)
            self.read_at = now
        return self.children.get(pid, [])


# Well under the samplers' second: one reading serves every group of a sample, the next sample reads afresh.
FAMILY_FRESH_SECONDS = 0.25
_family = _Family()


def process_tree(pid: int) -> list[psutil.Process]:
    """A process and all its descendants (empty once it is gone)."""
    tree: list[psutil.Process] = []
    waiting = [pid]
    while waiting:
        found = waiting.pop()
        try:
            tree.append(psutil.Process(found))
        except psutil.Error:
            if found == pid:
                return []
            continue
        waiting += _family.of(found)
    return tree


def find_by_cmdline(*fragments: str) -> ProcessFinder:
    """The first process (with descendants) whose command line contains every fragment; looked up again when gone."""
    found: list[int] = []

    def find() -> list[psutil.Process]:
        if not found or not psutil.pid_exists(found[0]):
            found[:] = [
                process.pid
                for process in psutil.process_iter(["cmdline"])
                if all(fragment in " ".join(process.info["cmdline"] or ()) for fragment in fragments)
            ][:1]
        return process_tree(found[0]) if found else []

    return find


class LagSampler:
    """Per Baton consumer group: end offsets minus committed offsets, summed over its partitions."""

    def __init__(self, bootstrap_servers: str) -> None:
        self._admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=None)

    async def start(self) -> None:
        """Connect."""
        await self._admin.start()
        await self._consumer.start()

    async def sample(self) -> dict[str, int]:
        """Lag of each `baton-*` group now."""
        groups = sorted(group for group, _ in await self._admin.list_consumer_groups() if group.startswith("baton-"))
        lags: dict[str, int] = {}
        for group in groups:
            committed = await self._admin.list_consumer_group_offsets(group)
            partitions = [tp for tp, meta in committed.items() if meta.offset >= 0]
            ends = await self._consumer.end_offsets(partitions) if partitions else {}
            lags[group] = sum(max(0, ends[tp] - committed[tp].offset) for tp in partitions)
        return lags

    async def members(self, group: str) -> int:
        """How many members of `group` hold partitions, once the group is stable (0 while it rebalances)."""
        (response,) = await self._admin.describe_consumer_groups([group])
        ((_, _, state, _, _, members),) = response.groups
        return sum(1 for member in members if member[4]) if state == "Stable" else 0

    async def wait_stable(self, members: dict[str, int], timeout: float = 60.0) -> float:
        """Wait until each group in `members` is stable with that many members holding partitions (a replica that
        joined has its share), or `timeout` passed; returns the seconds waited."""
        began = time.monotonic()
        while time.monotonic() - began < timeout:
            counts = {group: await self.members(group) for group in members}
            if counts == members:
                break
            await asyncio.sleep(0.2)  # poll
        return round(time.monotonic() - began, 1)

    async def stop(self) -> None:
        """Disconnect."""
        await self._consumer.stop()
        await self._admin.close()


@dataclass
class Monitor:
    """Samples CPU, consumer lag and the end-to-end backlog once a second, each sample tagged with the phase."""

    cpu: CpuSampler
    lag: LagSampler | None
    ledger: Ledger
    phase: str = "setup"
    samples: list[dict[str, Any]] = field(default_factory=list)
    _started: float = field(default_factory=time.monotonic)

    async def run(self) -> None:
        """Sample until cancelled."""
        self.cpu.sample()  # prime: psutil measures from the previous call
        while True:
            await asyncio.sleep(1.0)  # poll
            lags: dict[str, int] = {}
            if self.lag is not None:
                with contextlib.suppress(Exception):  # a slow admin call must not end the run
                    lags = await asyncio.wait_for(self.lag.sample(), 5.0)
            self.samples.append({
                "t": round(time.monotonic() - self._started, 1), "phase": self.phase, "cpu": self.cpu.sample(),
                "lag": lags, "backlog": self.ledger.backlog(self.phase),
            })  # fmt: skip

    def cpu_by_phase(self, phase: str) -> dict[str, float]:
        """Mean CPU percent of each process group over the samples of `phase`."""
        rows = [sample["cpu"] for sample in self.samples if sample["phase"] == phase]
        labels = {label for row in rows for label in row}
        return {label: round(sum(row.get(label, 0.0) for row in rows) / len(rows), 1) for label in sorted(labels)}
