"""`make bench`: speed to lead through the four services, the maximum sustained rate, and the same run's baselines.

Starts a throwaway PostgreSQL and Kafka and the four services with production settings (log level WARNING, topics
of BENCH_PARTITIONS partitions, reps registered), then an open-loop generator posts realistic leads to
POST /v1/leads, first to warm up (BENCH_WARMUP_RATE for BENCH_WARMUP_SECONDS: the broker's JVM compiles its hot code
then), then at 50, 100, 200 and 500 leads/s (BENCH_SECONDS each) while a subscriber of its own reads
leads.routed: speed to lead = when the lead's first assigned/unassigned decision was seen minus when its 202
arrived (one monotonic clock, one process). Then it searches for the highest rate whose end-to-end backlog stays
bounded for BENCH_SUSTAIN_SECONDS, measures intake's max req/s (the consumers paused), and, on the same broker and
database server, the baselines of bench/baselines.py. Prints a table; saves var/reports/bench-<timestamp>.json and .png.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psutil  # type: ignore[import-untyped,unused-ignore]  # noqa: E402
from baselines import captured_event, relay_throughput, relay_topics, transactional_topics  # noqa: E402
from speed.http import RawHttpClient  # noqa: E402
from speed.load import REQUEST_TIMEOUT_SECONDS, Ledger, OpenLoop, lead_fields  # noqa: E402
from speed.monitor import (  # noqa: E402
    CpuSampler,
    LagSampler,
    Monitor,
    ProcessFinder,
    RoutedWatcher,
    StageReader,
    find_by_cmdline,
    process_tree,
)
from speed.phases import Pipeline, http_max_rps, judge, search_max_sustained  # noqa: E402
from speed.report import rate_table, save, stage_table, summary_lines  # noqa: E402

from shared.kafka import ensure_topics  # noqa: E402
from shared.topics import ALL_TOPICS  # noqa: E402
from tests.support.infra import KafkaBroker, PostgresServer, free_port  # noqa: E402
from tests.support.stack import SERVICES, ServiceProcess, Stack  # noqa: E402


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


SECONDS = _env_float("BENCH_SECONDS", 30)
# Load before anything is measured: a freshly started broker's JVM compiles its hot code during its first minute of
# load, and that compilation took up to a fifth of this machine's CPU from the pipeline (a production broker is
# long past it). The warm-up's own figures are reported too.
WARMUP_SECONDS = _env_float("BENCH_WARMUP_SECONDS", 60)
WARMUP_RATE = _env_float("BENCH_WARMUP_RATE", 100)
SUSTAIN_SECONDS = _env_float("BENCH_SUSTAIN_SECONDS", 60)
HTTP_SECONDS = _env_float("BENCH_HTTP_SECONDS", 10)
RATES = tuple(float(rate) for rate in os.environ.get("BENCH_RATES", "50,100,200,500").split(","))
PARTITIONS = int(os.environ.get("BENCH_PARTITIONS", "6"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "512"))
SEARCH_STEPS = int(os.environ.get("BENCH_SEARCH_STEPS", "7"))
RELAY_MESSAGES = int(os.environ.get("BENCH_RELAY_MESSAGES", "60000"))
GRACE_SECONDS = _env_float("BENCH_GRACE_SECONDS", 20)
DRAIN_SECONDS = _env_float("BENCH_DRAIN_SECONDS", 180)
DRAIN_LEADS = int(os.environ.get("BENCH_DRAIN_LEADS", "5000"))
DRAIN_ENQUEUE_RATE = _env_float("BENCH_DRAIN_ENQUEUE_RATE", 800)
REPS = [{"rep_id": f"rep-{n}", "name": f"Rep {n}", "email": f"rep{n}@example.com", "weight": 1 + n % 2}
        for n in range(1, 9)]  # fmt: skip
CONSUMERS = ("scoring", "routing", "feedback")


def production_env(name: str) -> dict[str, str]:
    """What differs from the test defaults: quiet logs and production-sized topics."""
    prefix = f"BATON_{name.upper()}_"
    return {prefix + "LOG_LEVEL": "WARNING", prefix + "TOPIC_PARTITIONS": str(PARTITIONS)}


def cpu_sampler(stack: Stack, kafka: KafkaBroker, postgres: PostgresServer) -> CpuSampler:
    """Finders for each service, Kafka's JVM, PostgreSQL (postmaster and backends) and this process."""
    sampler = CpuSampler()
    for name in SERVICES:
        process = stack[name].process
        assert process is not None
        sampler.finders[name] = functools.partial(process_tree, process.pid)
    data_dir = os.path.realpath(kafka.env.get("KAFKA_DATA_DIR", ""))
    sampler.finders["kafka"] = find_by_cmdline(f"{data_dir}/server.properties")
    port = postgres.url.rsplit(":", 1)[1].split("/", 1)[0]
    sampler.finders["postgres"] = find_by_cmdline(f"-p {port}", "bin/postgres")
    sampler.finders["bench"] = lambda: [psutil.Process()]
    return sampler


