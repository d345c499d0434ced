# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Fine-tune Gemma-2 with Unsloth: training
#
# A LoRA fine-tune of Gemma-2 on Hindi conversation summarization (or any recipe in `params/`), run the same
# way in Colab and headless:
#
# ```
# papermill notebooks/train.ipynb runs/demo/train.ipynb -f params/demo-cpu.yaml
# papermill notebooks/train.ipynb runs/demo/train.ipynb -f params/demo-cpu.yaml -p dataset my.csv -p max_steps 20
# ```
#
# Every cell calls the `unsloth_sft` library; the recipe (a params YAML) says what to train.

# %% [markdown]
# ### Install (Colab only)
# In Colab this cell finds this project (a checkout already in the runtime, e.g. `/content/unsloth-sft`, or a
# clone of `REPO_URL`), installs it with its `gpu` extra (unsloth 2026.10.9 on Colab's own CUDA torch) and makes
# it importable at once; anywhere else it does nothing (install with the README's command). Torch as Colab ships
# it: on 2.11 with a GPU the library sets `UNSLOTH_BNB_NF4_LINEAR=0` before unsloth loads (a compile crash seen on
# 2.11, the fix not yet verified on a GPU); other versions run as they are (README, "Colab and GPUs").
# `DRIVE_DIR` mounts your Google Drive and puts the run folders there, so they outlive the runtime (docs/colab.md).

# %%
import os
import subprocess
import sys
from pathlib import Path

REPO_URL = "https://github.com/<you>/unsloth-sft"  # git URL of your copy of this repository (Colab only)
CHECKOUT = "/content/unsloth-sft"  # where the project is cloned to, or already is, in the Colab runtime
DRIVE_DIR = ""  # a folder in your Google Drive for the run folders, e.g. "MyDrive/unsloth-sft/runs"; "" = runtime disk

_DRIVE = "/content/drive"  # where Colab mounts Google Drive
_DRIVE_RUNS = None  # output_dir on Drive, unless output_dir is given as a parameter (the config cell)
if "google.colab" in sys.modules:
    _here = [p for p in (Path.cwd(), *Path.cwd().parents) if (p / "src" / "unsloth_sft").is_dir()]
    _root = _here[0] if _here else Path(CHECKOUT)
    if not (_root / "src" / "unsloth_sft").is_dir():
        if "<you>" in REPO_URL:
            raise RuntimeError(f"no unsloth-sft checkout at {_root}: set REPO_URL in this cell to your repository")
        if subprocess.run(["git", "clone", "--depth", "1", REPO_URL, str(_root)]).returncode != 0:
            raise RuntimeError(f"git could not clone {REPO_URL!r}: check REPO_URL in this cell")
    if subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", f"{_root}[gpu]"]).returncode != 0:
        raise RuntimeError(f"pip could not install {_root}[gpu]: its output above says why")
    sys.path.insert(0, str(_root / "src"))  # importable now, without restarting the runtime
    os.chdir(_root)  # recipe paths (params/...) resolve as in the README
    if DRIVE_DIR:
        from google.colab import drive

        drive.mount(_DRIVE)  # asks for access once per runtime
        _DRIVE_RUNS = str(Path(_DRIVE) / DRIVE_DIR.strip().removeprefix(_DRIVE).strip("/"))
        Path(_DRIVE_RUNS).mkdir(parents=True, exist_ok=True)
        print(f"run folders go to {_DRIVE_RUNS} (Google Drive); its lock is a lock file: docs/colab.md")

# %% [markdown]
# ### Parameters
# papermill replaces these: `-f params/X.yaml` sets the sections, `-p dataset ...` / `-p max_steps N` are
# shortcuts, `-p overrides '["train.learning_rate=1e-4"]'` sets any key. Interactively, set `params_file` to a recipe.

# %% tags=["parameters"]
params_file = None  # a recipe path, or None for the library defaults (tiny Gemma-2, Hindi sample); unused with -f
overrides = []  # list of dotted overrides, as in the markdown above
dataset = None  # shortcut for data.source: sample:NAME, a local file, or a Hub dataset id
max_steps = None  # shortcut for train.max_steps
model_name = None  # shortcut for model.name
run_eval = True  # after saving: base vs tuned on the test split (eval/), as `unsloth-sft eval --run RUN_DIR` does
run_name = None
output_dir = None
finetune = None
overwrite = None
model = {}
lora = {}
data = {}
train = {}
eval = {}  # noqa: A001  (the recipe's section name)
export = {}
_DEFINED = set(dir())

