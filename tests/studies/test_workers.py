"""Sweeps across machines: the study in Optuna storage (a URL or a journal file), `sweep --worker` processes sharing
it, the password kept out of files and messages.

The PostgreSQL test starts a real server from Debian's packages in a temporary folder, as an unprivileged user (the
server refuses root), on 127.0.0.1 with a free port, and runs two workers as separate processes against it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.studies.test_sweep import recipe, sweep
from unsloth_sft.core.errors import ConfigError
from unsloth_sft.core.procs import terminate_as_interrupt
from unsloth_sft.studies.spec import load_sweep

BIN = Path(sys.executable).parent
PASSWORD = "s3cr:t@pg%42"  # ':' '@' '%': a password that must be URL-quoted to survive in a URL
SEARCH = ["--search", "optuna", "--grid", "train.learning_rate=1e-4:1e-2:log", "--no-eval", "--metric", "train_loss"]


def search_sweep(tmp_path: Path, **options):
    grid = {"train.learning_rate": "1e-4:1e-2:log"}
    return load_sweep(str(recipe(tmp_path)), [], {"grid": grid, "search": "optuna", "trials": 4, **options})


# ---------------------------------------------------------------- the storage option (nothing trains)


@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"storage": "postgresql://sweeper:hunter2@db/sweeps"}, "write it as ${VAR}"),
        ({"storage": "db.example.org/sweeps"}, "expected an Optuna storage URL"),
        ({"storage": "journal:"}, "needs a file path"),
        ({"storage": "sqlite:///x.db", "search": "grid", "grid": {"lora.r": [4, 8]}}, "need --search optuna"),
        ({"worker": True}, "--worker shares one Optuna study"),
    ],
)
def test_bad_storage_options_are_one_line_errors(tmp_path, options, fragment):
    with pytest.raises(ConfigError) as info:
        search_sweep(tmp_path, **options)
    assert fragment in str(info.value) and "\n" not in str(info.value)
    assert "hunter2" not in str(info.value)


def test_storage_url_reads_the_environment_and_messages_mask_the_password(tmp_path, monkeypatch):
    from unsloth_sft.studies.storage import scrubbed, shown_storage, storage_url, study_name

    s = search_sweep(tmp_path, storage="postgresql://sweeper:${PG_PW}@db:5432/sweeps", worker=True)
    with pytest.raises(ConfigError, match=r"\$\{PG_PW\} is not set in the environment; export PG_PW"):
        storage_url(s)
    monkeypatch.setenv("PG_PW", PASSWORD)
    assert storage_url(s) == "postgresql://sweeper:s3cr%3At%40pg%2542@db:5432/sweeps"
    from sqlalchemy.engine import make_url

    assert make_url(storage_url(s)).password == PASSWORD  # what the driver gets
    assert shown_storage(s) == "postgresql://sweeper:***@db:5432/sweeps"
    assert PASSWORD not in scrubbed(f"could not connect as sweeper:{PASSWORD}\nmore", s)
    assert study_name(s) == "t-sweep"  # shared storages hold many studies: named after the recipe's run
    monkeypatch.setenv("SWEEP_URL", f"postgresql://sweeper:{PASSWORD}@db/sweeps")
    whole = search_sweep(tmp_path, storage="${SWEEP_URL}", study="mine")
    assert PASSWORD not in shown_storage(whole) and study_name(whole) == "mine"
    default = search_sweep(tmp_path)
    assert shown_storage(default).endswith("t-sweep/study.db") and study_name(default) == "sweep"  # as before


def test_a_missing_driver_and_an_unreachable_server_are_one_line_errors(tmp_path, monkeypatch):
    import importlib.util

    from unsloth_sft.core.errors import RunError
    from unsloth_sft.studies.storage import open_study

    if importlib.util.find_spec("MySQLdb") is None:
        with pytest.raises(ConfigError, match=r"database driver is not installed: pip install mysqlclient"):
            open_study(search_sweep(tmp_path, storage="mysql://sweeper@127.0.0.1/sweeps"))
    monkeypatch.setenv("PG_PW", PASSWORD)
    monkeypatch.setattr("time.sleep", lambda s: None)  # the retries of a worker that lost a start-up race
    closed = f"postgresql://sweeper:${{PG_PW}}@127.0.0.1:{_free_port()}/postgres"
    with pytest.raises(RunError) as info:
        open_study(search_sweep(tmp_path, storage=closed, worker=True))
    msg = str(info.value)
    assert msg.startswith("sweep.storage postgresql://sweeper:***@127.0.0.1:") and "cannot open the study" in msg
    assert "\n" not in msg and PASSWORD not in msg


def test_a_worker_gives_up_a_trial_once_the_study_is_full(tmp_path):
    """Trial numbers are handed out in order: a new trial after --trials live ones is pruned untrained, and a dead
    worker's failed trial queued again holds one place, not two."""
    import optuna
    from optuna.trial import TrialState

    from unsloth_sft.studies.search import claimed, objective_for

    s = search_sweep(tmp_path, storage=f"journal:{tmp_path / 'j.log'}", worker=True)
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    for state, value in ((TrialState.COMPLETE, 1.0), (TrialState.COMPLETE, 2.0), (TrialState.FAIL, None)):
        study.add_trial(optuna.create_trial(state=state, params={"x": 0.5}, distributions=dist, value=value))
    retry = {"failed_trial": 2, "retry_history": [2]}  # what RetryFailedTrialCallback writes
    study.add_trial(optuna.create_trial(state=TrialState.WAITING, system_attrs=retry))
    assert claimed(study) == 3  # 0, 1 and the retry of 2
    assert study.ask().number == 3  # other workers take the queued retry first,
    study.ask()  # then a new trial: four places held
    assert claimed(study) == 4
    surplus = study.ask()
    with pytest.raises(optuna.TrialPruned):
        objective_for(s, None, [], 1)(surplus)
    assert surplus.user_attrs == {"surplus": True}
    assert not (tmp_path / "runs").exists()  # nothing trained, nothing written


