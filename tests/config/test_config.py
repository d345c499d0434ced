"""Tests for unsloth_sft.config (load_config, overrides, validation, secrets) and notebooks.notebook_config."""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from unsloth_sft import tasks
from unsloth_sft.config.data import DataConfig
from unsloth_sft.config.load import SECRET_KEYS, load_config, save_config
from unsloth_sft.config.run import RunConfig
from unsloth_sft.config.types import BACKENDS, SAVE_METHODS, TEMPLATES
from unsloth_sft.core.errors import ConfigError, SFTError
from unsloth_sft.notebooks import notebook_config

ROOT = Path(__file__).resolve().parents[2]
ALL_YAML = sorted((ROOT / "params").rglob("*.yaml"))
# params/accelerate/ holds `accelerate launch --config_file` files (launcher settings, not a RunConfig).
ACCELERATE = [p for p in ALL_YAML if p.relative_to(ROOT).parts[1] == "accelerate"]
PARAMS = [p for p in ALL_YAML if p not in ACCELERATE]
# What a notebook's parameters cell defines (mirrors notebooks/train.py), plus a few interpreter names.
NOTEBOOK_DEFAULTS = {
    "params_file": None,
    "overrides": [],
    "dataset": None,
    "max_steps": None,
    "model_name": None,
    "run_name": None,
    "output_dir": None,
    "finetune": None,
    "overwrite": None,
    "model": {},
    "lora": {},
    "data": {},
    "train": {},
    "eval": {},
    "export": {},
}


def config_error(fn, *args, **kwargs) -> str:
    """Call fn, require a one-line ConfigError, and return its message."""
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    err = info.value
    assert isinstance(err, SFTError) and isinstance(err, ValueError)
    msg = str(err)
    assert "\n" not in msg, msg
    assert msg.strip(), "empty error message"
    return msg


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def notebook_ns(**given) -> tuple[dict, set]:
    ns = {k: (dict(v) if isinstance(v, dict) else v) for k, v in NOTEBOOK_DEFAULTS.items()}
    defined = set(ns) | {"__builtins__", "In", "Out", "get_ipython", "subprocess", "sys"}
    ns.update(given)
    return ns, defined


# ---------------------------------------------------------------- the shipped params files


def test_params_files_exist():
    names = {p.relative_to(ROOT).as_posix() for p in PARAMS}
    assert "params/demo-cpu.yaml" in names
    assert len([n for n in names if n.startswith("params/cpu/")]) >= 6


