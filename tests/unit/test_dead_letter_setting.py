"""DEAD_LETTER_FILE (SPEC §11): beside the event log by default, ``off`` for none."""

from __future__ import annotations

from llmproxy import config


def test_by_default_the_dead_letter_file_is_beside_the_event_log() -> None:
    settings = config.load(env={"FILE_EVENT_LOG": "/var/log/llm-proxy/events.jsonl"})
    assert settings.events.dead_letter_file == "/var/log/llm-proxy/dead-letters.jsonl"


def test_without_an_event_log_it_is_in_the_data_directory() -> None:
    assert config.load(env={}).events.dead_letter_file == "./data/dead-letters.jsonl"


def test_a_path_is_kept_and_off_means_none() -> None:
    assert (
        config.load(env={"DEAD_LETTER_FILE": "/srv/dead.jsonl"}).events.dead_letter_file == "/srv/dead.jsonl"
    )
    assert config.load(env={"DEAD_LETTER_FILE": "off"}).events.dead_letter_file == ""
