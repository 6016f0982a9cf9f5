"""The records of the workers' registry and start-up reports, round-tripped without Redis."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from celerynb.plane.records import (
    ReadyKind,
    ReadyLine,
    WorkerInfo,
    WorkerState,
    superseded,
    worker_member,
)
from celerynb.settings import Settings

names = st.text(min_size=1, max_size=30)
incarnations = st.text(alphabet="0123456789abcdef", min_size=1, max_size=16)
infos = st.builds(
    WorkerInfo,
    name=names,
    incarnation=incarnations,
    host=st.text(max_size=30),
    pid=st.integers(0, 2**22),
    concurrency=st.integers(1, 512),
    state=st.sampled_from(WorkerState),
    started=st.floats(0, 2e9, allow_nan=False),
)


@given(infos)
def test_worker_info_round_trips_through_its_member_and_json(info: WorkerInfo) -> None:
    assert WorkerInfo.decode(info.member, info.encode()) == info


@given(names, st.one_of(st.text(), st.binary(), st.just("null"), st.just("[1, 2]")))
def test_a_garbled_info_decodes_to_one_process_that_is_up(name: str, text: str | bytes) -> None:
    info = WorkerInfo.decode(worker_member(name.replace("#", ""), "ab12"), text)
    assert info.concurrency >= 1
    assert isinstance(info.state, WorkerState)
    assert isinstance(info.host, str) and isinstance(info.pid, int)


def test_a_garbled_info_keeps_the_defaults() -> None:
    info = WorkerInfo.decode("a@host#ab12", "{not json")
    assert info == WorkerInfo("a@host", "ab12")
    assert info.concurrency == 1 and info.state is WorkerState.UP


def test_an_older_workers_entry_is_its_name_alone() -> None:
    """A worker of an older celerynb beats under its name, with the info it had then."""
    info = WorkerInfo.decode("a@host", json.dumps({"concurrency": 4, "state": "leaving"}))
    assert (info.name, info.incarnation) == ("a@host", "")
    assert (info.concurrency, info.state) == (4, WorkerState.LEAVING)
    assert info.member == "a@host"


def test_fields_of_the_wrong_type_take_their_defaults() -> None:
    text = json.dumps({"concurrency": "8", "state": 3, "host": 1, "pid": None, "started": True})
    assert WorkerInfo.decode("a#1", text) == WorkerInfo("a", "1")


def test_a_name_may_hold_the_separator() -> None:
    info = WorkerInfo("odd#name@host", "ff00")
    assert WorkerInfo.decode(info.member, info.encode()) == info


def test_a_restarted_worker_supersedes_its_older_incarnation() -> None:
    old = WorkerInfo("a@h", "0001", started=100.0)
    new = WorkerInfo("a@h", "0002", started=200.0)
    other = WorkerInfo("b@h", "0003", started=50.0)
    assert superseded([new, other, old]) == [old.member]
    assert superseded([old, other]) == []


def test_an_older_incarnation_in_a_warm_shutdown_is_not_given_up() -> None:
    """A restart that began with a warm shutdown: the old one still hands its slots over."""
    old = WorkerInfo("a@h", "0001", state=WorkerState.LEAVING, started=100.0)
    new = WorkerInfo("a@h", "0002", started=200.0)
    assert superseded([old, new]) == []


def test_entries_without_an_incarnation_never_supersede() -> None:
    legacy = WorkerInfo("a@h", "", started=300.0)
    new = WorkerInfo("a@h", "0002", started=200.0)
    assert superseded([legacy, new]) == []


@given(st.lists(infos, max_size=8))
def test_each_name_keeps_its_newest_incarnation_and_no_other_that_is_up(
    found: list[WorkerInfo],
) -> None:
    unique = list({info.member: info for info in found}.values())
    gone = set(superseded(unique))
    kept = [info for info in unique if info.member not in gone]
    assert {info.name for info in kept} == {info.name for info in unique}
    for name in {info.name for info in unique}:
        up = [i for i in kept if i.name == name and i.state is WorkerState.UP]
        assert len(up) <= 1


# -- ready reports -------------------------------------------------------------------------------
words = st.text(
    st.characters(blacklist_categories=["Z", "C"], blacklist_characters="'"), min_size=1
)
ready_lines = st.one_of(
    st.builds(ReadyLine, st.just(ReadyKind.POOL), pid=st.integers(1, 2**22)),
    st.builds(
        ReadyLine,
        st.just(ReadyKind.WORKER),
        words,
        queue=st.text(st.characters(blacklist_characters="'\n\r", blacklist_categories=("Cs",))),
        broker=words,
        store=words,
    ),
)


@given(ready_lines)
def test_a_ready_line_round_trips(line: ReadyLine) -> None:
    assert ReadyLine.decode(line.encode()) == line
    assert ReadyLine.decode(line.encode().encode() + b"\n") == line


@given(st.text())
def test_any_other_log_line_is_no_report(text: str) -> None:
    found = ReadyLine.decode(text)
    assert found is None or "celerynb worker" in text


def test_the_workers_report_names_it_and_masks_passwords() -> None:
    settings = Settings("redis://:hunter2@broker:6379/0", secret="s", queue="q1")
    line = settings.ready_line("gpu1@box").encode()
    assert line == (
        "celerynb worker gpu1@box ready: queue 'q1', "
        "broker redis://:***@broker:6379/0, store redis://:***@broker:6379/0"
    )
    assert "hunter2" not in line
    assert ReadyLine.decode(f"[2024-01-01 12:00] {line}") == ReadyLine(
        ReadyKind.WORKER, "gpu1@box", queue="q1", broker=settings.ready_line("x").broker,
        store=settings.ready_line("x").store,
    )  # fmt: skip