# ---------------------------------------------------------------- workers that train


@pytest.mark.slow
def test_a_worker_on_a_journal_file_runs_the_study_and_a_second_one_finds_it_full(tmp_path, capsys):
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    path = recipe(tmp_path)
    journal = tmp_path / "shared" / "study.log"
    args = [*SEARCH, "--trials", "2", "--storage", f"journal:{journal}", "--worker"]
    assert sweep(str(path), *args, "--out", str(tmp_path / "w1")) == 0
    assert "this worker ran 2 trials; the study holds 2 of 2" in capsys.readouterr().out
    assert sweep(str(path), *args, "--out", str(tmp_path / "w2")) == 0
    out = capsys.readouterr().out
    assert "2 of 2 trials claimed" in out and "this worker ran 0 trials" in out
    assert not list((tmp_path / "w2").glob("t_t*"))
    study = optuna.load_study(study_name="t-sweep", storage=JournalStorage(JournalFileBackend(str(journal))))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert all(t.user_attrs["worker"].endswith(str((tmp_path / "w1").resolve())) for t in study.trials)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name.split(".")[0]))
    return Path(dirs[-1]) if dirs else None


@contextlib.contextmanager
def postgres_server():
    """A throwaway PostgreSQL on 127.0.0.1: initdb + pg_ctl in a temporary folder, as `nobody` when we are root.
    Stopped and removed on every way out of the block; skipped, saying why, where it cannot be installed or run."""
    import pwd

    bindir = _pg_bin()
    if bindir is None or not (bindir / "pg_ctl").is_file():
        pytest.skip("PostgreSQL is not installed (no initdb): apt-get install postgresql (scripts/setup.sh does)")
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as an unprivileged user")
        as_user = ["runuser", "-u", "nobody", "--"]
    root = Path(tempfile.mkdtemp(prefix="unsloth-sft-pg-"))
    data, started = root / "data", False
    try:
        (root / "pw").write_text(PASSWORD + "\n", encoding="utf-8")
        if as_user:
            nobody = pwd.getpwnam("nobody")
            for p in (root, root / "pw"):
                os.chown(p, nobody.pw_uid, nobody.pw_gid)
        init = [str(bindir / "initdb"), "-D", str(data), "-U", "sweeper", "--pwfile", str(root / "pw")]
        init += ["--auth", "scram-sha-256", "--no-locale", "-E", "UTF8"]
        proc = subprocess.run(as_user + init, capture_output=True, text=True, cwd=root)
        if proc.returncode != 0:
            pytest.skip(f"initdb cannot run here: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
        port = _free_port()
        options = f"-h 127.0.0.1 -p {port} -k {root}"
        ctl = [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", "60"]
        proc = subprocess.run(as_user + ctl + ["-o", options, "start"], capture_output=True, text=True, cwd=root)
        started = True  # pg_ctl may fail after the server started: stop it either way
        if proc.returncode != 0:
            log = (root / "server.log").read_text(errors="replace") if (root / "server.log").is_file() else ""
            pytest.skip(f"PostgreSQL did not start: {(log.strip().splitlines() or [proc.stderr.strip()])[-1]}")
        yield port
    finally:
        if started:
            subprocess.run(as_user + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                           capture_output=True, cwd="/")  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_share_a_postgresql_study_and_run_every_trial_once(tmp_path):
    import optuna
    from optuna.trial import TrialState

    from unsloth_sft.studies.compare import compare

    path = recipe(tmp_path)
    folders = [tmp_path / "machine-a", tmp_path / "machine-b"]
    with terminate_as_interrupt(), postgres_server() as port:  # a SIGTERM (a CI timeout) cleans up too
        url = f"postgresql://sweeper:${{SWEEP_DB_PASSWORD}}@127.0.0.1:{port}/postgres"
        env = {**os.environ, "SWEEP_DB_PASSWORD": PASSWORD, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        cmd = [str(BIN / "unsloth-sft"), "sweep", str(path), *SEARCH, "--trials", "4", "--storage", url, "--worker"]
        workers = [
            subprocess.Popen([*cmd, "--out", str(f)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for f in folders
        ]  # fmt: skip
        try:
            outputs = [w.communicate(timeout=600)[0] for w in workers]
        finally:
            for w in workers:
                if w.poll() is None:
                    w.kill()
                    w.wait()
        assert [w.returncode for w in workers] == [0, 0], "\n".join(o[-3000:] for o in outputs)
        from urllib.parse import quote

        storage = f"postgresql://sweeper:{quote(PASSWORD, safe='')}@127.0.0.1:{port}/postgres"
        trials = optuna.load_study(study_name="t-sweep", storage=storage).trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4, [(t.number, t.state) for t in trials]
    # any other trial lost the race for a place and was given up untrained
    assert all(t.state == TrialState.PRUNED and t.user_attrs.get("surplus") for t in trials if t not in complete)
    ran = {f: {p.name for p in f.iterdir() if (p / "metrics.json").is_file()} for f in folders}
    assert all(ran.values()), ran  # both workers ran some
    assert not ran[folders[0]] & ran[folders[1]]  # none ran twice
    assert ran[folders[0]] | ran[folders[1]] == {t.user_attrs["run_name"] for t in complete}
    for t in complete:  # each trial's run folder is under the worker that ran it, trained once
        folder = next(f for f in folders if t.user_attrs["run_name"] in ran[f])
        assert t.user_attrs["worker"].endswith(str(folder.resolve()))
        assert (folder / "logs" / f"{t.user_attrs['run_name']}.log").is_file()
    # the password is in no message and no file; sweep.yaml keeps ${SWEEP_DB_PASSWORD}
    for text in outputs:
        assert PASSWORD not in text and quote(PASSWORD, safe="") not in text
        assert "sweeper:***@127.0.0.1" in text
    for f in folders:
        assert "${SWEEP_DB_PASSWORD}" in (f / "sweep.yaml").read_text(encoding="utf-8")
        for p in f.rglob("*"):
            if p.is_file():
                data = p.read_bytes()
                assert PASSWORD.encode() not in data and quote(PASSWORD, safe="").encode() not in data, p
    board = compare(folders, out=tmp_path / "all")  # the workers' folders gathered
    assert sorted(r.name for r in board.rows) == sorted(t.user_attrs["run_name"] for t in complete)
