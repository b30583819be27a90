"""Background jobs: progress stream, resume after a kill, cancel, typed failures."""

import os
import signal
import time

import pytest

from interp import jobs
from interp.errors import JobError

KIND = "tests.jobs_fixture:counting_job"


def test_inline_job_reports_progress_and_result(tmp_path):
    seen = []
    st = jobs.run_inline(KIND, {"n": 5}, root=tmp_path, on_progress=lambda s: seen.append(s.step))
    assert st.state == "done" and st.result == {"counted": 5, "resumed_from": 0}
    assert seen == [1, 2, 3, 4, 5]
    recs = jobs.progress_records(st.id, tmp_path)
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5]
    assert jobs.status(st.id, tmp_path).state == "done"


def test_same_spec_same_job_and_typed_failure(tmp_path):
    assert jobs.job_id(KIND, {"n": 3}) == jobs.job_id(KIND, {"n": 3})
    assert jobs.job_id(KIND, {"n": 3}) != jobs.job_id(KIND, {"n": 4})
    st = jobs.run_inline(KIND, {"n": 5, "nan_at": 2}, root=tmp_path, raise_on_error=False)
    assert st.state == "failed" and "NaN" in st.error
    with pytest.raises(JobError):
        jobs.run_inline(KIND, {"n": 5, "nan_at": 2}, root=tmp_path)
    with pytest.raises(JobError):
        jobs.run_inline("no.such.kind", {}, root=tmp_path)


def test_background_job_killed_then_resumed(tmp_path):
    spec = {"n": 40, "sleep": 0.05}
    jid = jobs.submit(KIND, spec, root=tmp_path)
    t0 = time.time()
    while jobs.status(jid, tmp_path).step < 5:
        assert time.time() - t0 < 60, "worker made no progress"
        time.sleep(0.05)
    os.kill(jobs.status(jid, tmp_path).pid, signal.SIGKILL)
    t0 = time.time()
    while jobs.status(jid, tmp_path).state != "interrupted":
        assert time.time() - t0 < 10
        time.sleep(0.05)
    assert jobs.submit(KIND, spec, root=tmp_path) == jid
    st = jobs.wait(jid, tmp_path, timeout=60)
    assert st.state == "done"
    assert 5 <= st.result["resumed_from"] < 40


def test_cancel(tmp_path):
    jid = jobs.submit(KIND, {"n": 400, "sleep": 0.02}, root=tmp_path)
    t0 = time.time()
    while jobs.status(jid, tmp_path).step < 2:
        assert time.time() - t0 < 60
        time.sleep(0.05)
    jobs.cancel(jid, tmp_path)
    st = jobs.wait(jid, tmp_path, timeout=30)
    assert st.state == "cancelled" and st.step < 400
