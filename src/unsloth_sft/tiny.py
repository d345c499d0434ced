"""An offline tiny Gemma-2: random weights, a tokenizer trained on the package's samples, Gemma's chat template."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

TINY_NAME = "tiny-gemma2"
PRETRAIN_STEPS = 300  # a short causal-LM pre-training on the samples, so the base is a language model (not noise)
VOCAB_SIZE = 3000  # byte-level BPE: enough merges that a Hindi word is ~2-4 tokens, not ~12 bytes
SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]  # Gemma's ids 0..3
# Gemma-2's official template: no system role, "model" for the assistant, content trimmed.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
# Shape of the tiny model: ~200k parameters, 2 layers; big enough to learn the sample's format in 60 steps.
TINY_SHAPE = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    intermediate_size=128,
    max_position_embeddings=4096,
    sliding_window=4096,
)


def sample_corpus() -> list[str]:
    """Every line of text shipped in the package's samples, in a fixed order (the tokenizer's training text)."""
    root = resources.files("unsloth_sft") / "samples"
    lines: list[str] = []
    for path in sorted(_walk(root), key=lambda p: str(p)):
        if path.name.endswith((".jsonl", ".json", ".txt", ".csv")):
            lines.extend(line for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return lines


def _walk(node):
    for child in node.iterdir():
        if child.is_dir():
            yield from _walk(child)
        else:
            yield child


def cache_root() -> Path:
    return Path(os.environ.get("UNSLOTH_SFT_CACHE") or Path.home() / ".cache" / "unsloth_sft")  # empty = unset


def tiny_model_path() -> Path:
    """Folder of the tiny model for the current samples, built on first use (once; later calls reuse it)."""
    corpus = sample_corpus()
    recipe = repr(TINY_SHAPE) + str(VOCAB_SIZE) + str(PRETRAIN_STEPS)
    key = hashlib.sha256(("\n".join(corpus) + recipe).encode()).hexdigest()[:12]
    path = cache_root() / f"{TINY_NAME}-{key}"
    if not (path / "config.json").is_file():
        _build_in_child(path)
    return path


def _build_in_child(path: Path) -> None:
    """Build in a child process, so its transformers import comes before no unsloth import of ours, and its
    training logs and progress bars stay out of this process's output (a notebook shows one line)."""
    import subprocess
    import sys

    print(f"building the tiny model once, into {path} (~30 s)", flush=True)
    done = subprocess.run([sys.executable, "-m", "unsloth_sft.tiny", str(path)], capture_output=True, text=True)
    if done.returncode != 0 or not (path / "config.json").is_file():
        raise RuntimeError(f"building the tiny model failed (exit {done.returncode}):\n{done.stderr[-3000:]}")


def build_tiny_model(path: Path, corpus: list[str] | None = None, seed: int = 0) -> Path:
    """Build the tiny Gemma-2 into `path` (atomically: a half-built folder never looks complete)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import Gemma2Config, Gemma2ForCausalLM, GenerationConfig, PreTrainedTokenizerFast

    corpus = sample_corpus() if corpus is None else corpus
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    bos_id = tok.token_to_id("<bos>")
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", bos_id)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<start_of_turn>", "<end_of_turn>"],
        chat_template=GEMMA_CHAT_TEMPLATE,
        model_max_length=TINY_SHAPE["max_position_embeddings"],
        padding_side="left",
    )
    end_of_turn = tok.token_to_id("<end_of_turn>")
    config = Gemma2Config(
        vocab_size=tok.get_vocab_size(),
        pad_token_id=tok.token_to_id("<pad>"),
        bos_token_id=bos_id,
        eos_token_id=[tok.token_to_id("<eos>"), end_of_turn],
        tie_word_embeddings=True,
        attn_implementation="eager",  # Gemma-2's soft-capping is not in SDPA
        torch_dtype="float32",
        **TINY_SHAPE,
    )
    torch.manual_seed(seed)
    model = Gemma2ForCausalLM(config)
    pretrain(model, tokenizer, corpus, seed)
    model.generation_config = GenerationConfig(
        bos_token_id=bos_id, eos_token_id=[tok.token_to_id("<eos>"), end_of_turn], pad_token_id=config.pad_token_id
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if path.exists():  # another process built it meanwhile: keep theirs
            shutil.rmtree(tmp)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def pretrain(model, tokenizer, corpus: list[str], seed: int, steps: int = PRETRAIN_STEPS, block: int = 128) -> None:
    """A few hundred seeded steps of full causal-LM training on the corpus (transformers' Trainer, on CPU)."""
    import tempfile

    import datasets
    from transformers import Trainer, TrainingArguments, default_data_collator

    ids: list[int] = []
    for line in corpus:
        ids.extend(tokenizer(line)["input_ids"] + [tokenizer.eos_token_id])
    blocks = [ids[i : i + block] for i in range(0, len(ids) - block + 1, block)]
    data = datasets.Dataset.from_dict({"input_ids": blocks, "labels": blocks})
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            max_steps=steps,
            per_device_train_batch_size=8,
            learning_rate=3e-3,
            warmup_steps=20,
            lr_scheduler_type="cosine",
            seed=seed,
            data_seed=seed,
            use_cpu=True,  # same bytes on every machine: no GPU kernels involved
            report_to="none",
            save_strategy="no",
            logging_strategy="no",
            disable_tqdm=True,
        )
        Trainer(model=model, args=args, train_dataset=data, data_collator=default_data_collator).train()
    model.eval()


if __name__ == "__main__":  # `python -m unsloth_sft.tiny FOLDER`: what tiny_model_path runs in a child process
    import sys

    build_tiny_model(Path(sys.argv[1]))
