"""Schemathesis against one running service: every operation, valid and invalid data, every failure collected."""

from __future__ import annotations

import contextlib
import functools
import math
import os
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Final

import httpx
import hypothesis
from hypothesis import HealthCheck, Phase, Verbosity
from schemathesis import APIOperation, Case, GenerationMode, Response, openapi
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.errors import FailureGroup
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

Operation = APIOperation[Any, Any, Any, Any]
AnyCase = Case[Any]

CHECKS: Final = [not_a_server_error, response_schema_conformance, content_type_conformance]
MODES: Final = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
# A short run, as `make test` does it: examples per operation and generation mode.
SHORT_EXAMPLES: Final = 5
# A fixed seed unless one is given, so a short run inside `make test` sends the same requests every time.
DEFAULT_SEED: Final = 20_240_901
REQUEST_TIMEOUT: Final = 15.0
# Extra rounds for reaching BATON_FUZZ_REQUESTS when some operations run out of inputs early.
MAX_TOP_UPS: Final = 3

# Server-sent event streams never end: the harness reads the status, the headers and the first bytes, then hangs up.
STREAMS: Final = frozenset({"GET /v1/stream", "GET /v1/dashboard/stream"})

# Every report of this pytest run, for the totals table (tests/fuzz/conftest.py).
REPORTS: Final[list[FuzzReport]] = []

# Operations deliberately not fuzzed, each with its reason. Empty: every operation of every service is fuzzed.
EXCLUDED: Final[dict[str, dict[str, str]]] = {}


@dataclass(frozen=True)
class Budget:
    """How much to generate: examples per operation and mode, or enough for `target_requests` per service."""

    examples: int
    target_requests: int
    seed: int

    @classmethod
    def from_env(cls) -> Budget:
        """BATON_FUZZ_EXAMPLES (per operation and mode), BATON_FUZZ_REQUESTS (per service), BATON_FUZZ_SEED."""
        return cls(
            examples=int(os.environ.get("BATON_FUZZ_EXAMPLES") or 0),
            target_requests=int(os.environ.get("BATON_FUZZ_REQUESTS") or 0),
            seed=_seed(os.environ.get("BATON_FUZZ_SEED") or str(DEFAULT_SEED)),
        )

    def examples_for(self, operations: int) -> int:
        """Examples per operation and mode: as given, or enough that `operations` reach the target together."""
        if self.examples:
            return self.examples
        if self.target_requests:
            return max(SHORT_EXAMPLES, math.ceil(self.target_requests / (operations * len(MODES))))
        return SHORT_EXAMPLES


def _seed(given: str) -> int:
    """A seed as given, or a fresh one for "random" (printed with the totals, so the run can be replayed)."""
    return random.randrange(2**32) if given == "random" else int(given)


@dataclass(frozen=True)
class Finding:
    """One kind of failure on one operation, with the first request that showed it."""

    operation: str
    failure: str
    status: int | None
    reproduce: str


@dataclass
class FuzzReport:
    """What one run sent to one service and what it found."""

    service: str
    run: str
    seed: int
    examples: int = 0
    operations: int = 0
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    findings: dict[tuple[str, str], Finding] = field(default_factory=dict)
    # Findings of the same kind after the first: how often each one happened.
    repeats: Counter[tuple[str, str]] = field(default_factory=Counter)

    def add(self, finding: Finding) -> None:
        """Keep the first example of each (operation, failure) pair and count the rest."""
        key = (finding.operation, finding.failure)
        self.findings.setdefault(key, finding)
        self.repeats[key] += 1

    def describe(self) -> str:
        """Every finding with how often it happened and a curl command that reproduces it."""
        lines = [f"{self.service} ({self.run}, seed {self.seed}): {len(self.findings)} finding(s)"]
        for key, finding in self.findings.items():
            lines.append(f"- {finding.operation}: {finding.failure} [{finding.status}] x{self.repeats[key]}")
            lines.append(f"    {finding.reproduce}")
        return "\n".join(lines)


