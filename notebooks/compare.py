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
# # Compare the runs of a sweep: leaderboard and plots
#
# Reads a sweep folder (`unsloth-sft sweep` made it) or any folder of runs, and shows what
# `unsloth-sft compare` writes: the leaderboard (only the config keys that differ, eval metrics base -> tuned,
# speed, memory, status), the training loss curves overlaid, and the metric against each swept key.
#
# ```
# papermill notebooks/compare.ipynb runs/demo-sweep/compare.ipynb -p sweep_dir runs/demo-sweep
# ```

# %% [markdown]
# ### Parameters
# `sweep_dir` is the folder to compare; `metric` sorts the leaderboard (None: the sweep's own metric, else
# eval_loss); `direction` is auto (lower is better for losses and perplexity), minimize or maximize.

# %% tags=["parameters"]
sweep_dir = "runs/demo-sweep"  # a sweep folder, or a folder of run folders
metric = None  # None: the metric the sweep ran with (sweep.yaml), else eval_loss
direction = "auto"  # auto | minimize | maximize

# %% [markdown]
# ### Leaderboard
# One row per run, best first; each run name links to its folder. The same table is in `leaderboard.md` and,
# one column per number, in `leaderboard.csv`.

# %%
from IPython.display import Image, Markdown, display

from unsloth_sft import compare

board = compare([sweep_dir], metric=metric, direction=direction)
display(Markdown(board.markdown))
best = next((r for r in board.rows if r.status == "finished"), None)
print(f"best by {board.metric}: {best.name if best else 'none finished yet'}")

# %% [markdown]
# ### Loss curves
# Training loss of every run on one chart; a cross marks each run's eval loss (tuned) at its last step.

# %%
if "loss_curves.png" in board.files:
    display(Image(filename=str(board.files["loss_curves.png"])))

# %% [markdown]
# ### The metric against each swept key

# %%
if "metric_vs_keys.png" in board.files:
    display(Image(filename=str(board.files["metric_vs_keys.png"])))
