"""What a sweep runs: the `sweep:` section (its own small schema), --grid values, variant names and configs."""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import re
from dataclasses import field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError
from pydantic.dataclasses import dataclass

from unsloth_sft.config.load import load_config, read_yaml
from unsloth_sft.config.run import RunConfig
from unsloth_sft.config.types import STRICT, Count
from unsloth_sft.core.errors import ConfigError

RECIPE, SWEEP, VARIANTS, LOGS, STUDY, LOCK = "recipe.yaml", "sweep.yaml", "variants", "logs", "study.db", ".sweep.lock"
# Short names of common keys in run names (lr2e-4_r16_s1); any other key goes by its last dotted part.
SHORT = {
    "train.learning_rate": "lr",
    "lora.r": "r",
    "lora.alpha": "alpha",
    "train.seed": "s",
    "train.max_steps": "steps",
    "train.num_train_epochs": "ep",
    "train.per_device_train_batch_size": "bs",
    "train.gradient_accumulation_steps": "ga",
    "train.warmup_steps": "warmup",
    "train.weight_decay": "wd",
    "train.lr_scheduler_type": "sched",
    "model.name": "model",
    "data.source": "data",
}
ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")  # ${VAR} in sweep.storage, read from the environment
NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
RANGE = re.compile(rf"^\s*({NUMBER})\s*:\s*({NUMBER})\s*(?::\s*(log))?\s*$")  # LOW:HIGH or LOW:HIGH:log


@dataclass(config=STRICT)
class SweepConfig:
    grid: dict[str, Any] = field(default_factory=dict)  # key -> [values] (grid) or "LOW:HIGH[:log]" (optuna range)
    seeds: Count | None = None  # repeat every variant with train.seed 1..N (grid only)
    search: Literal["grid", "optuna"] = "grid"  # grid: every combination; optuna: TPE over the ranges
    trials: Count | None = None  # optuna: trials in the study in all (a rerun runs only the missing ones)
    metric: str = (
        "eval_loss"  # what the leaderboard sorts by and optuna optimizes: an eval metric (tuned) or metrics.json key
    )
    direction: Literal["auto", "minimize", "maximize"] = "auto"  # auto: minimize losses and perplexity, else maximize
    parallel: Count = 1  # variants at once; each is its own process (CPU threads are split between them)
    notebook: str | None = None  # run each variant through this notebook with papermill; None: the CLI path
    evaluate: bool = True  # score base vs tuned after training (the leaderboard's metrics need it)
    dir: str | None = None  # the sweep folder; None: OUTPUT_DIR/RUN_NAME-sweep
    # optuna: where the study lives, an Optuna storage URL (postgresql://, mysql+pymysql://, sqlite:///PATH) or
    # journal:PATH (a journal file on a shared filesystem); ${VAR} is read from the environment when the study
    # opens, so a password never lands in sweep.yaml. None: study.db (SQLite) in the sweep folder
    storage: str | None = None
    study: str | None = None  # the study's name in the storage; None: "sweep" in study.db, else RUN_NAME-sweep


@dataclasses.dataclass(frozen=True)
class Range:
    low: float
    high: float
    log: bool
    integer: bool


@dataclasses.dataclass
class Sweep:
    """What a sweep runs: the recipe file, its --set overrides, the sweep section, and the folder."""

    recipe: Path  # the params file variants are built from (the sweep folder's recipe.yaml on a rerun)
    source: str  # the params file the sweep was first started from, as given
    overrides: list[str]
    spec: SweepConfig
    folder: Path
    base: RunConfig
    worker: bool = False  # --worker: one of many sweep processes sharing the study in sweep.storage

    @property
    def direction(self) -> str:
        return direction_of(self.spec.metric, self.spec.direction)


def direction_of(metric: str, direction: str = "auto") -> str:
    if direction != "auto":
        return direction
    return "minimize" if metric.endswith("loss") or metric == "perplexity" else "maximize"


def parse_values(key: str, text: str) -> list[Any] | str:
    """`1e-4,2e-4` -> [1e-4, 2e-4] (YAML flow, so `[q_proj],[q_proj,v_proj]` works); a range stays text."""
    import yaml

    if RANGE.match(text):
        return text
    try:
        values = yaml.safe_load(f"[{text}]")
    except yaml.YAMLError:
        raise ConfigError(f"--grid {key}={text}: not a comma-separated list of values (e.g. {key}=1e-4,2e-4)") from None
    if not values:
        raise ConfigError(f"--grid {key}=: give at least one value")
    return values


def grid_args(items: list[str]) -> dict[str, Any]:
    """--grid KEY=V1,V2 (repeatable) as a mapping, in the order given."""
    out: dict[str, Any] = {}
    for item in items:
        key, eq, text = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--grid '{item}': expected KEY=V1,V2 (e.g. train.learning_rate=1e-4,2e-4)")
        out[key.strip()] = parse_values(key.strip(), text)
    return out