@pytest.mark.parametrize("path", PARAMS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_params_file_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    # The file's own values survive (no silent default wins over a value in the file).
    assert cfg.run_name == raw["run_name"]
    for section in ("model", "data", "train"):
        for key, value in (raw.get(section) or {}).items():
            got = getattr(getattr(cfg, section), key)
            assert got == value or (isinstance(value, str) and got == [value]), (section, key, got, value)


@pytest.mark.parametrize("path", PARAMS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_params_file_header_is_the_command_that_runs_it(path):
    rel = path.relative_to(ROOT).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    first = lines[0]
    commands = (
        "# unsloth-sft train params/",
        "# papermill notebooks/train.ipynb ",
        "# unsloth-sft notebook notebooks/",
        "# unsloth-sft sweep params/",
    )
    assert first.startswith(commands), first
    header = [first] + ([lines[1]] if len(lines) > 1 and lines[1].startswith("#") else [])
    assert any(rel in line for line in header), f"{rel} not named in its header: {header}"
    # Every params file a header command names is this file (a copied header would name another).
    named = [m for line in header for m in re.findall(r"params/\S+?\.yaml", line)]
    assert named and all(n == rel for n in named), named
    # Every notebook a header names exists.
    notebooks = [m for line in header for m in re.findall(r"(?:papermill|unsloth-sft notebook) (\S+\.ipynb)", line)]
    assert notebooks, f"no notebook command (papermill or unsloth-sft notebook) in the header of {rel}"
    for nb in notebooks:
        assert (ROOT / nb).is_file(), f"{rel} header names {nb}, which does not exist"
    # The unsloth-sft train (or sweep) command, where present, trains this file.
    for line in header:
        m = re.search(r"unsloth-sft (?:train|sweep) (\S+)", line)
        if m:
            assert m.group(1) == rel


@pytest.mark.parametrize("path", ACCELERATE, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_accelerate_config_header_is_the_command_that_runs_it(path):
    rel = path.relative_to(ROOT).as_posix()
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith(f"# accelerate launch --config_file {rel} "), first
    # The run params it trains exist and load with the overrides the command gives.
    m = re.search(r"unsloth_sft train (params/\S+\.yaml)((?: --set \S+)*)", first)
    assert m, first
    overrides = m.group(2).split(" --set ")[1:]
    assert load_config(ROOT / m.group(1), overrides=overrides).run_name
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(raw, dict) and "num_processes" in raw


# ---------------------------------------------------------------- overrides and papermill params


def test_defaults_load_without_a_file():
    cfg = load_config()
    assert cfg.to_dict() == RunConfig().to_dict()


def test_dotted_override_of_int():
    cfg = load_config(overrides=["train.max_steps=5"])
    assert cfg.train.max_steps == 5 and isinstance(cfg.train.max_steps, int)
    assert load_config().train.max_steps == 60


def test_dotted_override_of_list():
    cfg = load_config(overrides=["export.save_methods=[lora]"])
    assert cfg.export.save_methods == ["lora"]
    cfg = load_config(overrides=["export.save_methods=[lora, gguf]"])
    assert cfg.export.save_methods == ["lora", "gguf"]


def test_single_string_for_a_list_is_a_list_of_one():
    cfg = load_config(overrides=["lora.target_modules=q_proj"])
    assert cfg.lora.target_modules == ["q_proj"]


def test_tuple_override_is_not_yaml_parsed():
    cfg = load_config(overrides=[("data.source", "x"), ("run_name", "007")])
    assert cfg.data.source == "x"
    assert cfg.run_name == "007"  # as a string: YAML would have made it the int 7
    with pytest.raises(ConfigError):
        load_config(overrides=["run_name=007"])  # YAML parses 007 as an int: refused, not guessed


def test_dict_overrides():
    cfg = load_config(overrides={"train.max_steps": 7, "data.columns": {"dialogue": "संवाद"}})
    assert cfg.train.max_steps == 7
    assert cfg.data.columns == {"dialogue": "संवाद"}


def test_override_of_null_and_bool_and_float():
    cfg = load_config(
        overrides=[
            "train.max_steps=null",
            "train.num_train_epochs=2",
            "train.packing=true",
            "train.learning_rate=0.001",
        ]
    )
    assert cfg.train.max_steps is None
    assert cfg.train.num_train_epochs == 2.0 and isinstance(cfg.train.num_train_epochs, float)
    assert cfg.train.packing is True
    assert cfg.train.learning_rate == 0.001


def test_overrides_apply_on_top_of_a_file(tmp_path):
    path = write(tmp_path, "p.yaml", "run_name: fromfile\ntrain:\n  max_steps: 9\n  seed: 11\n")
    cfg = load_config(path, overrides=["train.max_steps=3"])
    assert (cfg.run_name, cfg.train.max_steps, cfg.train.seed) == ("fromfile", 3, 11)


def test_override_without_equals_sign():
    msg = config_error(load_config, overrides=["train.max_steps"])
    assert "train.max_steps" in msg and "KEY=VALUE" in msg


def test_override_into_a_scalar_is_refused():
    msg = config_error(load_config, overrides=["run_name=x", "run_name.y=1"])
    assert "run_name" in msg and "not a section" in msg


def test_papermill_params_merge_per_section(tmp_path):
    path = write(tmp_path, "p.yaml", "run_name: r\ntrain:\n  max_steps: 9\n  seed: 11\ndata:\n  source: sample:chat\n")
    cfg = load_config(path, params={"train": {"max_steps": 4}, "run_name": "s"})
    assert cfg.train.max_steps == 4
    assert cfg.train.seed == 11  # the file's other keys in the section stay
    assert cfg.data.source == "sample:chat"
    assert cfg.run_name == "s"


def test_overrides_win_over_params(tmp_path):
    cfg = load_config(params={"train": {"max_steps": 4}}, overrides=["train.max_steps=2"])
    assert cfg.train.max_steps == 2


def test_load_config_does_not_mutate_params():
    params = {"train": {"max_steps": 4}}
    load_config(params=params, overrides=["train.seed=1"])
    assert params == {"train": {"max_steps": 4}}


@pytest.mark.parametrize("text, value", [("1e-4", 1e-4), ("5e-5", 5e-5), ("1E-5", 1e-5)])
def test_scientific_notation_learning_rate_override(text, value):
    assert load_config(overrides=[f"train.learning_rate={text}"]).train.learning_rate == value


def test_scientific_notation_learning_rate_in_file(tmp_path):
    path = write(tmp_path, "p.yaml", "train:\n  learning_rate: 1e-5\n")
    assert load_config(path).train.learning_rate == 1e-5


def test_scientific_notation_with_a_dot_is_a_float(tmp_path):
    path = write(tmp_path, "p.yaml", "train:\n  learning_rate: 1.0e-5\n")
    assert load_config(path).train.learning_rate == 1e-5
    assert load_config(overrides=["train.learning_rate=2.0e-4"]).train.learning_rate == 2e-4


# ---------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(
    "override, unknown, suggestion",
    [
        ("train.max_step=5", "train.max_step", "max_steps"),
        ("modle.name=x", "modle", "model"),
        ("data.sorce=x", "data.sorce", "source"),
        ("lora.rank=8", "lora.rank", None),
        ("run_nam=x", "run_nam", "run_name"),
    ],
)
def test_unknown_key_suggests_the_closest(override, unknown, suggestion):
    msg = config_error(load_config, overrides=[override])
    assert f"'{unknown}'" in msg
    if suggestion:
        assert f"did you mean '{suggestion}'" in msg
    else:
        assert "valid keys:" in msg and "r, alpha" in msg


def test_unknown_key_in_a_file_names_the_file(tmp_path):
    path = write(tmp_path, "p.yaml", "train:\n  max_step: 5\n")
    msg = config_error(load_config, path)
    assert str(path) in msg and "train.max_step" in msg and "did you mean 'max_steps'" in msg


def test_unknown_key_in_params_mapping():
    msg = config_error(load_config, params={"trian": {"max_steps": 1}})
    assert "'trian'" in msg and "did you mean 'train'" in msg


# ---------------------------------------------------------------- wrong types


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.max_steps=ten", "train.max_steps"),
        ("train.max_steps=true", "train.max_steps"),
        ("train.max_steps=1.5", "train.max_steps"),
        ("train.per_device_train_batch_size=true", "train.per_device_train_batch_size"),
        ("train.learning_rate=fast", "train.learning_rate"),
        ("train.learning_rate=true", "train.learning_rate"),
        ("train.packing=1", "train.packing"),
        ("train.packing=yes please", "train.packing"),
        ("model.max_seq_length=2048.0", "model.max_seq_length"),
        ("model.backend=torch", "model.backend"),
        ("finetune=adapter", "finetune"),
        ("run_name=[a, b]", "run_name"),
        ("export.save_methods={a: 1}", "export.save_methods"),
        ("data.columns=[a]", "data.columns"),
        ("data.columns={dialogue: [a]}", "data.columns.dialogue"),
        ("lora.target_modules=[q_proj, 3]", "lora.target_modules[1]"),
    ],
)
def test_wrong_type_is_refused_naming_the_key(override, fragment):
    msg = config_error(load_config, overrides=[override])
    assert fragment in msg
    assert "expected" in msg


