"""Event consumer: effect + inbox in one transaction, offsets committed only after, poison to `<topic>.dlq`."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from sqlalchemy.exc import IntegrityError

from shared.envelope import CloudEvent, InvalidEvent, utc_now
from shared.failpoints import Failpoints
from shared.failures import is_outage
from shared.kafka import PLAINTEXT, KafkaSecurity, OutboundRecord, Publisher, broker_reachable, client_options
from shared.metrics import (
    count_batch_reapplied,
    count_consumed,
    count_consumed_all,
    count_consumer_restart,
    count_dead_letter,
    sample_consumer_lag,
)
from shared.stall import StallWatch, group_backlog
from shared.topics import dead_letter_topic
from shared.tracing import batch_spans, consume_span
from shared.uow import Transaction, UnitOfWork

log = logging.getLogger(__name__)

Handler = Callable[[Transaction, CloudEvent], Awaitable[None]]
BatchHandler = Callable[[Transaction, Sequence[CloudEvent]], Awaitable[None]]


class Batched:
    """A handler that can apply a run of consecutive events of its type at once (a few statements for the whole
    run instead of a few per event). Applying a run must change exactly what applying its events one by one, in
    order, would; as a plain handler it applies a run of one, so the record-by-record path stays equivalent."""

    def __init__(self, apply_run: BatchHandler) -> None:
        self.apply_run = apply_run
        self.__name__ = getattr(apply_run, "__name__", "batched")

    async def __call__(self, tx: Transaction, event: CloudEvent) -> None:
        await self.apply_run(tx, [event])


class Outage(Exception):
    """The database or broker is unavailable: stop, keep the offset uncommitted, try again later."""


class Stalled(Exception):
    """The consumer client fetches nothing while its group's records wait: it is replaced by a fresh one."""


class CommitsFailing(Stalled):
    """The consumer client's offset commits keep failing while it fetches (after a broker restart its group
    coordination can stay broken for good): it is replaced by a fresh one."""