def as_range(key: str, spec: str) -> Range:
    m = RANGE.match(spec)
    if m is None:
        raise ConfigError(f"sweep.grid.{key}: '{spec}' is neither a list of values nor a range LOW:HIGH[:log]")
    low, high = (float(x) for x in m.group(1, 2))
    integer = all(re.fullmatch(r"[-+]?\d+", x) for x in m.group(1, 2))
    if not low < high or (m.group(3) and low <= 0):
        raise ConfigError(f"sweep.grid.{key}: range {spec} needs LOW < HIGH (and LOW > 0 with :log)")
    return Range(low, high, bool(m.group(3)), integer)


def check_sweep(spec: SweepConfig) -> None:
    """A grid has lists, a search has ranges and a trial count; seeds only repeat grid variants."""
    if not spec.grid:
        raise ConfigError("sweep.grid is empty; give at least one key, e.g. --grid train.learning_rate=1e-4,2e-4")
    for key, values in spec.grid.items():
        if isinstance(values, str) and spec.search == "grid":
            raise ConfigError(f"sweep.grid.{key}: a range ({values}) needs --search optuna; a grid takes V1,V2,...")
        if isinstance(values, str):
            as_range(key, values)
        elif not isinstance(values, list) or not values:
            raise ConfigError(f"sweep.grid.{key}: expected a list of values, got {values!r}")
    if spec.search == "optuna" and spec.trials is None:
        raise ConfigError("--search optuna needs --trials N (sweep.trials)")
    if spec.search == "optuna" and spec.seeds is not None:
        raise ConfigError("--seeds repeats grid variants; with --search optuna put train.seed in the grid instead")
    if spec.search == "optuna" and importlib.util.find_spec("optuna") is None:
        raise ConfigError("--search optuna needs Optuna: pip install 'unsloth-sft[sweep]' (or pip install optuna)")
    check_repeats(spec)
    if spec.storage is not None or spec.study is not None:
        check_storage(spec)


def same_value(a: Any, b: Any) -> bool:
    """Two grid values that make the same config value: 1e-3 (YAML 1.1 reads it as text) and 0.001 are one."""
    a, b = (float(v) if isinstance(v, str) and re.fullmatch(NUMBER, v.strip()) else v for v in (a, b))
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def check_repeats(spec: SweepConfig) -> None:
    """A value given twice would train (or offer Optuna) the same variant twice: refused, naming key and value."""
    for key, values in spec.grid.items():
        if not isinstance(values, list):
            continue
        for i, later in enumerate(values):
            j = next((j for j in range(i) if same_value(values[j], later)), None)
            if j is not None:
                first = values[j]
                shown = f"{first} is given twice" + (f" (as {first} and {later})" if str(first) != str(later) else "")
                raise ConfigError(
                    f"sweep.grid.{key}: the value {shown} and would train the same variant twice; "
                    "remove the repeat (--seeds N repeats every variant with its own seed)"
                )


def check_storage(spec: SweepConfig) -> None:
    """sweep.storage is an Optuna storage URL or journal:PATH, holding no password of its own: ${VAR} takes it."""
    from urllib.parse import urlsplit

    if spec.search != "optuna":
        raise ConfigError("sweep.storage / sweep.study hold an Optuna study: they need --search optuna")
    url = spec.storage
    if url is None:
        return
    if url.startswith("journal:"):
        if not url[len("journal:") :].strip():
            raise ConfigError("sweep.storage journal: needs a file path, e.g. journal:/shared/sweeps/demo.log")
        return
    if ENV_VAR.fullmatch(url):  # the whole URL from the environment
        return
    if not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", url):
        raise ConfigError(
            f"sweep.storage '{url}': expected an Optuna storage URL (postgresql://USER@HOST/DB, "
            "mysql+pymysql://USER@HOST/DB, sqlite:///PATH) or journal:PATH"
        )
    password = urlsplit(url).password
    if password is not None and not ENV_VAR.fullmatch(password):
        raise ConfigError(
            "sweep.storage holds a password, which would be saved in sweep.yaml and shown in messages: write it as "
            "${VAR} (e.g. postgresql://USER:${PGPASSWORD}@HOST/DB, single-quoted on a command line) with VAR set in "
            "the environment"
        )


def sweep_config(raw: dict[str, Any], where: str) -> SweepConfig:
    from unsloth_sft.config.load import did_you_mean, one_line_error

    names = [f.name for f in dataclasses.fields(SweepConfig)]
    for key in raw:
        if key not in names:
            raise ConfigError(f"{where}: unknown key 'sweep.{key}'{did_you_mean(str(key), names)}")
    grid = raw.get("grid") or {}
    if isinstance(grid, dict):  # a single value in YAML is a list of one; a range stays text
        grid = {
            k: v if isinstance(v, list) or (isinstance(v, str) and RANGE.match(v)) else [v] for k, v in grid.items()
        }
    try:
        spec = SweepConfig(**{**raw, "grid": grid})
    except ValidationError as err:
        raise ConfigError(f"{where}: {one_line_error(err, SweepConfig, raw, 'sweep')}") from None
    try:
        check_sweep(spec)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    return spec