def test_wrong_type_message_shows_the_value():
    msg = config_error(load_config, overrides=["train.max_steps=ten"])
    assert "'ten'" in msg and "integer" in msg


def test_quoted_number_in_a_file_is_not_guessed(tmp_path):
    path = write(tmp_path, "p.yaml", 'train:\n  max_steps: "5"\n')
    msg = config_error(load_config, path)
    assert str(path) in msg and "train.max_steps" in msg and "'5'" in msg and "integer" in msg


@pytest.mark.parametrize(
    "override, choices",
    [
        ("data.task=summarise", ("auto", *tasks.names())),
        ("data.template=llama", TEMPLATES),
        ("model.backend=torch", BACKENDS),
        ("export.save_methods=[lora, gguff]", SAVE_METHODS),
        ("finetune=adapter", ("lora", "qlora", "full")),
    ],
)
def test_closed_choices_are_listed_in_the_error(override, choices):
    msg = config_error(load_config, overrides=[override])
    assert override.split("=")[0] in msg and "one of" in msg
    assert all(f"'{c}'" in msg for c in choices), msg


def test_closed_choice_names_stay_importable():
    assert "gsm8k" in tasks.names() and "text" in tasks.names()
    assert TEMPLATES == ("auto", "chat", "qa", "alpaca", "plain")
    assert SAVE_METHODS == ("lora", "merged_16bit", "merged_4bit_forced", "gguf", "lora_gguf")
    assert BACKENDS == ("auto", "unsloth", "transformers")
    assert "hf_token" in SECRET_KEYS