# %% [markdown]
# ### Config
# One typed config; unknown keys, wrong types and impossible combinations stop here, and so do a finished run
# folder and bad data (read and shaped, without a tokenizer): before any model loads. `data.task: auto` is
# resolved from the columns; the run saves the resolved config.

# %%
_given = {k: v for k, v in globals().items() if not k.startswith("_")}  # before any import adds names
if _given.get("output_dir") is None and globals().get("_DRIVE_RUNS"):  # DRIVE_DIR, set in the Colab cell
    _given["output_dir"] = _DRIVE_RUNS

import yaml
from IPython.display import Image, Markdown, display

from unsloth_sft import (
    evaluate_run,
    mark_trained,
    notebook_config,
    notebook_recipe,
    pipeline,
    run_summary,
    side_by_side,
)

run = pipeline.begin(notebook_config(_given, _DEFINED), recipe=notebook_recipe(_given))
cfg = run.cfg
print(yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True))

# %% [markdown]
# ### Unsloth: load the model
# `backend: auto` uses unsloth's `FastLanguageModel.from_pretrained` where it imports (a GPU, or its CPU
# backend), else transformers + bitsandbytes. `model.load_in_4bit` loads NF4 weights (QLoRA);
# `model.max_seq_length` bounds every example.

# %%
print(pipeline.load_base(run))

# %% [markdown]
# ### LoRA adapters
# `FastLanguageModel.get_peft_model` (or peft's): rank `lora.r` on `lora.target_modules`, with gradient
# checkpointing as `lora.use_gradient_checkpointing` says (auto: unsloth's on a GPU, none on a CPU); only the
# adapters train (none with `finetune: full`, which trains every weight).

# %%
print(pipeline.add_lora(run))
print(pipeline.parameter_groups(run))

# %% [markdown]
# ### Data prep: what the model is trained on
# The examples tokenized with the model's tokenizer, in the task's template. One training example as the model
# sees it: the text inside `[[ ]]` is the only part the loss covers (the summary and its end-of-turn token);
# the prompt tokens are labelled -100. The run folder gets the resolved config here, before training.

# %%
print(pipeline.load_data(run))
example = run.data.train[0]
print(mark_trained(run.loaded.tokenizer, example["input_ids"], example["labels"]))

# %% [markdown]
# ### Before training: three test dialogues
# Greedy generation with the recipe's settings, so the outputs after training compare one to one.

# %%
before = pipeline.quick_generation(run)

# %% [markdown]
# ### Train
# TRL's `SFTTrainer`; GPU memory (or CPU peak RSS) is reported before and after, as in Unsloth's notebooks.

# %%
metrics = pipeline.fit(run)

# %% [markdown]
# ### Saving
# The LoRA adapter, merged 16-bit weights (the base reloaded un-quantised, then merged), model cards, the
# loss curve, and `metrics.json` last. `export_check.json` proves the merged model equals the adapter (and,
# with `gguf` in `export.save_methods`, that each llama.cpp GGUF equals the merged model). With
# `export.push_to_hub` set, the result goes to the Hub (token from `HF_TOKEN` only).

# %%
metrics = pipeline.finish(run)
display(Image(filename=str(run.folder.loss_plot)))

# %% [markdown]
# ### Inference: the same three dialogues after training

# %%
after = pipeline.quick_generation(run)
display(Markdown(side_by_side(before, after)))

# %% [markdown]
# ### Evaluate: base vs tuned
# The saved adapter is scored on the test split with the same prompts and greedy settings as the base model
# (the adapter switched off): eval loss, and the task's metrics (ROUGE and chrF++ for summaries). `eval/`
# gets the predictions, the metrics and a report. The training model is released first to keep memory low.

# %%
if run_eval:
    pipeline.release(run)
    print(evaluate_run(cfg, run.folder)["summary"])

# %% [markdown]
# ### Summary
# What the run did, where its adapter, merged model and loss curve are, and the commands that come next.

# %%
print(run_summary(run.folder))
