"""Batch systems' JSON with fields of the wrong shape: a clear status or error, never a crash."""

from __future__ import annotations

import json

import pytest

from hqpy.autoalloc.backends.base import ExternalState
from hqpy.autoalloc.backends.htcondor import parse_condor_json
from hqpy.autoalloc.backends.lsf import parse_bjobs_json
from hqpy.autoalloc.backends.pbs import parse_qstat_json

ODD_VALUES = [None, True, 7, 1.5, "x", [1, "F"], {"nested": ["F"]}]


@pytest.mark.parametrize("odd", ODD_VALUES)
def test_pbs_fields_of_any_shape(odd: object) -> None:
    job = {"job_state": odd, "Exit_status": odd, "stime": odd, "mtime": odd}
    text = json.dumps({"Jobs": {"1.server": job, "2.server": odd}})
    statuses = parse_qstat_json(text, ["1.server", "2.server"])
    assert statuses["1.server"].state is ExternalState.FAILED
    assert statuses["2.server"].state is ExternalState.FAILED


@pytest.mark.parametrize("odd", ODD_VALUES)
def test_lsf_fields_of_any_shape(odd: object) -> None:
    record = {"JOBID": "5", "STAT": odd, "START_TIME": odd, "FINISH_TIME": odd}
    text = json.dumps({"RECORDS": [record, odd]})
    assert parse_bjobs_json(text, ["5"], 0.0)["5"].state is ExternalState.FAILED


@pytest.mark.parametrize("odd", ODD_VALUES)
def test_htcondor_fields_of_any_shape(odd: object) -> None:
    ad = {
        "ClusterId": 9,
        "JobStatus": odd,
        "ExitCode": odd,
        "JobStartDate": odd,
        "CompletionDate": odd,
        "EnteredCurrentStatus": odd,
    }
    status = parse_condor_json(json.dumps([ad]))["9"]
    if not isinstance(odd, int | float):
        assert status.state is ExternalState.FAILED
        assert status.started_at is None and status.finished_at is None


@pytest.mark.parametrize("odd", ODD_VALUES)
def test_htcondor_item_that_is_not_an_ad(odd: object) -> None:
    with pytest.raises(ValueError, match="not a job ad"):
        parse_condor_json(json.dumps([odd]))