def test_sections_built_in_code_are_checked_too():
    """The schema is the sections' own: a section built or replaced in code is checked like a params file."""
    assert DataConfig(source="sample:chat", task="chat").task == "chat"
    with pytest.raises(ValueError):
        DataConfig(task="summarise")
    with pytest.raises(ValueError):
        dataclasses.replace(load_config().train, max_steps="5")
    cfg = load_config()
    assert copy.deepcopy(cfg) == cfg and dataclasses.replace(cfg, run_name="x").run_name == "x"


@pytest.mark.parametrize("section", ["train", "model", "data", "lora", "eval", "export"])
def test_list_instead_of_a_section_mapping(section):
    msg = config_error(load_config, params={section: [1, 2]})
    assert section in msg and "mapping" in msg


def test_section_that_is_a_string_in_a_file(tmp_path):
    path = write(tmp_path, "p.yaml", "train: fast\n")
    msg = config_error(load_config, path)
    assert str(path) in msg and "train" in msg and "mapping" in msg


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.max_steps=-1", "train.max_steps"),
        ("train.max_steps=0", "train.max_steps"),
        ("train.per_device_train_batch_size=-1", "train.per_device_train_batch_size"),
        ("train.gradient_accumulation_steps=0", "train.gradient_accumulation_steps"),
        ("train.logging_steps=-1", "train.logging_steps"),
        ("train.save_steps=-1", "train.save_steps"),
        ("train.save_total_limit=0", "train.save_total_limit"),
        ("train.warmup_steps=-1", "train.warmup_steps"),
        ("train.num_train_epochs=-1", "train.num_train_epochs"),
        ("train.learning_rate=-0.1", "train.learning_rate"),
        ("train.learning_rate=0", "train.learning_rate"),
        ("model.max_seq_length=-1", "model.max_seq_length"),
        ("data.block_size=-1", "data.block_size"),
        ("data.max_samples=-1", "data.max_samples"),
        ("data.max_samples=0", "data.max_samples"),
        ("data.test_size=-1", "data.test_size"),
        ("data.test_size=2.5", "data.test_size"),
        ("eval.max_new_tokens=-1", "eval.max_new_tokens"),
        ("eval.batch_size=0", "eval.batch_size"),
        ("eval.num_examples=-1", "eval.num_examples"),
        ("lora.alpha=-1", "lora.alpha"),
        ("lora.r=-1", "lora.r"),
        ("lora.dropout=1.0", "lora.dropout"),
        ("lora.target_modules=[]", "lora.target_modules"),
    ],
)
def test_negative_or_zero_counts_are_refused(override, fragment):
    msg = config_error(load_config, overrides=[override])
    assert fragment in msg


def test_negative_dataset_num_proc_is_refused():
    msg = config_error(load_config, overrides=["train.dataset_num_proc=-1"])
    assert "train.dataset_num_proc" in msg


def test_zero_test_size_and_count_test_size_are_valid():
    assert load_config(overrides=["data.test_size=0"]).data.test_size == 0
    assert load_config(overrides=["data.test_size=5"]).data.test_size == 5


