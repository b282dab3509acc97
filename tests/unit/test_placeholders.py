from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from hqpy.common.placeholders import (
    KNOWN,
    fill_placeholders,
    has_placeholder,
    unknown_placeholders,
)

VALUES = {"JOB_ID": "7", "TASK_ID": "3", "CWD": "/work", "SUBMIT_DIR": "/sub"}


def test_fill_replaces_known_placeholders() -> None:
    template = "%{CWD}/job-%{JOB_ID}/%{TASK_ID}.stdout"
    assert fill_placeholders(template, VALUES) == "/work/job-7/3.stdout"


def test_fill_replaces_every_occurrence() -> None:
    assert fill_placeholders("%{TASK_ID}-%{TASK_ID}", VALUES) == "3-3"


def test_fill_leaves_unknown_and_missing_names_alone() -> None:
    template = "%{FOO}/%{SERVER_UID}/%{TASK_ID}"
    assert fill_placeholders(template, VALUES) == "%{FOO}/%{SERVER_UID}/3"


def test_fill_does_not_touch_text_without_placeholders() -> None:
    assert fill_placeholders("plain/path{x}%", VALUES) == "plain/path{x}%"


def test_fill_does_not_expand_placeholders_inside_values() -> None:
    assert fill_placeholders("%{CWD}", {"CWD": "%{TASK_ID}", "TASK_ID": "1"}) == "%{TASK_ID}"


def test_unknown_placeholders_lists_each_unknown_name_once_in_order() -> None:
    template = "%{B}%{TASK_ID}%{A}%{B}%{INSTANCE_ID}"
    assert unknown_placeholders(template) == ["B", "A"]


def test_unknown_placeholders_is_empty_for_known_names() -> None:
    assert unknown_placeholders("".join(f"%{{{n}}}" for n in KNOWN)) == []


def test_has_placeholder() -> None:
    assert has_placeholder("out-%{TASK_ID}.txt", "TASK_ID")
    assert not has_placeholder("out-%{JOB_ID}.txt", "TASK_ID")
    assert not has_placeholder("out-TASK_ID.txt", "TASK_ID")


@given(st.text(alphabet="ab%{}/_", max_size=30))
def test_fill_with_no_values_is_identity(template: str) -> None:
    assert fill_placeholders(template, {}) == template


@given(st.lists(st.sampled_from([*KNOWN, "x/", "-"]), max_size=8))
def test_fill_removes_all_known_placeholders_when_all_values_given(parts: list[str]) -> None:
    template = "".join(f"%{{{p}}}" if p in KNOWN else p for p in parts)
    values = {name: name.lower() for name in KNOWN}
    result = fill_placeholders(template, values)
    assert "%{" not in result
    assert result == "".join(p.lower() if p in KNOWN else p for p in parts)