class EventConsumer:
    """Consumes topics in a consumer group and applies each event exactly once to the service's state."""

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        group_id: str,
        topics: Sequence[str],
        handlers: Mapping[str, Handler],
        uow: UnitOfWork,
        dead_letters: Publisher,
        max_attempts: int = 3,
        timeout_seconds: float = 10.0,
        max_backoff_seconds: float = 5.0,
        failpoints: Failpoints | None = None,
        raw_topics: Mapping[str, str] | None = None,
        security: KafkaSecurity = PLAINTEXT,
        stall_seconds: float = 30.0,
        fetch_max_wait_ms: int = 500,
        fetch_min_bytes: int = 1,
        commit_interval_seconds: float = 0.2,
        max_failed_commits: int = 3,
        optimism_pause_seconds: float = 5.0,
        replace_seconds: float = 2.0,
        broker_answers: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self._bootstrap_servers = bootstrap_servers
        self._security = security
        self._group_id = group_id
        self._topics = tuple(topics)
        self._handlers = dict(handlers)
        self._uow = uow
        self._dead_letters = dead_letters
        self._max_attempts = max_attempts
        self._timeout = timeout_seconds
        self._replace_seconds = replace_seconds
        self._broker_answers = broker_answers or functools.partial(
            broker_reachable, bootstrap_servers, security=security
        )
        self._broker_checked_at = -1.0
        self._broker_answering_since: float | None = None
        self._max_backoff = max_backoff_seconds
        self._backoff = 0.1
        self._failpoints = failpoints or Failpoints()
        self._stopping = False
        # Topics outside tools write plain JSON to: records without CloudEvents headers become events of this type.
        self._raw_topics = dict(raw_topics or {})
        self._stall_seconds = stall_seconds
        self._fetch_max_wait_ms = fetch_max_wait_ms
        self._fetch_min_bytes = fetch_min_bytes
        # Offsets of applied batches, committed at most every interval by one task at a time (see _commit_behind).
        self._commit_interval = commit_interval_seconds
        self._uncommitted: dict[TopicPartition, int] = {}
        self._committing: asyncio.Task[None] | None = None
        self._commit_at_once = asyncio.Event()
        self._last_commit = 0.0
        # Offset commits failed in a row (a rebalance's do not count); at `max_failed_commits` the client is replaced.
        self._failed_commits = 0
        self._max_failed_commits = max_failed_commits
        # After an optimistic batch fails its commit, batches are applied the locking way until this moment.
        self._optimism_pause = optimism_pause_seconds
        self._optimism_resumes_at = 0.0

    def stop(self) -> None:
        """Ask the loop to end at its next step (cancellation alone can be swallowed by wait_for on 3.11)."""
        self._stopping = True

    async def run(self) -> None:
        """Consume until stopped or cancelled; a lost broker connection restarts the consumer after a backoff."""
        while not self._stopping:
            consumer = self._new_consumer()
            # A fresh client: its partitions may differ; what it applies, it commits.
            self._failed_commits, self._uncommitted = 0, {}
            replaced = False
            try:
                await asyncio.wait_for(consumer.start(), self._timeout)
                await self._consume(consumer)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                replaced = True
                log.warning("consumer %s restarting after %r", self._group_id, exc)
                reason = "commits_failing" if isinstance(exc, CommitsFailing) else "stalled"
                count_consumer_restart(reason if isinstance(exc, Stalled) else "error")
            finally:
                if replaced:
                    await self._let_go(consumer)
                else:
                    await self._settle_commit()
                    await _stop(consumer, self._timeout)
            await self._pause()

    async def _commits_failing(self) -> bool:
        """Whether the client's offset commits keep failing for its own reasons: `max_failed_commits` in a row, and
        the broker has answered for longer than a commit may take (`timeout_seconds`) without one landing.

        Commits failing while the broker does not answer are the outage's: a new client would fail the same. And
        one begun during the outage fails just after it ends, while the client itself recovers: replacing clients
        then, or during the outage, only ended their group membership, so that their successors waited for the old
        members' sessions to expire (catch-up 7 to 12 s instead of 2)."""
        if self._failed_commits < self._max_failed_commits:
            return False
        answering_for = await self._broker_answering_for()
        return (
            answering_for is not None
            and answering_for > self._timeout
            and self._failed_commits >= self._max_failed_commits
        )

    async def _broker_answering_for(self) -> float | None:
        """For how long the broker has answered (None: it does not), asked at most once a second."""
        now = time.monotonic()
        if now - self._broker_checked_at >= 1.0:
            self._broker_checked_at = now
            if not await self._broker_answers():
                self._broker_answering_since = None
            elif self._broker_answering_since is None:
                self._broker_answering_since = now
        return None if self._broker_answering_since is None else now - self._broker_answering_since

    async def _let_go(self, consumer: AIOKafkaConsumer) -> None:
        """A client replaced because it failed gets `replace_seconds` to commit what it applied and to leave its
        group, not the broker timeout each: after a broker restart, before its group coordinator is back, both
        waited their full timeout, and the consumer applied nothing for 20 s. What it could not commit is delivered
        again to its successor, whose inbox absorbs it."""
        try:
            await asyncio.wait_for(self._settle_commit(), self._replace_seconds)
        except TimeoutError:
            log.warning("consumer %s replaced before its last commit; its successor gets those events again",
                        self._group_id)  # fmt: skip
        await _stop(consumer, self._replace_seconds)

    def _new_consumer(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            *self._topics,
            bootstrap_servers=self._bootstrap_servers,
            group_id=self._group_id,
            client_id=self._group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # By default the broker answers a fetch as soon as data arrives (speed to lead, not batching).
            fetch_max_wait_ms=self._fetch_max_wait_ms,
            fetch_min_bytes=self._fetch_min_bytes,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=2_000,
            request_timeout_ms=int(self._timeout * 1000) + 5_000,
            **client_options(self._security),
        )

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        # A failpoint failing effects counts attempts per record: the record-by-record path alone gives it meaning.
        batched = not self._failpoints.armed("consumer.before_effect")
        watch = StallWatch(self._stall_seconds)
        while not self._stopping:
            if await self._commits_failing():
                raise CommitsFailing(f"{self._failed_commits} offset commits failed in a row")
            batches = await consumer.getmany(timeout_ms=500, max_records=500)
            now = time.monotonic()
            watch.fetched(now, sum(len(records) for records in batches.values()))
            if watch.check_due(now):
                await self._check_progress(consumer, watch, now)
            await sample_consumer_lag(consumer, batches)
            if not batches or (batched and await self._apply_batch(consumer, batches)):
                continue
            for partition, records in batches.items():
                await self._process_partition(consumer, partition, records)

    async def _check_progress(self, consumer: AIOKafkaConsumer, watch: StallWatch, now: float) -> None:
        """Raise Stalled when the watch finds the client stuck: fetching nothing while the group's records wait."""
        try:
            backlog = await group_backlog(consumer, self._topics, self._timeout)
        except (KafkaError, TimeoutError) as exc:
            log.info("consumer %s could not measure its backlog: %r", self._group_id, exc)
            reachable = await self._broker_answers()
            stuck = watch.judge(now, None, reachable)
        else:
            stuck = watch.judge(now, backlog, True)
        if stuck:
            raise Stalled(f"nothing fetched for {self._stall_seconds:.0f}s+ while records of the group wait")

    async def _apply_batch(
        self, consumer: AIOKafkaConsumer, batches: Mapping[TopicPartition, list[ConsumerRecord[Any, Any]]]
    ) -> bool:
        """Apply everything fetched in one transaction (inbox rows with the effects), then commit the offsets once.
        False, with nothing applied, when a record is unparseable or a handler fails: the caller then goes record
        by record, retrying and dead-lettering only the record at fault. An outage rewinds and commits nothing."""
        work: list[tuple[ConsumerRecord[Any, Any], CloudEvent]] = []
        for records in batches.values():
            for record in records:
                try:
                    work.append((record, self._event_of(record)))
                except InvalidEvent:
                    return False
        try:
            try:
                outcomes = await self._apply_work(work, assume_fresh=time.monotonic() >= self._optimism_resumes_at)
            except IntegrityError as exc:  # an event applied before, or rows another writer changed meanwhile
                log.debug("batch of %d applied again with locks: %r", len(work), exc)
                count_batch_reapplied()
                # Conflicts come in runs (replicas routing the same pools, redeliveries after a restart): batches
                # go the locking way for a while rather than each paying a failed attempt.
                self._optimism_resumes_at = time.monotonic() + self._optimism_pause
                outcomes = await self._apply_work(work, assume_fresh=False)
        except Exception as exc:
            if not is_outage(exc):
                log.info("batch of %d failed (%r); applying its records one by one", len(work), exc)
                return False
            log.warning("outage applying a batch of %d, will retry: %r", len(work), exc)
            for partition, records in batches.items():
                _rewind(consumer, partition, records[0].offset)
            await self._pause()
            return True
        for _ in work:  # one hit per record, as on the record-by-record path
            self._failpoints.hit("consumer.after_commit")
        count_consumed_all(outcomes)
        self._backoff = 0.1
        await self._commit_behind(
            consumer, {partition: records[-1].offset + 1 for partition, records in batches.items()}
        )
        return True

    async def _apply_work(
        self, work: list[tuple[ConsumerRecord[Any, Any], CloudEvent]], *, assume_fresh: bool
    ) -> list[tuple[str, str]]:
        """Apply the batch's events in one transaction; (topic, outcome) per record. Where writes travel together
        (PostgreSQL) and `assume_fresh`, the batch is applied optimistically (`Transaction.optimistic`): the inbox
        rows go with the last writes instead of a statement of their own first, handlers may read without locks,
        and a batch holding a redelivery, or whose reads changed before its commit, fails the commit
        (IntegrityError), to be applied again the other way."""
        outcomes: list[tuple[str, str]] = []
        consumed = [(event.id, record.topic) for record, event in work]
        async with self._uow.transaction() as tx:
            optimistic = tx.optimistic = assume_fresh and tx.keeps_writes
            fresh = {event_id for event_id, _ in consumed} if optimistic else await tx.mark_all_processed(consumed)
            runnable: list[tuple[ConsumerRecord[Any, Any], CloudEvent, Handler]] = []
            for record, event in work:
                handler = self._handlers.get(event.type)
                if event.id not in fresh or handler is None:
                    outcomes.append((record.topic, "ignored" if handler is None else "duplicate"))
                    continue
                fresh.discard(event.id)  # the same event twice in one batch (a relay retry) applies once
                runnable.append((record, event, handler))
                outcomes.append((record.topic, "applied"))
            # Grouped by topic (a stable sort: each partition's order holds, and Kafka orders nothing across
            # topics), so batched handlers get the longest runs.
            runnable.sort(key=lambda item: item[0].topic)
            for run in _runs(runnable):
                await _apply_run(tx, run)
            if optimistic:
                await tx.mark_all_processed_last(consumed)
        return outcomes

    async def _process_partition(
        self, consumer: AIOKafkaConsumer, partition: TopicPartition, records: list[ConsumerRecord[Any, Any]]
    ) -> None:
        next_offset: int | None = None
        for record in records:
            try:
                await self._handle(record)
            except Outage as exc:
                log.warning("outage at %s offset %d, will retry: %r", partition, record.offset, exc.__cause__)
                await self._commit(consumer, partition, next_offset)
                _rewind(consumer, partition, record.offset)
                await self._pause()
                return
            next_offset = record.offset + 1
        self._backoff = 0.1
        await self._commit(consumer, partition, next_offset)

    async def _handle(self, record: ConsumerRecord[Any, Any]) -> None:
        try:
            event = self._event_of(record)
        except InvalidEvent as exc:
            await self._dead_letter(record, exc)
            return
        handler = self._handlers.get(event.type)
        if handler is None:
            log.info("ignoring %s event %s on %s", event.type, event.id, record.topic)
            count_consumed(record.topic, "ignored")
            return
        await self._apply_with_retries(record, event, handler)

    def _event_of(self, record: ConsumerRecord[Any, Any]) -> CloudEvent:
        raw_type = self._raw_topics.get(record.topic)
        if raw_type is None or any(name == "ce_id" for name, _ in record.headers):
            return CloudEvent.from_kafka(record.key, record.value, record.headers)
        return CloudEvent.from_plain_json(
            record.value,
            type=raw_type,
            source=f"kafka:{record.topic}",
            # The record's place in the log is its identity: a redelivery is recognised by the inbox.
            event_id=f"{record.topic}:{record.partition}:{record.offset}",
            subject=record.key.decode(errors="replace") if record.key else "",
        )

    async def _apply_with_retries(self, record: ConsumerRecord[Any, Any], event: CloudEvent, handler: Handler) -> None:
        for attempt in range(1, self._max_attempts + 1):
            try:
                with consume_span(record.topic, record.headers, event):
                    await self._apply(record.topic, event, handler)
                return
            except InvalidEvent as exc:
                await self._dead_letter(record, exc)
                return
            except Exception as exc:
                if is_outage(exc):
                    raise Outage() from exc
                if attempt == self._max_attempts:
                    await self._dead_letter(record, exc)
                    return
                log.warning("event %s failed (attempt %d): %r", event.id, attempt, exc)
                count_consumed(record.topic, "retried")

    async def _apply(self, topic: str, event: CloudEvent, handler: Handler) -> None:
        async with self._uow.transaction() as tx:
            if not await tx.mark_processed(event.id, topic=topic):
                count_consumed(topic, "duplicate")
                return
            self._failpoints.hit("consumer.before_effect")
            await handler(tx, event)
        count_consumed(topic, "applied")
        self._failpoints.hit("consumer.after_commit")

    async def _dead_letter(self, record: ConsumerRecord[Any, Any], error: BaseException) -> None:
        log.error("dead-lettering %s[%d]@%d: %r", record.topic, record.partition, record.offset, error)
        headers = [
            *list(record.headers),
            *_error_headers(record, error),
            ("baton_consumer_group", self._group_id.encode()),
        ]
        letter = OutboundRecord(dead_letter_topic(record.topic), record.key, record.value, headers)
        try:
            await self._dead_letters.publish([letter])
        except Exception as exc:
            raise Outage() from exc
        count_dead_letter(record.topic)

    async def _commit(self, consumer: AIOKafkaConsumer, partition: TopicPartition, offset: int | None) -> None:
        if offset is not None:
            await self._settle_commit()
            await self._commit_now(consumer, {partition: offset})

    async def _commit_behind(self, consumer: AIOKafkaConsumer, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit a batch's `offsets` in the background, keeping the commit's round trip off the next events' path,
        and at most once per interval: under load a consumer applies tens of batches a second, and each commit is
        a write to the broker's offsets log, so the batches of an interval share one (with their latest offsets).
        One task commits at a time, so commits land in order. A crash before one lands only redelivers events
        already applied, which the inbox absorbs."""
        self._uncommitted.update(offsets)
        if self._committing is None or self._committing.done():
            self._committing = asyncio.create_task(self._commit_uncommitted(consumer))

    async def _commit_uncommitted(self, consumer: AIOKafkaConsumer) -> None:
        while self._uncommitted:
            due_in = self._last_commit + self._commit_interval - time.monotonic()
            if due_in > 0 and not self._commit_at_once.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._commit_at_once.wait(), due_in)
            offsets, self._uncommitted = self._uncommitted, {}
            self._last_commit = time.monotonic()
            if not await self._commit_now(consumer, offsets) and not self._commit_at_once.is_set():
                # Tried again next interval (with any later offsets), so a client whose commits keep failing is
                # found out even when no more records come; not while settling, which must end.
                for partition, offset in offsets.items():
                    self._uncommitted[partition] = max(offset, self._uncommitted.get(partition, offset))

    async def _settle_commit(self) -> None:
        """Commit what waits for its interval at once, and wait for it (a failed commit is logged, never raised)."""
        committing, self._committing = self._committing, None
        if committing is not None:
            self._commit_at_once.set()
            try:
                await committing
            finally:
                self._commit_at_once.clear()

    async def _commit_now(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> bool:
        """Commit `offsets`; False if the commit failed and may succeed later (not one lost to a rebalance)."""
        partition = ", ".join(str(tp) for tp in offsets)
        try:
            await asyncio.wait_for(consumer.commit(offsets), self._timeout)
            self._failed_commits = 0
        except (CommitFailedError, IllegalStateError) as exc:
            # The partition moved to another member during a rebalance; it re-reads from the last
            # committed offset and its inbox turns the redelivery into a no-op.
            log.warning("offset commit for %s lost to a rebalance: %r", partition, exc)
        except (KafkaError, TimeoutError) as exc:
            self._failed_commits += 1
            log.warning("offset commit for %s failed, events will be redelivered: %r", partition, exc)
            return False
        return True

    async def _pause(self) -> None:
        await asyncio.sleep(self._backoff)
        self._backoff = min(self._backoff * 2, self._max_backoff)


def _runs(
    work: Sequence[tuple[ConsumerRecord[Any, Any], CloudEvent, Handler]],
) -> Iterator[list[tuple[ConsumerRecord[Any, Any], CloudEvent, Handler]]]:
    """Consecutive events of one type whose handler is Batched, as one run; every other event alone. Runs keep
    the batch's order, so per-lead order holds."""
    run: list[tuple[ConsumerRecord[Any, Any], CloudEvent, Handler]] = []
    for item in work:
        if run and (not isinstance(item[2], Batched) or item[1].type != run[-1][1].type):
            yield run
            run = []
        run.append(item)
        if not isinstance(item[2], Batched):
            yield run
            run = []
    if run:
        yield run


async def _apply_run(tx: Transaction, run: list[tuple[ConsumerRecord[Any, Any], CloudEvent, Handler]]) -> None:
    record, event, handler = run[0]
    if not isinstance(handler, Batched):
        with consume_span(record.topic, record.headers, event):
            await handler(tx, event)
        return
    with batch_spans(record.topic, [(item.headers, item_event) for item, item_event, _ in run]) as traces:
        tx.traces_by_lead = traces
        try:
            await handler.apply_run(tx, [item_event for _, item_event, _ in run])
        finally:
            tx.traces_by_lead = {}


def _rewind(consumer: AIOKafkaConsumer, partition: TopicPartition, offset: int) -> None:
    # No longer ours after a rebalance? The new owner starts from the committed offset.
    with contextlib.suppress(IllegalStateError, AssertionError):
        consumer.seek(partition, offset)


def _error_headers(record: ConsumerRecord[Any, Any], error: BaseException) -> list[tuple[str, bytes]]:
    return [
        ("baton_error", str(error)[:2000].encode()),
        ("baton_error_type", type(error).__name__.encode()),
        ("baton_original_topic", record.topic.encode()),
        ("baton_original_partition", str(record.partition).encode()),
        ("baton_original_offset", str(record.offset).encode()),
        ("baton_failed_at", utc_now().isoformat().encode()),
    ]


async def _stop(consumer: AIOKafkaConsumer, deadline_seconds: float) -> None:
    try:
        await asyncio.wait_for(consumer.stop(), deadline_seconds)
    except Exception as exc:  # best effort: this consumer is being replaced
        log.warning("consumer did not stop cleanly: %r", exc)
