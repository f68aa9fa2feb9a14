"""The batcher's memory policy, on a real tagger: an idle worker gives freed memory back once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from app import batcher as batcher_module
from app.batcher import IDLE_TRIM_S, TRIM_INTERVAL_S, Batcher
from app.settings import Settings
from model.tagger import Tagger


def test_an_idle_batcher_releases_memory_once_after_work(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert IDLE_TRIM_S < TRIM_INTERVAL_S  # else the periodic trim would hide the idle one here
    releases: list[int] = []
    monkeypatch.setattr(batcher_module, "release_free_memory", lambda: releases.append(1))
    tagger = Tagger.load(tiny_bundle, "cpu")
    prepared = tagger.prepare("江泽民在北京大学发表讲话。")

    async def scenario() -> tuple[int, int, int]:
        batcher = Batcher(tagger, Settings())
        batcher.start()
        try:
            await asyncio.sleep(IDLE_TRIM_S + 0.5)
            before_work = len(releases)  # idle since start, nothing to give back
            labels = await batcher.submit(prepared.chunks, ("seg", "pos", "ner"))
            assert len(labels) == len(prepared.chunks)
            for _ in range(100):  # the idle trim is due IDLE_TRIM_S after the batch; a busy CI may be late
                await asyncio.sleep(0.1)
                if releases:
                    break
            await asyncio.sleep(0.5)
            after_idle = len(releases)
            await asyncio.sleep(IDLE_TRIM_S + 0.5)
            return before_work, after_idle, len(releases)
        finally:
            await batcher.close()

    before_work, after_idle, later = asyncio.run(scenario())
    assert (before_work, after_idle, later) == (0, 1, 1)
