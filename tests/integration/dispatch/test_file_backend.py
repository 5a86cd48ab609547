"""FileBackend on real files: exact JSON lines, exactly-once by event id, crash and logrotate recovery."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llmproxy.dispatch.backends.base import DeliveryError
from llmproxy.dispatch.backends.file import FileBackend
from llmproxy.events.model import decode_event, encode_event
from tests.unit.dispatch.doubles import chat_event, make_event, rate_limited_event, stream_event


def lines(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), "the file ends in a partial line"
    return data.splitlines()


def ids(path: Path) -> list[str]:
    return [decode_event(line).id for line in lines(path)]


async def test_each_event_is_one_line_exactly_as_encoded(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "events.jsonl"  # the directory is created
    batch = [chat_event(), stream_event(), rate_limited_event()]
    backend = FileBackend(path)
    await backend.send(batch)
    await backend.aclose()
    assert path.read_bytes() == b"".join(encode_event(e) + b"\n" for e in batch)
    assert [decode_event(line) for line in lines(path)] == batch
    assert (path.stat().st_mode & 0o777) == 0o640  # events carry prompts: the operators' group only


async def test_lines_are_written_as_given_each_id_once(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    a, b = chat_event(), stream_event()
    line_a = encode_event(a)[:-1] + b',"extra":1}'  # what re-encoding the Event would not give back
    backend = FileBackend(path)
    await backend.send_lines([(a.id, line_a), (b.id, encode_event(b)), (a.id, encode_event(a))])
    await backend.send([a, b])  # the same events again, as Event objects: deduped across both ways in
    await backend.aclose()
    assert path.read_bytes() == line_a + b"\n" + encode_event(b) + b"\n"


async def test_a_redelivered_event_is_not_written_twice(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    a, b, c = make_event(), make_event(), make_event()
    backend = FileBackend(path)
    await backend.send([a, b])
    await backend.send([b, c, c])
    await backend.aclose()
    assert ids(path) == [a.id, b.id, c.id]


async def test_dedupe_survives_a_new_backend_on_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    a, b = make_event(), make_event()
    first = FileBackend(path)
    await first.send([a, b])
    await first.aclose()
    second = FileBackend(path)  # a restarted worker: learns the ids already in the file
    await second.send([b, a, make_event(id="new")])
    await second.aclose()
    assert ids(path) == [a.id, b.id, "new"]


async def test_a_partial_last_line_from_a_crash_is_dropped_before_writing(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    whole, cut = make_event(), make_event()
    path.write_bytes(encode_event(whole) + b"\n" + encode_event(cut)[:57])  # killed mid-write
    backend = FileBackend(path)
    await backend.send([cut])  # never acked, so redelivered: written whole this time
    await backend.aclose()
    assert ids(path) == [whole.id, cut.id]


async def test_a_file_that_is_only_a_partial_line_is_recovered(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    event = make_event()
    path.write_bytes(encode_event(event)[:30])
    backend = FileBackend(path)
    await backend.send([event])
    await backend.aclose()
    assert ids(path) == [event.id]


async def test_reopen_after_logrotate_writes_to_the_new_file_and_keeps_deduping(tmp_path: Path) -> None:
    path, rotated = tmp_path / "events.jsonl", tmp_path / "events.jsonl.1"
    old, new = make_event(), make_event()
    backend = FileBackend(path)
    await backend.send([old])
    path.rename(rotated)  # logrotate moves the file away, then sends SIGHUP
    backend.reopen()
    await backend.send([old, new])  # `old` redelivered: already in the rotated file
    await backend.aclose()
    assert ids(rotated) == [old.id]
    assert ids(path) == [new.id]


async def test_without_reopen_writes_follow_the_renamed_file(tmp_path: Path) -> None:
    path, rotated = tmp_path / "events.jsonl", tmp_path / "events.jsonl.1"
    backend = FileBackend(path)
    await backend.send([make_event()])
    path.rename(rotated)
    await backend.send([make_event()])
    await backend.aclose()
    assert len(ids(rotated)) == 2 and not path.exists()


async def test_two_writers_on_one_file_dedupe_each_others_lines(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    one, two = FileBackend(path), FileBackend(path)  # two worker processes sharing the file
    a, b, c = make_event(), make_event(), make_event()
    await one.send([a])
    await two.send([b])
    await one.send([b, c])  # b was redelivered to the other worker after `two` wrote it
    await two.send([a, c])
    await one.aclose()
    await two.aclose()
    assert ids(path) == [a.id, b.id, c.id]


async def test_after_a_copytruncate_writing_continues_from_the_start(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    backend = FileBackend(path)
    await backend.send([make_event()])
    os.truncate(path, 0)
    event = make_event()
    await backend.send([event])
    await backend.aclose()
    assert ids(path) == [event.id]


async def test_a_failed_write_leaves_no_partial_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "events.jsonl"
    kept = make_event()
    backend = FileBackend(path)
    await backend.send([kept])
    real_write = os.write

    def half_then_enospc(fd: int, data: bytes) -> int:
        monkeypatch.setattr(os, "write", real_write)
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_enospc)
    lost = make_event()
    with pytest.raises(DeliveryError) as failure:
        await backend.send([lost])
    assert failure.value.transient
    assert ids(path) == [kept.id]
    await backend.send([lost])  # the retry writes it whole
    await backend.aclose()
    assert ids(path) == [kept.id, lost.id]


async def test_only_the_scanned_tail_seeds_the_dedupe_window(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    early, late = [make_event() for _ in range(5)], make_event()
    writer = FileBackend(path)
    await writer.send([*early, late])
    await writer.aclose()
    tail = len(encode_event(late)) + 1 + 20  # the last line and a piece of the one before
    reader = FileBackend(path, scan_limit_bytes=tail)
    await reader.send([late, early[0]])  # late is known (in the tail); early[0] is beyond the bound
    await reader.aclose()
    assert ids(path) == [e.id for e in early] + [late.id, early[0].id]


async def test_an_unwritable_path_is_a_transient_failure(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    backend = FileBackend(blocker / "events.jsonl")
    with pytest.raises(DeliveryError) as failure:
        await backend.send([make_event()])
    assert failure.value.transient and "cannot open" in failure.value.message
    await backend.aclose()


async def test_an_empty_batch_touches_nothing(tmp_path: Path) -> None:
    backend = FileBackend(tmp_path / "events.jsonl")
    await backend.send([])
    await backend.aclose()
    assert not (tmp_path / "events.jsonl").exists()