async def start_stack(bootstrap: str, postgres: PostgresServer, log_dir: Path) -> Stack:
    """The four services with production settings, ready, with reps that take any lead."""
    await ensure_topics(bootstrap, list(ALL_TOPICS), partitions=PARTITIONS, timeout_seconds=30)
    stack = Stack.create(
        bootstrap_servers=bootstrap, database_url=postgres.create_database("baton_speed"), log_dir=log_dir
    )
    for name in SERVICES:
        stack[name].env.update(production_env(name))
    await asyncio.to_thread(stack.start)
    async with httpx.AsyncClient(base_url=stack["routing"].url, headers=stack.headers) as client:
        for rep in REPS:
            (await client.post("/v1/reps", json=rep)).raise_for_status()
    return stack


def load_client(url: str) -> RawHttpClient:
    """The generator's HTTP client for `url` (http://host:port)."""
    host, _, port = url.removeprefix("http://").rstrip("/").rpartition(":")
    return RawHttpClient(host, int(port), max_connections=CONNECTIONS, timeout_seconds=REQUEST_TIMEOUT_SECONDS)


def pause(stack: Stack, names: tuple[str, ...], sig: signal.Signals) -> None:
    """SIGSTOP / SIGCONT the given services (intake measured alone, as the bare endpoint is)."""
    for name in names:
        process = stack[name].process
        if process is not None:
            process.send_signal(sig)


