"""An offline tiny Gemma-2: random weights, a tokenizer trained on the package's samples, Gemma's chat template."""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

from unsloth_sft.core import procs
from unsloth_sft.core.files import atomic_dir, remove_leftovers, scratch_dir
from unsloth_sft.core.paths import cache_root
from unsloth_sft.models.chat_templates import GEMMA_CHAT_TEMPLATE

TINY_NAME = "tiny-gemma2"
PRETRAIN_STEPS = 300  # a short causal-LM pre-training on the samples, so the base is a language model (not noise)
VOCAB_SIZE = 3000  # SentencePiece BPE: enough merges that a Hindi word is ~2-4 pieces, not ~12 bytes
SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>"]  # Gemma's ids 0..3
TURN_TOKENS = ["<start_of_turn>", "<end_of_turn>", "\n"]  # user-defined pieces, ids 4..6 (atomic, as in Gemma's)
TOKENIZER_KIND = "spm-bpe-2"  # in the cache key: a tokenizer recipe change rebuilds the model


# Shape of the tiny model: ~200k parameters, 2 layers; big enough to learn the sample's format in 60 steps.
TINY_SHAPE = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    query_pre_attn_scalar=16,  # = head_dim: llama.cpp scales attention by 1/sqrt(head_dim) and ignores this field
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


def tiny_model_path() -> Path:
    """Folder of the tiny model for the current samples, built on first use (once; later calls reuse it)."""
    corpus = sample_corpus()
    recipe = repr(TINY_SHAPE) + str(VOCAB_SIZE) + str(PRETRAIN_STEPS) + TOKENIZER_KIND
    key = hashlib.sha256(("\n".join(corpus) + recipe).encode()).hexdigest()[:12]
    path = cache_root() / f"{TINY_NAME}-{key}"
    if not (path / "config.json").is_file():
        _build_in_child(path)
    return path


def _build_in_child(path: Path) -> None:
    """Build in a child process, so its transformers import comes before no unsloth import of ours, and its
    training logs and progress bars stay out of this process's output (a notebook shows one line)."""
    import sys

    for note in remove_leftovers(path.parent):  # a build a kill interrupted
        print(note)
    print(f"building the tiny model once, into {path} (~30 s)", flush=True)
    done = procs.run([sys.executable, "-m", "unsloth_sft.models.tiny", str(path)], capture_output=True, text=True)
    if done.returncode != 0 or not (path / "config.json").is_file():
        raise RuntimeError(f"building the tiny model failed (exit {done.returncode}):\n{done.stderr[-3000:]}")


def train_sentencepiece(corpus: list[str], folder: Path) -> Path:
    """A SentencePiece BPE model shaped like Gemma's (ids 0..3 pad/eos/bos/unk, byte fallback, no dummy prefix,
    turn markers and newline as user-defined pieces), saved as folder/tokenizer.model.

    SentencePiece, not a byte-level BPE, because llama.cpp's Gemma converters read tokenizer.model.
    """
    import io

    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=buf,
        model_type="bpe",
        vocab_size=VOCAB_SIZE,
        **{f"{name}_id": i for i, name in enumerate(("pad", "eos", "bos", "unk"))},
        **{f"{name}_piece": f"<{name}>" for name in ("pad", "eos", "bos", "unk")},
        user_defined_symbols=TURN_TOKENS,
        byte_fallback=True,  # any character encodes (as bytes), as in Gemma
        split_digits=True,
        add_dummy_prefix=False,  # Gemma's: no space added in front of the text
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        allow_whitespace_only_pieces=True,
        character_coverage=1.0,
        hard_vocab_limit=False,
        max_sentence_length=1 << 16,
        num_threads=1,  # same pieces on every machine
        minloglevel=2,
    )
    path = Path(folder) / "tokenizer.model"
    path.write_bytes(buf.getvalue())
    return path


def build_tiny_model(path: Path, corpus: list[str] | None = None, seed: int = 0) -> Path:
    """Build the tiny Gemma-2 into `path` (atomically: a half-built folder never looks complete)."""
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM, GemmaTokenizer, GenerationConfig

    corpus = sample_corpus() if corpus is None else corpus
    with atomic_dir(path, replace=False) as tmp:  # another process that built it meanwhile: theirs is kept
        train_sentencepiece(corpus, tmp)
        tokenizer = GemmaTokenizer.from_pretrained(  # transformers' own SentencePiece -> tokenizers conversion
            tmp,
            mask_token=None,  # Gemma-2 has none; the default would add a 3001st token
            add_bos_token=True,  # explicit, or a reload of the saved tokenizer adds no <bos> (transformers 5.17)
            additional_special_tokens=TURN_TOKENS[:2],
            chat_template=GEMMA_CHAT_TEMPLATE,
            model_max_length=TINY_SHAPE["max_position_embeddings"],
            padding_side="left",
        )
        bos_id, end_of_turn = tokenizer.bos_token_id, tokenizer.convert_tokens_to_ids("<end_of_turn>")
        stops = [tokenizer.eos_token_id, end_of_turn]
        config = Gemma2Config(
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=bos_id,
            eos_token_id=stops,
            tie_word_embeddings=True,
            attn_implementation="eager",  # Gemma-2's soft-capping is not in SDPA
            torch_dtype="float32",
            **TINY_SHAPE,
        )
        torch.manual_seed(seed)
        model = Gemma2ForCausalLM(config)
        with scratch_dir(path) as work:  # beside the cache entry, not in /tmp: remove_leftovers finds a kill's
            pretrain(model, tokenizer, corpus, seed, work)
        model.generation_config = GenerationConfig(
            bos_token_id=bos_id, eos_token_id=stops, pad_token_id=config.pad_token_id
        )
        model.save_pretrained(tmp)
        tokenizer.init_kwargs.pop("vocab_file", None)  # the temporary folder's path; tokenizer.model is beside it
        tokenizer.save_pretrained(tmp)  # tokenizer.json etc.; tokenizer.model stays beside it
    return path


def pretrain(
    model, tokenizer, corpus: list[str], seed: int, work: Path, steps: int = PRETRAIN_STEPS, block: int = 128
) -> None:
    """A few hundred seeded steps of full causal-LM training on the corpus (transformers' Trainer, on CPU); `work`
    is the Trainer's output_dir, which its caller removes."""
    import datasets
    from transformers import Trainer, TrainingArguments, default_data_collator

    ids: list[int] = []
    for line in corpus:
        ids.extend(tokenizer(line)["input_ids"] + [tokenizer.eos_token_id])
    blocks = [ids[i : i + block] for i in range(0, len(ids) - block + 1, block)]
    data = datasets.Dataset.from_dict({"input_ids": blocks, "labels": blocks})
    args = TrainingArguments(
        output_dir=str(work),
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


if __name__ == "__main__":  # `python -m unsloth_sft.models.tiny FOLDER`: what tiny_model_path runs in a child process
    import sys

    build_tiny_model(Path(sys.argv[1]))