def load_sweep(params: str, overrides: list[str], options: dict[str, Any]) -> Sweep:
    """The sweep a params file (its `sweep:` section) or an existing sweep folder describes, with CLI options on top."""
    given = Path(params)
    if given.is_dir():
        if not (given / SWEEP).is_file():
            raise ConfigError(f"{given}: not a sweep folder (no {SWEEP}); pass a params file to start one")
        saved = read_yaml(given / SWEEP)
        recipe, raw_sweep = given / RECIPE, {**(saved.get("sweep") or {}), "dir": str(given)}
        source = str(saved.get("recipe") or recipe)
        overrides = list(saved.get("overrides") or []) + list(overrides)
    else:
        recipe, raw_sweep, source = given, read_yaml(given).get("sweep") or {}, str(given)
        if not isinstance(raw_sweep, dict):
            raise ConfigError(f"{given}: sweep: expected a mapping (grid:, search:, ...), got {raw_sweep!r}")
    grid = options.pop("grid", None) or {}
    worker = bool(options.pop("worker", False))
    raw_sweep = {**raw_sweep, **{k: v for k, v in options.items() if v is not None}}
    raw_sweep["grid"] = {**(raw_sweep.get("grid") or {}), **grid}
    spec = sweep_config(raw_sweep, str(given))
    base = load_config(recipe, overrides)
    folder = Path(spec.dir) if spec.dir else Path(base.output_dir) / f"{base.run_name}-sweep"
    spec = dataclasses.replace(spec, dir=str(folder))
    if worker and (spec.search != "optuna" or spec.storage is None):
        raise ConfigError(
            "--worker shares one Optuna study between sweep processes: give --search optuna and --storage URL "
            "(sweep.storage: postgresql://..., mysql+pymysql://..., sqlite:///PATH, or journal:PATH on a shared disk)"
        )
    return Sweep(recipe, source, list(overrides), spec, folder, base, worker)


def short_value(value: Any) -> str:
    """2e-4 -> '2e-4', 0.5 -> '0.5', 16 -> '16', [q_proj, v_proj] -> 'q-proj+v-proj', a path -> its stem."""
    if isinstance(value, str) and re.fullmatch(NUMBER, value.strip()):
        value = float(value)  # YAML 1.1 reads 1e-4 as text
    if isinstance(value, bool) or value is None:
        text = str(value).lower()
    elif isinstance(value, int):
        text = str(value)
    elif isinstance(value, float):
        if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e5):
            mantissa, _, exp = f"{value:.2e}".partition("e")
            text = f"{mantissa.rstrip('0').rstrip('.')}e{int(exp)}"
        else:
            text = f"{value:.3g}"
    elif isinstance(value, list):
        text = "+".join(short_value(v) for v in value)
    else:
        text = Path(str(value)).stem if "/" in str(value) else str(value).rsplit(":", 1)[-1]  # sample:NAME -> NAME
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "x"


def run_name(base: str, values: dict[str, Any], prefix: str = "") -> str:
    parts = [prefix] if prefix else []
    for key, value in values.items():
        text = short_value(value)
        sep = "-" if text[:1].isalpha() else ""  # lr2e-4, r16, but data-mine, sched-cosine
        parts.append(f"{SHORT.get(key, key.rsplit('.', 1)[-1])}{sep}{text}")
    return f"{base}_{'_'.join(parts) or 'base'}"


def grid_variants(spec: SweepConfig, base: str) -> list[tuple[str, dict[str, Any]]]:
    """Every combination of the grid (times the seeds), named after the keys that vary: [(name, {key: value})]."""
    grid = dict(spec.grid)
    if spec.seeds:
        grid["train.seed"] = list(range(1, spec.seeds + 1))
    varying = [k for k, v in grid.items() if len(v) > 1] or list(grid)
    out, seen = [], set()
    for combo in itertools.product(*grid.values()):
        values = dict(zip(grid, combo))
        name = run_name(base, {k: values[k] for k in varying})
        if name in seen:  # two values that print alike (two data files both named train.jsonl)
            name = f"{name}-{len(out) + 1}"
        seen.add(name)
        out.append((name, values))
    return out


def variant_config(sweep: Sweep, name: str, values: dict[str, Any]) -> RunConfig:
    """The recipe, its --set overrides, the variant's values, its own run folder in the sweep folder.

    overwrite is always off: the sweep decides what to rerun, and a variant's checkpoints are what it resumes from.
    """
    fixed = [("run_name", name), ("output_dir", str(sweep.folder)), ("overwrite", False)]
    try:
        return load_config(sweep.recipe, sweep.overrides + list(values.items()) + fixed)
    except ConfigError as err:
        raise ConfigError(f"variant {name}: {err}") from None