# ---------------------------------------------------------------- params files that cannot be read


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "bad.yaml", "run_name: x\ntrain:\n  max_steps: 5\n  seed: [1, 2\nmodel: {}\n")
    msg = config_error(load_config, path)
    assert str(path) in msg
    m = re.search(r"line (\d+)", msg)
    assert m and 4 <= int(m.group(1)) <= 6, msg
    assert "YAML" in msg


def test_yaml_bad_indentation_names_line(tmp_path):
    path = write(tmp_path, "bad.yaml", "train:\n  max_steps: 5\n   seed: 3\n")
    msg = config_error(load_config, path)
    assert str(path) in msg and "line 3" in msg


def test_yaml_that_is_a_list(tmp_path):
    path = write(tmp_path, "list.yaml", "- train\n- model\n")
    msg = config_error(load_config, path)
    assert str(path) in msg and "mapping" in msg and "list" in msg


def test_yaml_that_is_a_scalar(tmp_path):
    path = write(tmp_path, "s.yaml", "just words\n")
    msg = config_error(load_config, path)
    assert str(path) in msg and "mapping" in msg


def test_empty_yaml_is_refused_not_trained_as_the_defaults(tmp_path):
    """An empty file (or comments only) would train the defaults into runs/demo: it is almost always a mistake."""
    for text in ("", "# nothing here\n", "\n\n# a\n# b\n"):
        path = write(tmp_path, "empty.yaml", text)
        msg = config_error(load_config, path)
        assert str(path) in msg and "the params file is empty" in msg and "params/" in msg
    assert load_config(None).to_dict() == RunConfig().to_dict()  # no file at all (a notebook's defaults) still works


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path):
    path = write(tmp_path, "dup.yaml", "train:\n  max_steps: 5\n  seed: 1\n  max_steps: 50\nmodel:\n  name: x\n")
    msg = config_error(load_config, path)
    assert msg == f"{path}: line 4: duplicate key 'max_steps' (also on line 2); keep one of them"
    path = write(tmp_path, "dup2.yaml", "train: {seed: 1}\ntrain: {seed: 2}\n")
    assert "line 2: duplicate key 'train' (also on line 1)" in config_error(load_config, path)


def test_missing_params_file(tmp_path):
    path = tmp_path / "nope.yaml"
    msg = config_error(load_config, path)
    assert str(path) in msg and "not found" in msg
    msg = config_error(load_config, tmp_path)  # a folder is not a params file
    assert "not found" in msg


def test_non_utf8_params_file(tmp_path):
    path = write(tmp_path, "latin.yaml", "run_name: caf\xe9\n".encode("latin-1"))
    msg = config_error(load_config, path)
    assert str(path) in msg and "UTF-8" in msg


def test_utf8_params_file_with_hindi(tmp_path):
    path = write(tmp_path, "hi.yaml", "data:\n  columns:\n    dialogue: संवाद\n    summary: सारांश\n")
    assert load_config(path).data.columns == {"dialogue": "संवाद", "summary": "सारांश"}


# ---------------------------------------------------------------- impossible combinations


def test_lora_rank_zero():
    msg = config_error(load_config, overrides=["lora.r=0"])
    assert "lora.r" in msg and "finetune: full" in msg


def test_no_steps_and_no_epochs():
    msg = config_error(load_config, overrides=["train.max_steps=null", "train.num_train_epochs=null"])
    assert "train.max_steps" in msg and "train.num_train_epochs" in msg


def test_epochs_alone_are_enough():
    cfg = load_config(overrides=["train.max_steps=null", "train.num_train_epochs=1"])
    assert cfg.train.max_steps is None and cfg.train.num_train_epochs == 1.0


def test_qlora_needs_4bit():
    msg = config_error(load_config, overrides=["finetune=qlora", "model.load_in_4bit=false"])
    assert "qlora" in msg and "load_in_4bit" in msg
    assert load_config(overrides=["finetune=qlora", "model.load_in_4bit=true"]).finetune == "qlora"


