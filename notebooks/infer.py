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
# # Fine-tune Gemma-2 with Unsloth: inference
#
# One prompt through a trained model, streamed token by token. The prompt is rendered with the recipe's
# template, the same function that formatted the training data.
#
# ```
# papermill notebooks/infer.ipynb runs/demo/infer.ipynb -f params/demo-cpu.yaml -p prompt "..."
# ```
# For many prompts at once: `unsloth-sft infer --run runs/demo --input in.jsonl --output out.jsonl`.

# %% tags=["parameters"]
params_file = None  # the recipe that trained the run; unused with papermill -f
overrides = []  # list of dotted overrides
dataset = None  # shortcut for data.source
max_steps = None  # unused here; accepted so the training parameters can be passed unchanged
model_name = None  # shortcut for model.name (the base)
run_dir = None  # the run folder; None for output_dir/run_name
prompt = None  # the user's text (summarization: a dialogue; raw text: the start to continue); None: a test example
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
# ### Config and model
# The merged 16-bit model when the run has one, else the base with the LoRA adapter on top.

# %%
_given = {k: v for k, v in globals().items() if not k.startswith("_")}  # before any import adds names

from unsloth_sft import load_run_model, notebook_run, prompt_for, run_task

run, cfg = notebook_run(_given, _DEFINED, run_dir)  # the run's own config.yaml: its task and template
lm, tokenizer = load_run_model(run)

# %% [markdown]
# ### The prompt, as the model sees it

# %%
text = prompt_for(cfg, tokenizer, prompt, run_task(run, cfg))
print(text)

# %% [markdown]
# ### Streaming generation

# %%
from transformers import TextStreamer

from unsloth_sft import generate

streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
output = generate(lm, tokenizer, [text], cfg.eval, progress=False, streamer=streamer)[0]
