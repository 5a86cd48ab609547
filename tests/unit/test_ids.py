"""Request and event ids: version 4 UUIDs as uuid.uuid4() gives them, never repeated, not across a fork."""

from __future__ import annotations

import os
import uuid

from llmproxy.ids import uuid4_hex, uuid4_text


def test_ids_are_random_uuid4_in_the_standard_forms_never_repeated() -> None:
    texts = [uuid4_text() for _ in range(3000)]  # crosses several 4 KiB refills
    hexes = [uuid4_hex() for _ in range(3000)]

    assert len(set(texts) | set(hexes)) == 6000
    assert all(str(uuid.UUID(t)) == t for t in texts)  # canonical lower-case 8-4-4-4-12
    assert all(uuid.UUID(h).hex == h for h in hexes)
    parsed = [uuid.UUID(i) for i in texts + hexes]
    assert {u.version for u in parsed} == {4}
    assert {u.variant for u in parsed} == {uuid.RFC_4122}
    assert {h[16] for h in hexes} == set("89ab")  # two variant bits fixed, the other two random


def test_a_forked_child_does_not_repeat_the_parents_next_ids() -> None:
    uuid4_hex()  # the parent now holds random bytes it has not handed out
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write_end, " ".join(uuid4_hex() for _ in range(3)).encode())
        os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end) as pipe:
        child = pipe.read().split()
    parent = [uuid4_hex() for _ in range(3)]
    assert len(child) == 3 and not set(child) & set(parent)