def test_full_cannot_be_4bit():
    msg = config_error(
        load_config, overrides=["finetune=full", "model.load_in_4bit=true", "export.save_methods=[merged_16bit]"]
    )
    assert "full" in msg and "load_in_4bit" in msg


def test_full_with_lora_save_method():
    msg = config_error(load_config, overrides=["finetune=full", "model.load_in_4bit=false"])
    assert "save_methods" in msg and "lora" in msg


def test_full_ignores_lora_rank():
    cfg = load_config(
        overrides=["finetune=full", "model.load_in_4bit=false", "export.save_methods=[merged_16bit]", "lora.r=0"]
    )
    assert cfg.finetune == "full"


def test_packing_text_block_larger_than_max_seq_length():
    over = ["train.packing=true", "data.task=text", "data.block_size=512", "model.max_seq_length=256"]
    msg = config_error(load_config, overrides=over)
    assert "block_size" in msg and "max_seq_length" in msg
    # Each of the three conditions alone is fine.
    assert load_config(overrides=over[1:]).data.block_size == 512  # no packing
    assert load_config(overrides=[over[0], "data.task=chat", *over[2:]]).train.packing  # not text
    assert load_config(overrides=[*over[:3], "model.max_seq_length=512"]).data.block_size == 512


@pytest.mark.parametrize("shots", [2, -1])
def test_num_shots_only_0_or_1(shots):
    msg = config_error(load_config, overrides=[f"eval.num_shots={shots}"])
    assert "eval.num_shots" in msg


@pytest.mark.parametrize("repo", ["myrepo", "a/b/c", "/repo", "user/", ""])
def test_push_to_hub_needs_user_slash_repo(repo):
    msg = config_error(load_config, overrides=[("export.push_to_hub", repo)])
    assert "push_to_hub" in msg and "user/repo" in msg


def test_push_to_hub_valid():
    assert load_config(overrides=["export.push_to_hub=me/model"]).export.push_to_hub == "me/model"


def test_unknown_save_method():
    msg = config_error(load_config, overrides=["export.save_methods=[lora, gguff]"])
    assert "gguff" in msg and "export.save_methods" in msg


@pytest.mark.parametrize("override", ["data.task=summarise", "data.template=llama"])
def test_unknown_task_or_template(override):
    msg = config_error(load_config, overrides=[override])
    assert override.split("=")[1] in msg


@pytest.mark.parametrize("name", ["a/b", ".", "..", " "])
def test_run_name_must_be_a_plain_folder_name(name):
    msg = config_error(load_config, overrides=[("run_name", name)])
    assert "run_name" in msg


def test_validation_error_names_the_file(tmp_path):
    path = write(tmp_path, "p.yaml", "lora:\n  r: 0\n")
    msg = config_error(load_config, path)
    assert msg.startswith(f"{path}:") and "lora.r" in msg


# ---------------------------------------------------------------- secrets

SECRET = "hf_SuperSecretValue123"


@pytest.mark.parametrize("key", ["token", "hf_token", "hub_token", "HF_TOKEN", "api_key", "wandb_api_key"])
def test_secret_in_file_is_refused_without_echoing_it(tmp_path, key):
    path = write(tmp_path, "p.yaml", f"run_name: x\n{key}: {SECRET}\n")
    msg = config_error(load_config, path)
    assert "HF_TOKEN" in msg
    assert SECRET not in msg


@pytest.mark.parametrize(
    "key", ["token", "hf_token", "hub_token", "export.hub_token", "export.token", "model.hf_token"]
)
def test_secret_in_override_is_refused_without_echoing_it(key):
    msg = config_error(load_config, overrides=[f"{key}={SECRET}"])
    assert "HF_TOKEN" in msg and SECRET not in msg
    msg = config_error(load_config, overrides=[(key, SECRET)])
    assert "HF_TOKEN" in msg and SECRET not in msg


def test_secret_in_section_of_a_file(tmp_path):
    path = write(tmp_path, "p.yaml", f"export:\n  push_to_hub: me/model\n  hub_token: {SECRET}\n")
    msg = config_error(load_config, path)
    assert "HF_TOKEN" in msg and SECRET not in msg and "export.hub_token" in msg


