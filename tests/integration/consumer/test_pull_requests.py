"""BatchPuller (bridge.transport.pull_requests) against a real nats-server."""

from __future__ import annotations

import time

import pytest
from consumer_support import Stack, org_event

from bridge.provisioning.permissions import msg_next_subject
from bridge.transport.jsapi import JetStreamApi
from bridge.transport.pull_requests import BatchPuller, PullError


async def puller_for(stack: Stack) -> BatchPuller:
    puller = BatchPuller(stack.connection.nc, msg_next_subject(stack.cfg))
    await puller.start()
    return puller


async def test_short_batches_return_without_waiting_and_keep_stream_order(stack: Stack) -> None:
    puller = await puller_for(stack)
    try:
        for i in range(5):
            await stack.publish(org_event(stack.cfg, f"r{i}"))
        started = time.monotonic()
        first = await puller.fetch(3, timeout=5.0)
        rest = await puller.fetch(10, timeout=5.0)  # 2 left: the server's 404 ends it
        assert time.monotonic() - started < 2.5  # not the fetch's 5 s timeout
        seqs = [int(m.reply.split(".")[-4]) for m in first + rest]  # $JS.ACK...<stream seq>...
        assert len(first) == 3 and len(rest) == 2
        assert seqs == sorted(seqs)
        for msg in first + rest:
            await msg.ack()
    finally:
        await puller.stop()


async def test_an_empty_stream_answers_nothing_within_the_timeout(stack: Stack) -> None:
    puller = await puller_for(stack)
    try:
        started = time.monotonic()
        assert await puller.fetch(10, timeout=0.5) == []
        assert time.monotonic() - started < 2.0
        # a message published while a fetch waits is handed out at once
        await stack.publish(org_event(stack.cfg, "late"))
        assert len(await puller.fetch(10, timeout=2.0)) == 1
    finally:
        await puller.stop()


async def test_a_deleted_consumer_is_an_error_not_an_empty_batch(stack: Stack) -> None:
    await JetStreamApi(stack.connection.nc).delete_consumer(
        stack.cfg.stream_name, stack.cfg.subjects.durable
    )
    puller = await puller_for(stack)
    try:
        with pytest.raises(PullError, match="pull request refused: 503"):
            await puller.fetch(10, timeout=1.0)  # no responders: the consumer is gone
    finally:
        await puller.stop()


async def test_fetch_before_start_is_an_error(stack: Stack) -> None:
    puller = BatchPuller(stack.connection.nc, msg_next_subject(stack.cfg))
    with pytest.raises(PullError):
        await puller.fetch(1, timeout=0.1)
