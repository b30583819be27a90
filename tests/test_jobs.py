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


def _pids(tmp_path, jid):
    f = tmp_path / jid / "work" / "pids.txt"
    return f.read_text().split() if f.exists() else []


def test_identical_submits_start_one_worker(tmp_path):
    """Two identical submits at once (and a third while it runs) start one worker; a
    second process running the same job id is refused."""
    import threading

    kind, spec = "tests.jobs_fixture:pid_job", {"n": 30, "sleep": 0.05}
    ids = []
    threads = [threading.Thread(target=lambda: ids.append(jobs.submit(kind, spec, tmp_path)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    jid = ids[0]
    assert ids == [jid, jid]
    t0 = time.time()
    while jobs.status(jid, tmp_path).step < 2:
        assert time.time() - t0 < 60
        time.sleep(0.05)
    assert jobs.submit(kind, spec, tmp_path) == jid
    with pytest.raises(JobError, match="already running"):
        jobs.run_inline(kind, spec, root=tmp_path)
    st = jobs.wait(jid, tmp_path, timeout=60)
    assert st.state == "done"
    assert len(_pids(tmp_path, jid)) == 1, "more than one process ran the job"
    # a finished job is not run again unless forced
    assert jobs.run_inline(kind, spec, root=tmp_path).result == st.result
    assert len(_pids(tmp_path, jid)) == 1
    jobs.run_inline(kind, spec, root=tmp_path, force=True)
    assert len(_pids(tmp_path, jid)) == 2


def test_failures_are_one_line_without_traceback(tmp_path, capsys):
    """A failed job prints no traceback: a typed error keeps its message; an unexpected
    one is recorded as its type and message, the traceback going to the job's log."""
    from interp.cli import main

    env_root = str(tmp_path)
    import os as _os

    _os.environ["INTERP_JOBS_DIR"] = env_root
    try:
        for spec, want in (('{"n": 3, "nan_at": 1}', "NaN at step 1"),
                           ('{"index": 7}', "IndexError: list index out of range")):
            kind = "tests.jobs_fixture:" + ("counting_job" if "nan_at" in spec else "broken_job")
            assert main(["jobs", "submit", kind, "--spec", spec, "--wait"]) == 1
            err = capsys.readouterr().err
            assert "Traceback" not in err and want in err
            lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
            assert len(lines) == 1
        jid = jobs.job_id("tests.jobs_fixture:broken_job", {"index": 7})
        assert "Traceback" in (tmp_path / jid / "log.txt").read_text()
        assert "log.txt" in jobs.status(jid, tmp_path).error
        assert main(["jobs", "submit", "adapters.train", "--spec", "{bad json", "--wait"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: --spec is not valid JSON") and "Traceback" not in err
    finally:
        del _os.environ["INTERP_JOBS_DIR"]


def test_full_disk_failure_is_recorded_in_the_status(tmp_path):
    """When the disk fills up the job still ends 'failed' with the cause in its status
    (written over the padded status file in place when a new file cannot be made)."""
    from tests._fs import small_tmpfs

    with small_tmpfs(tmp_path / "fs", 256 * 1024) as root:
        st = jobs.run_inline("tests.jobs_fixture:disk_full_job", {}, root=root,
                             raise_on_error=False)
        assert st.state == "failed" and "disk full" in st.error
        again = jobs.status(st.id, root)
        assert again.state == "failed" and "disk full" in again.error


def test_read_only_cache_is_one_error_line(tmp_path, tiny_pair_dirs):
    from tests._fs import small_tmpfs
    from tests.test_cli import run_cli

    with small_tmpfs(tmp_path / "ro", 64 * 1024, read_only=True) as root:
        p = run_cli("jobs", "submit", "tests.jobs_fixture:counting_job", "--spec",
                    '{"n": 2}', "--wait", cache=root)
        assert p.returncode == 1 and "Traceback" not in p.stderr
        assert p.stderr.strip().splitlines()[-1].startswith("error: ")
        assert "read-only" in p.stderr