def test_secret_in_papermill_params():
    msg = config_error(load_config, params={"export": {"token": SECRET}})
    assert "HF_TOKEN" in msg and SECRET not in msg
    msg = config_error(load_config, params={"hf_token": SECRET})
    assert "HF_TOKEN" in msg and SECRET not in msg


def test_secret_refused_even_when_null(tmp_path):
    path = write(tmp_path, "p.yaml", "hf_token: null\n")
    assert "HF_TOKEN" in config_error(load_config, path)


# ---------------------------------------------------------------- lora: null


def test_lora_null_means_full(tmp_path):
    path = write(
        tmp_path,
        "full.yaml",
        "lora: null\nmodel:\n  load_in_4bit: false\nexport:\n  save_methods: [merged_16bit]\n",
    )
    cfg = load_config(path)
    assert cfg.finetune == "full"


def test_lora_null_override_means_full():
    cfg = load_config(overrides=["lora=null", "model.load_in_4bit=false", "export.save_methods=[merged_16bit]"])
    assert cfg.finetune == "full"


def test_lora_null_with_4bit_is_refused_as_full():
    msg = config_error(load_config, overrides=["lora=null", "export.save_methods=[merged_16bit]"])
    assert "full" in msg and "load_in_4bit" in msg


def test_empty_lora_section_keeps_lora(tmp_path):
    path = write(tmp_path, "p.yaml", "lora: {}\n")
    cfg = load_config(path)
    assert cfg.finetune == "lora" and cfg.lora.r == 16


# ---------------------------------------------------------------- save / load round trip


def test_save_load_round_trip(tmp_path):
    cfg = load_config(
        overrides=[
            "run_name=rt",
            "train.max_steps=null",
            "train.num_train_epochs=1.5",
            "train.learning_rate=0.00001",
            "lora.target_modules=[q_proj, v_proj]",
            "lora.use_gradient_checkpointing=false",
            "data.columns={dialogue: संवाद, summary: सारांश}",
            "data.system_prompt='Be brief: yes'",
            "data.test_size=3",
            "export.push_to_hub=me/m",
            "export.save_methods=[lora, gguf]",
            "train.resume=never",
            "train.report_to=[tensorboard]",
        ]
    )
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    again = load_config(path)
    assert again.to_dict() == cfg.to_dict()
    assert again.data.columns == {"dialogue": "संवाद", "summary": "सारांश"}
    assert "संवाद" in path.read_text(encoding="utf-8")  # written as UTF-8 text, not escapes


@pytest.mark.parametrize(
    "text", ["line one\nline two", "tab\there", "a\rb", "quote ' and \"", "a\u2028b", ": x", "- y", "007"]
)
def test_round_trip_of_awkward_text(tmp_path, text):
    cfg = load_config(overrides=[("data.system_prompt", text), ("data.instruction", text)])
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again.data.system_prompt == text and again.data.instruction == text


def test_round_trip_of_next_line_character(tmp_path):
    cfg = load_config(overrides=[("data.system_prompt", "a\x85b")])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml").data.system_prompt == "a\x85b"