def start_script(arguments: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """A baseline process of bench/baselines.py, its output in `log_path`."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "baselines.py"), *arguments],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


async def pipeline_phases(
    pipeline: Pipeline, database_url: str
) -> tuple[dict[str, Any], list[dict[str, Any]], float, list[dict[str, Any]]]:
    """Warm-up, the fixed rates, the search; lost leads and duplicates counted again once everything drained."""
    await pipeline.phase("start", 20, 5, None)
    warmup = await pipeline.phase("warmup", WARMUP_RATE, WARMUP_SECONDS, None)
    warmup["quiesce_seconds"] = await pipeline.quiesce(most_records=50, timeout=60)
    warmup["maintenance_seconds"] = await asyncio.to_thread(vacuum_analyze, database_url)
    rates = [await pipeline.phase(f"rate-{rate:.0f}", rate, SECONDS, None) for rate in RATES]
    passing = [phase["rate"] for phase in rates if judge(phase, phase["rate"])[0]]
    start = max(passing, default=min(RATES))
    max_sustained, steps = await search_max_sustained(
        pipeline, start=start, seconds=SUSTAIN_SECONDS, max_steps=SEARCH_STEPS
    )
    await pipeline.settle(GRACE_SECONDS)
    for phase in (warmup, *rates, *steps):
        phase["lost"] = pipeline.ledger.backlog(phase["name"])
        phase["duplicates"] = pipeline.ledger.duplicates(phase["name"])
    return warmup, rates, max_sustained, steps


def vacuum_analyze(database_url: str) -> float:
    """VACUUM ANALYZE the services' database; how long it took. A database in service has been through
    autovacuum, which gives the planner the tables' statistics and clears dead rows. One a few minutes old has not,
    and its first pass comes when the autovacuum launcher gets to it (80 s after a table's first rows here, later
    under load): until then every connection keeps plans made on empty tables (intake read leads by a sequential
    scan, 3 to 5 ms a batch), so the rates would measure that moment instead of the services. Done once, after the
    warm-up; autovacuum does the rest."""
    started = time.monotonic()
    url = database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    subprocess.run(["psql", url, "-q", "-c", "VACUUM ANALYZE"], check=True, capture_output=True, timeout=300)
    return round(time.monotonic() - started, 2)


async def baton(kafka: KafkaBroker, postgres: PostgresServer, monitor: Monitor, log_dir: Path) -> dict[str, Any]:
    """Everything measured against the four services."""
    stack = await start_stack(kafka.bootstrap_servers, postgres, log_dir)
    monitor.cpu.finders.update(cpu_sampler(stack, kafka, postgres).finders)
    watcher = RoutedWatcher(kafka.bootstrap_servers, monitor.ledger)
    await watcher.start()
    stages = StageReader(kafka.bootstrap_servers, monitor.ledger)
    await stages.start()
    client = load_client(stack["lead_intake"].url)
    try:
        load = OpenLoop(client, "/v1/leads", stack.headers, connections=CONNECTIONS)
        pipeline = Pipeline(
            load, monitor.ledger, monitor, f"r{int(time.time())}", GRACE_SECONDS, DRAIN_SECONDS, stages=stages
        )
        warmup, rates, max_sustained, steps = await pipeline_phases(pipeline, stack.database_url)
        # Before intake's own measurement: the leads that one posts stay queued behind the paused consumers.
        scale_out = await scale_out_drains(pipeline, stack, monitor)
        pause(stack, CONSUMERS, signal.SIGSTOP)
        try:
            intake_http = await http_max_rps(load, HTTP_SECONDS, monitor, "intake")
        finally:
            pause(stack, CONSUMERS, signal.SIGCONT)
    finally:
        await client.close()
        await watcher.stop()
        await stages.stop()
        await asyncio.to_thread(stack.stop)
    return {"warmup": warmup, "rates": rates, "search": {"max_sustained": max_sustained, "steps": steps},
            "intake_http": intake_http, "scale_out": scale_out}  # fmt: skip


def with_replica(finder: ProcessFinder, pid: int) -> list[psutil.Process]:
    """A service's processes and a replica's."""
    return [*finder(), *process_tree(pid)]


async def scale_out_drains(pipeline: Pipeline, stack: Stack, monitor: Monitor) -> dict[str, Any]:
    """The same backlog routed by one, two, two and one processes each of scoring and routing (one consumer group
    per service, partitions spread over its members). In that order (ABBA), a drift over the four drains (tables
    growing, the broker's caches, the JIT) weighs on both sides alike."""
    scaled = ("scoring", "routing")
    processes = [process for name in scaled if (process := stack[name].process) is not None]

    async def drain(name: str, paused: list[subprocess.Popen[bytes]]) -> dict[str, Any]:
        return await pipeline.backlog_drain(name, leads=DRAIN_LEADS, enqueue_rate=DRAIN_ENQUEUE_RATE, paused=paused)

    await stable_groups(monitor, scaled, members=1)
    drains = [await drain("drain-1x-a", processes)]
    replicas = [stack[name].replica(1) for name in scaled]
    for replica in replicas:
        replica.start({f"BATON_{replica.name.upper()}_LOG_LEVEL": "WARNING"})
    try:
        for replica in replicas:
            await asyncio.to_thread(replica.wait_ready)
            assert replica.process is not None
            monitor.cpu.finders[replica.name] = functools.partial(
                with_replica, monitor.cpu.finders[replica.name], replica.process.pid
            )
        # A replica's first partitions come with a rebalance: wait for it, so that the drain measures two replicas
        # routing, not the group pausing to hand partitions over.
        await stable_groups(monitor, scaled, members=2)
        both = [*processes, *(replica.process for replica in replicas if replica.process is not None)]
        drains += [await drain("drain-2x-a", both), await drain("drain-2x-b", both)]
    finally:
        for replica in replicas:
            await asyncio.to_thread(replica.stop)
    await stable_groups(monitor, scaled, members=1)
    drains.append(await drain("drain-1x-b", processes))
    await pipeline.settle(GRACE_SECONDS)
    for each in drains:  # counted again once everything drained
        each["lost"] = pipeline.ledger.backlog(each["name"])
        each["duplicates"] = pipeline.ledger.duplicates(each["name"])
    one, two = _pooled(drains[0], drains[3]), _pooled(drains[1], drains[2])
    gain = two["leads_per_second"] / one["leads_per_second"] if one["leads_per_second"] else 0.0
    return {"one_replica": one, "two_replicas": two, "gain": round(gain, 2), "partitions": PARTITIONS,
            "drains": drains}  # fmt: skip


def _pooled(*drains: dict[str, Any]) -> dict[str, Any]:
    """Drains of one replica count taken together: all the leads they routed over all the time it took."""
    routed, seconds = sum(each["routed"] for each in drains), sum(each["seconds"] for each in drains)
    return {
        "accepted": sum(each["accepted"] for each in drains), "routed": routed, "seconds": round(seconds, 2),
        "leads_per_second": round(routed / seconds, 1) if seconds else 0.0,
        "each_leads_per_second": [each["leads_per_second"] for each in drains],
        "lost": sum(each["lost"] for each in drains), "duplicates": sum(each["duplicates"] for each in drains),
    }  # fmt: skip


async def stable_groups(monitor: Monitor, services: tuple[str, ...], *, members: int) -> None:
    """Wait until each service's consumer group is stable with `members` members holding partitions."""
    if monitor.lag is not None:
        waited = await monitor.lag.wait_stable({f"baton-{name}": members for name in services})
        print(f"consumer groups of {', '.join(services)} stable with {members} member(s) each after {waited} s")


async def bare_endpoint(monitor: Monitor, log_dir: Path) -> dict[str, Any]:
    """Max req/s of the bare FastAPI endpoint on one uvicorn worker, driven like intake."""
    port = free_port()
    server = start_script(["serve", str(port)], log_dir / "bare.log")
    monitor.cpu.finders["bare"] = lambda: process_tree(server.pid)
    try:
        ServiceProcess("bare", port, {}, log_dir / "bare.log", process=None).wait_ready()
        client = load_client(f"http://127.0.0.1:{port}")
        try:
            load = OpenLoop(client, "/v1/leads", {}, connections=CONNECTIONS)
            return await http_max_rps(load, HTTP_SECONDS, monitor, "bare")
        finally:
            await client.close()
    finally:
        stop_process(server)


async def raw_relay(bootstrap: str, monitor: Monitor, log_dir: Path) -> dict[str, Any]:
    """Messages/s of the three-hop aiokafka relay over a backlog of Baton's captured-lead records."""
    topics = relay_topics(f"{int(time.time())}")
    return await _relay(bootstrap, topics, [["hop", bootstrap, source, target] for source, target in
                                            itertools.pairwise(topics)], monitor, log_dir, "relay")  # fmt: skip


async def transactional_relay(
    bootstrap: str, postgres: PostgresServer, monitor: Monitor, log_dir: Path
) -> dict[str, Any]:
    """Messages/s of the same relay with an inbox and an outbox in one transaction per batch and hop, each hop its
    own database on Baton's PostgreSQL server."""
    topics = transactional_topics(f"{int(time.time())}")
    hops = [["txhop", bootstrap, source, target, postgres.create_database("baton_txhop")]
            for source, target in itertools.pairwise(topics)]  # fmt: skip
    return await _relay(bootstrap, topics, hops, monitor, log_dir, "transactional-relay")


async def _relay(
    bootstrap: str, topics: list[str], hops: list[list[str]], monitor: Monitor, log_dir: Path, phase: str
) -> dict[str, Any]:
    await ensure_topics(bootstrap, topics, partitions=PARTITIONS, timeout_seconds=30)
    processes = [start_script(arguments, log_dir / f"{phase}-{index}.log") for index, arguments in enumerate(hops)]
    monitor.cpu.finders[f"{phase}-hops"] = lambda: [p for hop in processes for p in process_tree(hop.pid)]
    monitor.phase = phase
    records = [captured_event(lead_fields(number, phase)) for number in range(RELAY_MESSAGES)]
    try:
        result = await relay_throughput(bootstrap, topics, records)
    finally:
        for process in processes:
            stop_process(process)
    return {**result, "cpu": monitor.cpu_by_phase(phase)}


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, measured."""
    p99 = {phase["rate"]: phase["speed_to_lead_ms"]["p99"] for phase in result["rates"]}
    ratio = result["ratios"]["throughput_vs_relay"]
    sustained = result["search"]["max_sustained"]
    rows = [(f"speed-to-lead p99 <= {limit} ms at {rate:.0f} leads/s", p99.get(rate), limit)
            for rate, limit in ((100.0, 100), (500.0, 250))]  # fmt: skip
    checks = [{"name": name, "measured": f"{value} ms" if value is not None else "not measured",
               "met": value is not None and value <= limit} for name, value, limit in rows]  # fmt: skip
    checks.append({"name": ">= 1000 leads/s sustained end to end", "measured": f"{sustained:.0f}/s",
                   "met": sustained >= 1000})  # fmt: skip
    checks.append({"name": "throughput >= 0.5 x raw relay", "measured": f"{ratio:.3f}", "met": ratio >= 0.5})
    return checks


async def measure(kafka: KafkaBroker, postgres: PostgresServer, log_dir: Path) -> dict[str, Any]:
    """The whole run, with the samplers going throughout."""
    lag = LagSampler(kafka.bootstrap_servers)
    await lag.start()
    monitor = Monitor(CpuSampler(), lag, Ledger())
    sampling = asyncio.create_task(monitor.run())
    try:
        result = await baton(kafka, postgres, monitor, log_dir)
        result["bare_http"] = await bare_endpoint(monitor, log_dir)
        result["relay"] = await raw_relay(kafka.bootstrap_servers, monitor, log_dir)
        result["transactional_relay"] = await transactional_relay(kafka.bootstrap_servers, postgres, monitor, log_dir)
    finally:
        sampling.cancel()
        await lag.stop()
    relay_rate, bare_rate = result["relay"]["messages_per_second"], result["bare_http"]["max_rps"]
    floor_rate = result["transactional_relay"]["messages_per_second"]
    result["ratios"] = {
        "throughput_vs_relay": _ratio(result["search"]["max_sustained"], relay_rate),
        "intake_vs_bare": _ratio(result["intake_http"]["max_rps"], bare_rate),
        "transactional_vs_relay": _ratio(floor_rate, relay_rate),
        "throughput_vs_transactional": _ratio(result["search"]["max_sustained"], floor_rate),
        "drain_vs_transactional": _ratio(result["scale_out"]["one_replica"]["leads_per_second"], floor_rate),
    }
    result["timeline"] = monitor.samples
    return result


def _ratio(part: float, whole: float) -> float:
    return round(part / whole, 4) if whole else 0.0


def main() -> None:
    """Start the infrastructure, measure, report."""
    log_dir = ROOT / "var" / "bench" / "speed"
    log_dir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    kafka = KafkaBroker.start(log_dir.parent, use_given=False)
    postgres = PostgresServer.start(use_given=False)
    try:
        result = asyncio.run(measure(kafka, postgres, log_dir))
    finally:
        kafka.stop()
        postgres.stop()
    stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    result = {"at": stamp, "machine": {"cpus": os.cpu_count(), "load_average_before": load_before,
              "load_average_after": os.getloadavg(), "note": "everything (load generator included) shares the "
              "machine, and other work may run beside it"}, "settings": {"seconds": SECONDS,
              "warmup_seconds": WARMUP_SECONDS, "warmup_rate": WARMUP_RATE, "sustain_seconds": SUSTAIN_SECONDS,
              "http_seconds": HTTP_SECONDS, "partitions": PARTITIONS,
              "connections": CONNECTIONS, "reps": len(REPS), "relay_messages": RELAY_MESSAGES}, **result}  # fmt: skip
    result["targets"] = targets(result)
    phases = [*result["rates"], *result["search"]["steps"]]
    print("\n".join([*rate_table(phases), "", *stage_table(phases), "", *summary_lines(result)]))
    json_path, png_path = save(result, ROOT / "var" / "reports", stamp)
    print(f"saved {json_path.relative_to(ROOT)} and {png_path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
