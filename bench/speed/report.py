"""The report of `make bench`: a printed table, var/reports/bench-<timestamp>.json and a PNG beside it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib  # type: ignore[import-not-found,unused-ignore]  # make lint runs without .[bench]

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # type: ignore[import-not-found,unused-ignore]

from speed.load import STAGES

CPU_COLUMNS = ("lead_intake", "scoring", "routing", "feedback", "kafka", "postgres", "bench", "other", "steal", "idle")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def rate_table(phases: list[dict[str, Any]]) -> list[str]:
    """One line per phase: counts, speed to lead percentiles, intake response p99, CPU per process."""
    header = (
        f"{'phase':<14}{'rate/s':>7}{'sent':>7}{'202':>7}{'non202':>7}{'unans':>6}{'lost':>6}{'dup':>5}"
        f"{'p50':>7}{'p95':>7}{'p99':>7}{'max':>7}{'http99':>7}  " + " ".join(f"{name[:7]:>7}" for name in CPU_COLUMNS)
    )
    lines = [header, "-" * len(header)]
    for phase in phases:
        speed, response, cpu = phase["speed_to_lead_ms"], phase["response_ms"], phase["cpu"]
        lines.append(
            f"{phase['name']:<14}{phase['rate']:>7.0f}{phase['sent']:>7}{phase['accepted']:>7}"
            f"{sum(phase['non_202'].values()):>7}{phase['unanswered'] + phase['shed']:>6}"
            f"{phase['lost']:>6}{phase['duplicates']:>5}"
            f"{_ms(speed['p50']):>7}{_ms(speed['p95']):>7}{_ms(speed['p99']):>7}{_ms(speed['max']):>7}"
            f"{_ms(response['p99']):>7}  " + " ".join(f"{cpu.get(name, 0.0):>7.0f}" for name in CPU_COLUMNS)
        )
    return lines


def stage_table(phases: list[dict[str, Any]]) -> list[str]:
    """One line per phase: where speed to lead went, p50 and p99 of each step between capture and decision."""
    stages = [stage for stage, _, _ in STAGES]
    header = f"{'phase':<14}" + "".join(f"{stage:>22}" for stage in stages)
    lines = [header, f"{'':<14}" + f"{'p50 / p99 ms':>22}" * len(stages), "-" * len(header)]
    for phase in phases:
        found = phase.get("stages_ms", {})
        cells = [found.get(stage, {"p50": None, "p99": None}) for stage in stages]
        lines.append(f"{phase['name']:<14}" + "".join(f"{_ms(c['p50']) + ' / ' + _ms(c['p99']):>22}" for c in cells))
    return lines


def _bound(http: dict[str, Any]) -> str:
    failed = http["steps"][-1] if http["steps"] and not http["steps"][-1]["ok"] else None
    bound = failed is not None and failed["client_bound"]
    return " (client-bound: the generator was past one core at the next step)" if bound else ""


def _search_step(step: dict[str, Any]) -> str:
    verdict = "ok" if step["sustained"] else f"NO ({step['reason']})"
    caught_up = step.get("catch_up_seconds", 0.0)
    # The wait reads the monitor's samples, one a second: only a longer wait says a group was behind.
    return f"{step['rate']:.0f}/s {verdict}" + (f" after {caught_up} s catching up" if caught_up >= 3 else "")


def summary_lines(result: dict[str, Any]) -> list[str]:
    """Everything after the table: search, baselines, ratios, targets."""
    search, relay = result["search"], result["relay"]
    lines = [
        "speed to lead in ms (202 received -> first assigned/unassigned seen on leads.routed); unans = timed out or "
        "shed (every connection busy); http99 = p99 of the "
        "202 from the scheduled send; CPU in % of one core (2 cores = 200 %), mean over the phase; other = "
        "processes beside Baton and the bench, steal = CPU the hypervisor gave to other guests, idle = unused: a "
        "phase with steal high ran on less than two cores",
        "max sustained (each step once every consumer group caught up on the one before): "
        + ", ".join(_search_step(step) for step in search["steps"]),
        _warmup_line(result["warmup"]),
        f"Baton max sustained throughput: {search['max_sustained']:.0f} leads/s end to end",
        f"raw 3-hop aiokafka relay: {relay['messages_per_second']:.0f} msg/s "
        f"({relay['arrived']}/{relay['messages']} in {relay['seconds']} s)",
        _floor_line(result),
        f"intake max req/s: {result['intake_http']['max_rps']:.0f}{_bound(result['intake_http'])}; bare FastAPI "
        f"endpoint: {result['bare_http']['max_rps']:.0f} req/s{_bound(result['bare_http'])} (one uvicorn worker "
        "each, same open-loop client)",
        f"ratios: throughput / relay = {result['ratios']['throughput_vs_relay']:.3f}; "
        f"intake / bare = {result['ratios']['intake_vs_bare']:.3f}",
        _scale_out_line(result["scale_out"]),
        "targets:",
    ]
    lines += [
        f"  {'MET    ' if target['met'] else 'NOT MET'} {target['name']}: {target['measured']}"
        for target in result["targets"]
    ]
    return lines


def _floor_line(result: dict[str, Any]) -> str:
    floor, ratios = result["transactional_relay"], result["ratios"]
    return (
        f"the same relay with an inbox and an outbox in one PostgreSQL transaction per batch and hop (Baton's design "
        f"with no domain work): {floor['messages_per_second']:.0f} msg/s ({floor['arrived']}/{floor['messages']} in "
        f"{floor['seconds']} s), {ratios['transactional_vs_relay']:.3f} of the raw relay; Baton's max sustained "
        f"{ratios['throughput_vs_transactional']:.3f} of it, its one-replica backlog drain "
        f"{ratios['drain_vs_transactional']:.3f}"
    )


def _warmup_line(warmup: dict[str, Any]) -> str:
    speed = warmup["speed_to_lead_ms"]
    return (
        f"warm-up before the rates (not judged): {warmup['rate']:.0f}/s for {warmup['seconds']:.0f} s, speed to lead "
        f"p50/p99 {speed['p50']}/{speed['p99']} ms, Kafka CPU {warmup['cpu'].get('kafka', 0):.0f} %, "
        f"lost {warmup['lost']}, duplicated {warmup['duplicates']}; lag settled in {warmup['quiesce_seconds']} s"
        + (f"; VACUUM ANALYZE took {warmup['maintenance_seconds']} s" if "maintenance_seconds" in warmup else "")
    )


def _scale_out_line(scale: dict[str, Any]) -> str:
    one, two = scale["one_replica"], scale["two_replicas"]
    each = len(one.get("each_leads_per_second", [1]))

    def drains(pooled: dict[str, Any]) -> str:
        return " and ".join(f"{rate:.0f}" for rate in pooled.get("each_leads_per_second", []))

    return (
        f"scale-out ({scale['partitions']} partitions, {each} backlogs of {one['accepted'] // each} leads per "
        f"replica count): 1 replica each of scoring and routing {one['leads_per_second']:.0f} leads/s "
        f"({drains(one)}), 2 replicas each {two['leads_per_second']:.0f} leads/s ({drains(two)}), "
        f"x{scale['gain']:.2f}; lost {one['lost'] + two['lost']}, duplicates {one['duplicates'] + two['duplicates']}"
    )


def save(result: dict[str, Any], reports: Path, stamp: str) -> tuple[Path, Path]:
    """Write the JSON and the PNG; returns their paths."""
    reports.mkdir(parents=True, exist_ok=True)
    json_path = reports / f"bench-{stamp}.json"
    json_path.write_text(json.dumps(result, indent=2))
    png_path = reports / f"bench-{stamp}.png"
    draw(result, png_path)
    return json_path, png_path


# The run's stages, by the first word of their phases' names, as the lag chart labels them.
RUN_STAGES = {"start": "warm-up", "warmup": "warm-up", "quiesce": "warm-up", "rate": "rates", "sustain": "search",
              "drain": "drains", "intake": "intake\nalone", "bare": "baselines", "relay": "baselines",
              "transactional": "baselines"}  # fmt: skip


def _shade_stages(axes: Any, timeline: list[dict[str, Any]]) -> None:
    """Alternate shading and a label per stage of the run: during "intake alone" the consumers are paused, during the
    baselines Baton is stopped, so the lag then stays where it was."""
    spans: list[tuple[str, float, float]] = []
    for sample in timeline:
        stage = RUN_STAGES.get(sample["phase"].split("-", 1)[0])
        if stage is None:
            continue
        if spans and spans[-1][0] == stage:
            spans[-1] = (stage, spans[-1][1], sample["t"])
        else:
            spans.append((stage, sample["t"], sample["t"]))
    for index, (stage, began, ended) in enumerate(spans):
        if index % 2:
            axes.axvspan(began, ended, color="grey", alpha=0.12, linewidth=0)
        axes.text((began + ended) / 2, 0.98, stage, transform=axes.get_xaxis_transform(), ha="center", va="top",
                  fontsize=7)  # fmt: skip


def draw(result: dict[str, Any], path: Path) -> None:
    """Latency percentiles vs rate, throughput vs the baselines, consumer lag over time."""
    figure, (latency, throughput, lag) = plt.subplots(1, 3, figsize=(19, 6))
    phases = [phase for phase in result["rates"] if phase["speed_to_lead_ms"]["p50"] is not None]
    rates = [phase["rate"] for phase in phases]
    for name in ("p50", "p95", "p99", "max"):
        latency.plot(rates, [phase["speed_to_lead_ms"][name] for phase in phases], marker="o", label=name)
    latency.axhline(100, color="grey", linestyle=":", label="target p99 @100/s")
    latency.axhline(250, color="grey", linestyle="--", label="target p99 @500/s")
    latency.set(xlabel="offered leads/s", ylabel="speed to lead (ms)", yscale="log", title="Speed to lead vs rate")
    latency.legend()
    bars = {
        "Baton e2e\n(max sustained)": result["search"]["max_sustained"],
        "raw relay\n(3 hops)": result["relay"]["messages_per_second"],
        "relay with inbox\nand outbox (3 hops)": result["transactional_relay"]["messages_per_second"],
        "intake\nreq/s": result["intake_http"]["max_rps"],
        "bare FastAPI\nreq/s": result["bare_http"]["max_rps"],
        "backlog drain\n1 replica": result["scale_out"]["one_replica"]["leads_per_second"],
        "backlog drain\n2 replicas": result["scale_out"]["two_replicas"]["leads_per_second"],
    }
    throughput.bar(list(bars), list(bars.values()), color=["C0", "C7", "C7", "C1", "C7", "C2", "C2"])
    throughput.set(ylabel="per second", title="Throughput vs baselines", yscale="log")
    throughput.tick_params(axis="x", labelsize=8, labelrotation=30)
    for index, value in enumerate(bars.values()):
        throughput.annotate(f"{value:.0f}", (index, value), ha="center", va="bottom")
    timeline = result["timeline"]
    groups = sorted({group for sample in timeline for group in sample["lag"]})
    times = [sample["t"] for sample in timeline]
    for group in groups:
        lag.plot(times, [sample["lag"].get(group, 0) for sample in timeline], label=group)
    lag.plot(times, [sample["backlog"] for sample in timeline], label="end-to-end backlog", linestyle="--")
    _shade_stages(lag, timeline)
    lag.set(xlabel="seconds since start", ylabel="records behind", title="Consumer lag over time")
    lag.legend(loc="center left")
    figure.suptitle(f"make bench {result['at']} ({result['machine']['cpus']} cores, shared)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