@pytest.mark.parametrize("path", PARAMS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_params_file_round_trips(tmp_path, path):
    cfg = load_config(path)
    out = tmp_path / "config.yaml"
    save_config(cfg, out)
    assert load_config(out).to_dict() == cfg.to_dict()


def test_license_defaults_to_the_base_models():
    assert load_config().export.license is None  # None: taken from the base model's catalogue entry or card
    assert load_config(overrides=["export.license=gemma"]).export.license == "gemma"
    assert "license" in config_error(load_config, overrides=["export.license=[a]"])


def test_run_dir():
    cfg = load_config(overrides=["output_dir=out", "run_name=r1"])
    assert cfg.run_dir == Path("out") / "r1"


# ---------------------------------------------------------------- notebook_config


def test_notebook_defaults_are_library_defaults():
    ns, defined = notebook_ns()
    assert notebook_config(ns, defined).to_dict() == RunConfig().to_dict()


def test_notebook_unknown_injected_parameter():
    ns, defined = notebook_ns(max_stepz=5)
    msg = config_error(notebook_config, ns, defined)
    assert "max_stepz" in msg and "unknown notebook parameter" in msg


def test_notebook_unknown_parameters_are_all_named():
    ns, defined = notebook_ns(foo=1, bar=2)
    msg = config_error(notebook_config, ns, defined)
    assert "foo" in msg and "bar" in msg


def test_notebook_ignores_a_sweep_section_from_papermill_f(tmp_path):
    """papermill -f params/cpu/sweep-*.yaml injects `sweep`: the notebook runs the recipe as one variant."""
    ns, defined = notebook_ns(sweep={"grid": {"train.learning_rate": [1e-3, 2e-3]}}, train={"max_steps": 3})
    assert notebook_config(ns, defined).train.max_steps == 3


def test_notebook_private_names_are_ignored():
    ns, defined = notebook_ns(_given=1)
    assert notebook_config(ns, defined).run_name == "demo"


def test_notebook_shortcuts():
    ns, defined = notebook_ns(dataset="sample:chat", max_steps=7, model_name="some/model")
    cfg = notebook_config(ns, defined)
    assert cfg.data.source == "sample:chat"
    assert cfg.train.max_steps == 7
    assert cfg.model.name == "some/model"


def test_notebook_shortcut_value_is_not_yaml_parsed():
    ns, defined = notebook_ns(dataset="data/007.csv")
    assert notebook_config(ns, defined).data.source == "data/007.csv"


def test_notebook_params_file_and_overrides(tmp_path):
    path = write(tmp_path, "p.yaml", "run_name: nb\ntrain:\n  max_steps: 9\n  seed: 5\n")
    ns, defined = notebook_ns(params_file=str(path), overrides=["train.seed=6"])
    cfg = notebook_config(ns, defined)
    assert (cfg.run_name, cfg.train.max_steps, cfg.train.seed) == ("nb", 9, 6)
    ns, defined = notebook_ns(params_file=str(path), overrides="train.seed=7")  # one string is a list of one
    assert notebook_config(ns, defined).train.seed == 7


def test_notebook_sections_ignore_params_file(tmp_path):
    path = write(tmp_path, "p.yaml", "run_name: fromfile\ntrain:\n  seed: 5\n")
    ns, defined = notebook_ns(params_file=str(path), train={"max_steps": 3})
    cfg = notebook_config(ns, defined)
    assert cfg.train.max_steps == 3
    assert cfg.run_name == "demo"  # not the file's
    assert cfg.train.seed == 3407  # not the file's


def test_notebook_sections_with_shortcut_on_top():
    ns, defined = notebook_ns(run_name="nbrun", data={"source": "sample:qa-json"}, max_steps=2)
    cfg = notebook_config(ns, defined)
    assert (cfg.run_name, cfg.data.source, cfg.train.max_steps) == ("nbrun", "sample:qa-json", 2)


def test_notebook_lora_none_is_full():
    ns, defined = notebook_ns(lora=None, model={"load_in_4bit": False}, export={"save_methods": ["merged_16bit"]})
    assert notebook_config(ns, defined).finetune == "full"


def test_notebook_bad_section_value():
    ns, defined = notebook_ns(train={"max_steps": "ten"})
    msg = config_error(notebook_config, ns, defined)
    assert "train.max_steps" in msg


def test_notebook_missing_params_file(tmp_path):
    ns, defined = notebook_ns(params_file=str(tmp_path / "missing.yaml"))
    assert "not found" in config_error(notebook_config, ns, defined)


def test_sections_built_in_code_refuse_unknown_keys_too():
    """The schema itself forbids extra keys (extra="forbid"), not only the loader: a notebook's DataConfig(sorce=...)"""
    from pydantic import ValidationError

    from unsloth_sft.config import DataConfig, TrainConfig

    with pytest.raises(ValidationError, match="sorce"):
        DataConfig(sorce="x")
    with pytest.raises(ValidationError, match="max_steps"):
        TrainConfig(max_steps="5")  # strict: text is not a number