@dataclass
class ServiceFuzzer:
    """Fuzzes one running service through its own OpenAPI document (GET /openapi.json)."""

    service: str
    base_url: str
    budget: Budget
    document: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        response = httpx.get(self.base_url + "/openapi.json", timeout=REQUEST_TIMEOUT)
        response.raise_for_status()
        self.document = response.json()

    def with_key(self, headers: dict[str, str]) -> FuzzReport:
        """Every operation, valid and invalid data, with `headers`: no 5xx, responses as documented."""
        report = FuzzReport(self.service, "admin key", self.budget.seed)
        operations = self._operations()
        report.operations = len(operations)
        report.examples = self.budget.examples_for(len(operations))
        send = functools.partial(self._send, headers=headers, report=report)
        pairs = [(operation, mode) for operation in operations for mode in MODES]
        for extra_round in range(MAX_TOP_UPS + 1):
            missing = self.budget.target_requests - report.requests
            if extra_round and missing <= 0:
                break
            # Small input spaces (no parameters, one enum) run out before max_examples; top up from the rest.
            examples = report.examples if not extra_round else math.ceil(missing / len(pairs)) + 1
            yielded = {pair: self._explore(*pair, examples, self.budget.seed + extra_round, send) for pair in pairs}
            pairs = [pair for pair, count in yielded.items() if count >= examples] or pairs
        return report

    def without_key(self) -> FuzzReport:
        """Every operation with valid data and no Authorization: 401 where a key is required, never 5xx."""
        report = FuzzReport(self.service, "no key", self.budget.seed)
        operations = self._operations()
        report.operations = len(operations)
        report.examples = self.budget.examples or SHORT_EXAMPLES
        for operation in operations:
            secured = bool(self._definition(operation.method, operation.path).get("security"))
            send = functools.partial(self._send_anonymous, secured=secured, report=report)
            self._explore(operation, GenerationMode.POSITIVE, report.examples, self.budget.seed, send)
        return report

    def _operations(self) -> list[Operation]:
        excluded = EXCLUDED.get(self.service, {})
        operations = []
        for result in openapi.from_dict(self.document).get_all_operations():
            if not isinstance(result, Ok):
                raise result.err()  # an operation the document describes wrongly is a finding in itself
            if result.ok().label not in excluded:
                operations.append(result.ok())
        return operations

    def _definition(self, method: str, path: str) -> dict[str, Any]:
        definition: dict[str, Any] = self.document["paths"][path][method.lower()]
        return definition

    def _explore(
        self, operation: Operation, mode: GenerationMode, examples: int, seed: int, send: Callable[[AnyCase], object]
    ) -> int:
        """Up to `examples` cases of `operation` in `mode`, each sent; how many there were."""
        sent = 0

        @hypothesis.seed(seed)
        @hypothesis.settings(
            max_examples=examples,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
            verbosity=Verbosity.quiet,
        )
        @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
        def each(case: AnyCase) -> None:
            nonlocal sent
            sent += 1
            send(case)

        with contextlib.suppress(hypothesis.errors.Unsatisfiable):
            each()  # Unsatisfiable: no invalid input exists for an operation that takes none
        return sent

    def _send(self, case: AnyCase, headers: dict[str, str], report: FuzzReport) -> int | None:
        """Send one case and run the checks on the answer; its status, or None when nothing came back."""
        report.requests += 1
        try:
            response = self._call(case, headers)
        except (OSError, httpx.HTTPError) as exc:  # requests' errors are OSErrors
            report.add(Finding(case.operation.label, f"no response: {exc!r}", None, self._curl(case, headers)))
            return None
        report.statuses[response.status_code] += 1
        try:
            case.validate_response(response, checks=list(CHECKS), headers=headers)
        except FailureGroup as group:
            for failure in group.exceptions:
                report.add(
                    Finding(case.operation.label, failure.title, response.status_code, self._curl(case, headers))
                )
        return response.status_code

    def _send_anonymous(self, case: AnyCase, secured: bool, report: FuzzReport) -> None:
        case.headers.pop("Authorization", None)
        status = self._send(case, {}, report)
        if secured and status is not None and status != 401:
            report.add(Finding(case.operation.label, "not 401 without a key", status, self._curl(case, {})))

    def _call(self, case: AnyCase, headers: dict[str, str]) -> Response | httpx.Response:
        if case.operation.label in STREAMS:
            return self._first_bytes(case, headers)
        return case.call(base_url=self.base_url, headers=headers, timeout=REQUEST_TIMEOUT)

    def _first_bytes(self, case: AnyCase, headers: dict[str, str]) -> httpx.Response:
        """A stream's status, headers and first chunk, as a finished response the checks can read."""
        sent_headers = {**{name: str(value) for name, value in case.headers.items()}, **headers}
        url = self.base_url + case.formatted_path
        with httpx.stream(case.method, url, params=case.query, headers=sent_headers, timeout=REQUEST_TIMEOUT) as got:
            first = next(got.iter_raw(), b"")
            response = httpx.Response(got.status_code, headers=got.headers, content=first, request=got.request)
        response.elapsed = timedelta(0)
        return response

    def _curl(self, case: AnyCase, headers: dict[str, str]) -> str:
        return case.as_curl_command(headers=headers, base_url=self.base_url)
