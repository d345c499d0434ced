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

# %%

# %% [markdown]
# # Fine-tune Gemma-2 with Unsloth: evaluation, base against tuned
#
# Scores the base model and the tuned one (adapter or merged) on the recipe's test split with the same
# prompts and generation settings, and the metric that fits the task: ROUGE-1/2/L (with a Unicode-aware
# tokenizer, so Hindi counts), chrF++ and BLEU for text, exact match of the final number for GSM8K,
# perplexity for raw text, and eval loss for all.
#
# ```
# papermill notebooks/evaluate.ipynb runs/demo/evaluate.ipynb -f params/demo-cpu.yaml
# ```

# %% tags=["parameters"]
params_file = None  # the recipe that trained the run; unused with papermill -f
overrides = []  # list of dotted overrides
dataset = None  # shortcut for data.source
max_steps = None  # unused here; accepted so the training parameters can be passed unchanged
model_name = None  # shortcut for model.name (the base)
run_dir = None  # the run folder to evaluate; None for output_dir/run_name
examples = 3  # how many examples to show side by side
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

# %%
_given = {k: v for k, v in globals().items() if not k.startswith("_")}  # before any import adds names

from IPython.display import Image, Markdown, display

from unsloth_sft import evaluate_run, notebook_run

run, cfg = notebook_run(_given, _DEFINED, run_dir)  # the run's own config.yaml; a recipe given must agree with it
print(f"evaluating {run} on {cfg.data.source}")

# %% [markdown]
# ### Base and tuned on the test split
# The adapter is switched off for the base model's pass, so both passes share one set of weights in memory.

# %%
result = evaluate_run(cfg, run)

# %% [markdown]
# ### Metrics, base -> tuned

# %%
display(Markdown(result["summary"]))
display(Image(filename=str(run.eval_dir() / "metrics.png")))

# %% [markdown]
# ### Examples side by side

# %%
for row in result["examples"][:examples]:
    display(Markdown(f"**Reference:** {row['reference']}\n\n**Base:** {row['base']}\n\n**Tuned:** {row['tuned']}"))
