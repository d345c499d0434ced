"""Where a sweep's Optuna study lives: study.db in the sweep folder, or `sweep.storage` (a database URL or a journal
file), opened with Optuna's own storages; ${VAR} comes from the environment and a password is never shown."""

from __future__ import annotations

import os
from urllib.parse import quote, urlsplit

from unsloth_sft.core.errors import ConfigError, RunError
from unsloth_sft.studies.spec import ENV_VAR, STUDY, Sweep

STUDY_NAME = "sweep"  # the study's name in the sweep folder's own study.db
# --worker on a database: a running trial beats every HEARTBEAT_S; silent for GRACE_S (its machine died), Optuna
# fails it and queues its values again (RetryFailedTrialCallback, at most RETRIES times) for another worker to run
HEARTBEAT_S, GRACE_S, RETRIES = 60, 300, 3
OPEN_TRIES = 3  # workers starting together race to create the tables: the loser retries
DRIVERS = {  # the module SQLAlchemy missed -> what to install (SQLAlchemy 2.1 reads postgresql:// with psycopg 3)
    "psycopg": "'psycopg[binary]' (or pip install 'unsloth-sft[sweep]')",
    "psycopg2": "psycopg2-binary, or write postgresql+psycopg://... and pip install 'psycopg[binary]'",
    "MySQLdb": "mysqlclient, or write mysql+pymysql://... and pip install pymysql",
    "pymysql": "pymysql",
}


def _env(name: str) -> str:
    value = os.environ.get(name)
    if value is None:
        raise ConfigError(f"sweep.storage: ${{{name}}} is not set in the environment; export {name} and rerun")
    return value


def storage_url(sweep: Sweep) -> str | None:
    """sweep.storage with every ${VAR} read from the environment (a password URL-quoted); None: the default."""
    raw = sweep.spec.storage
    if raw is None:
        return None
    if ENV_VAR.fullmatch(raw):  # the whole URL from the environment
        return _env(ENV_VAR.fullmatch(raw).group(1))
    if not raw.startswith("journal:"):
        password = urlsplit(raw).password
        if password and ENV_VAR.fullmatch(password):  # '@', ':' or '%' in a password must not end it early
            value = quote(_env(ENV_VAR.fullmatch(password).group(1)), safe="")
            raw = raw.replace(f":{password}@", f":{value}@", 1)
    return ENV_VAR.sub(lambda m: _env(m.group(1)), raw)


def _secret(url: str | None) -> str | None:
    if not url or url.startswith("journal:"):
        return None
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).password
    except Exception:  # not a URL SQLAlchemy reads: take what a URL parser sees
        return urlsplit(url).password


def shown_storage(sweep: Sweep) -> str:
    """The study's place for messages: its file, or its URL with the password as ***."""
    url = storage_url(sweep)
    if url is None:
        return str(sweep.folder / STUDY)
    if url.startswith("journal:"):
        return url
    secret = _secret(url)
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.replace(secret, "***") if secret else url


def scrubbed(text: str, sweep: Sweep) -> str:
    """An error's first line with the password (as given and URL-quoted) replaced by ***."""
    line = (str(text).strip().splitlines() or [""])[0][:300]
    secret = _secret(storage_url(sweep))
    for form in {secret, quote(secret or "", safe="")} - {None, ""}:
        line = line.replace(form, "***")
    return line


def study_name(sweep: Sweep) -> str:
    if sweep.spec.study:
        return sweep.spec.study
    return STUDY_NAME if sweep.spec.storage is None else f"{sweep.base.run_name}-sweep"


def open_storage(sweep: Sweep):
    """An Optuna storage: the default SQLite URL, a JournalStorage on a file, or an RDBStorage (with heartbeats and
    retries of a dead worker's trial under --worker)."""
    import optuna

    url = storage_url(sweep)
    if url is None:
        return f"sqlite:///{(sweep.folder / STUDY).resolve()}"
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = os.path.expanduser(url[len("journal:") :])
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        return JournalStorage(JournalFileBackend(path))
    options = {} if url.startswith("sqlite") else {"engine_kwargs": {"pool_pre_ping": True}}  # hours-long trials
    if sweep.worker:
        options.update(heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
        retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)  # optuna >= 4.9
        if retry is not None:
            options["heartbeat_stale_trial_callback"] = retry(max_retry=RETRIES)
        else:
            options["failed_trial_callback"] = optuna.storages.RetryFailedTrialCallback(max_retry=RETRIES)
    return optuna.storages.RDBStorage(url, **options)


def open_study(sweep: Sweep):
    """The sweep's study (created on the first run), with the sweep's direction and a TPE sampler: seeded with
    train.seed for one sweep process; for workers unseeded (one seed everywhere would propose the same values on
    every machine) and with constant_liar, so running trials steer the next proposals away from themselves."""
    import random
    import time
    import warnings

    import optuna
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep prints one line per trial itself
    where = shown_storage(sweep)
    for attempt in range(1, OPEN_TRIES + 1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                sampler = (
                    optuna.samplers.TPESampler(constant_liar=True)
                    if sweep.worker
                    else optuna.samplers.TPESampler(seed=sweep.base.train.seed)
                )
                return optuna.create_study(
                    storage=open_storage(sweep),
                    study_name=study_name(sweep),
                    direction=sweep.direction,
                    sampler=sampler,
                    load_if_exists=True,
                )
        except ImportError as err:  # Optuna re-raises the driver's ModuleNotFoundError as a plain ImportError
            missing = next((e.name for e in (err, err.__cause__, err.__context__) if getattr(e, "name", None)), "")
            need = DRIVERS.get(missing, missing or "the driver SQLAlchemy names for this URL")
            raise ConfigError(
                f"sweep.storage {where}: its database driver is not installed: pip install {need}"
            ) from None
        except ArgumentError as err:
            raise ConfigError(f"sweep.storage {where}: not a database URL ({scrubbed(err, sweep)})") from None
        except ValueError as err:  # e.g. the stored study optimizes in the other direction
            fix = "use another sweep folder (--out)" if sweep.spec.storage is None else "name another --study"
            raise ConfigError(f"{where}: {scrubbed(err, sweep)}; {fix}") from None
        except (SQLAlchemyError, optuna.exceptions.StorageInternalError, OSError) as err:
            if attempt == OPEN_TRIES:
                raise RunError(
                    f"sweep.storage {where}: cannot open the study ({scrubbed(err, sweep)}); check that the server "
                    "runs and the URL, user and password are right"
                ) from None
            time.sleep(attempt + random.random())
    raise AssertionError("not reached")
