"""GGUF out, for llama.cpp and Ollama: llama.cpp's own converter on the merged folder, a metadata check
(tokens, BOS/EOS/end-of-turn ids, chat template: the ones training used), and an Ollama Modelfile per file.

The converter is `convert_hf_to_gguf.py` from the llama-cpp-python source distribution (scripts/setup.sh
unpacks it); it runs as a subprocess with this Python. f32/f16/bf16/q8_0 come from it directly; k-quants
(q4_k_m, ...) need llama.cpp's `llama-quantize`, built once from the same sources with llama-server (export.runtime).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from unsloth_sft.core import procs
from unsloth_sft.core.errors import ModelError, RunError
from unsloth_sft.core.progress import Progress, duration, size
from unsloth_sft.core.quiet import is_verbose
from unsloth_sft.export.llama_cpp import LLAMA_CPP_ENV, llama_cpp_candidates  # where the tree is (and its build)
from unsloth_sft.export.modelfile import END_OF_TURN, modelfile
from unsloth_sft.models.gguf import ensure_sentencepiece
from unsloth_sft.models.tokens import adds_bos, token_id

LLAMA_CPP_PYTHON = "0.3.36"  # the llama-cpp-python sdist whose vendor/llama.cpp setup.sh unpacks
CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")
GET_CONVERTER = (
    f"run scripts/setup.sh (it unpacks llama.cpp from `pip download --no-deps --no-binary :all: "
    f"llama-cpp-python=={LLAMA_CPP_PYTHON}` into ~/.cache/unsloth_sft/tools/llama.cpp), or set {LLAMA_CPP_ENV} "
    "to a llama.cpp checkout"
)
BUILD_QUANTIZER = (  # the same build as export.runtime's: llama-server comes with it
    "cmake -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF "
    "&& cmake --build build --target llama-server llama-quantize -j2"
)
BUILD_RUNTIME = ".venv/bin/python -m unsloth_sft.export.runtime"  # that build, locked and marked done (runtime.py)
CONTROL = 3  # tokenizer.ggml.token_type of a control token: llama.cpp stops on an end-of-turn one
# What the tools print as they go, read for our progress lines: the converter logs each tensor it lays out, then
# gguf-py writes them under a tqdm bar (where the time goes: tensors are converted lazily, as they are written);
# llama-quantize numbers each tensor it quantizes.
TENSOR_LINE = re.compile(r" --> \w+, shape = \{")
WRITE_BAR = re.compile(r"Writing:\s*\d+%\|[^|]*\|\s*([\d.]+)([kMGTP]?)/([\d.]+)([kMGTP]?)")
QUANT_LINE = re.compile(r"^\[\s*(\d+)/\s*(\d+)\]")


def llama_cpp_dir() -> Path:
    """The llama.cpp tree whose converter to run, or a one-line error that says how to get it."""
    places = llama_cpp_candidates()
    for place in places:
        if (place / "convert_hf_to_gguf.py").is_file():
            return place
    raise RunError(
        f"llama.cpp's GGUF converter is not installed (looked in {', '.join(map(str, places))}); {GET_CONVERTER}"
    )


def quantizer(root: Path) -> Path | None:
    """llama-quantize built in the tree (build/bin), at its top level (unsloth's layout), or on PATH."""
    for path in (root / "build" / "bin" / "llama-quantize", root / "llama-quantize"):
        if path.is_file() and os.access(path, os.X_OK):
            return path
    found = shutil.which("llama-quantize")
    return Path(found) if found else None


def check_quants(quants: list[str], root: Path) -> Path | None:
    """Before any work: the quantizer when a type needs it, or the one-line how-to-build it."""
    need = [q for q in quants if q not in CONVERTER_TYPES]
    if not need:
        return None
    tool = quantizer(root)
    if tool is None:
        raise RunError(
            f"export.gguf_quant {', '.join(need)} needs llama.cpp's llama-quantize, not built yet; build it once "
            f"(~10-15 min on 2 cores, with llama-server): {BUILD_RUNTIME} (or cd {root} && {BUILD_QUANTIZER}); "
            "or use f16/q8_0, which need no build"
        )
    return tool


def attention_scale_problem(config) -> str | None:
    """llama.cpp's Gemma-2/3 scale queries by 1/sqrt(head_dim) (1/sqrt(hidden/heads) for the 27B shapes) and
    ignore query_pre_attn_scalar: a model whose two differ converts fine and computes something else."""
    arch = getattr(config, "model_type", "")
    scalar = getattr(config, "query_pre_attn_scalar", None)
    if arch not in ("gemma2", "gemma3_text", "gemma3") or scalar is None:
        return None
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    big = (arch == "gemma2" and config.num_hidden_layers == 46) or (arch != "gemma2" and config.num_hidden_layers == 62)
    used = config.hidden_size // config.num_attention_heads if big else head_dim
    if abs(float(scalar) - float(used)) > 1e-6:
        return (
            f"llama.cpp computes {arch} attention with scale 1/sqrt({used}) but this model uses "
            f"query_pre_attn_scalar {scalar}: its GGUF would answer differently; no GGUF written"
        )
    return None


def stage(merged: Path, tokenizer, base_path: str | None, out: Path) -> Path:
    """The merged folder as llama.cpp's converter reads it: links to its files, the base's SentencePiece
    tokenizer.model (transformers 5 does not save it; a GGUF-converted base gets one from its GGUF), and a
    tokenizer_config.json with `added_tokens_decoder` and `add_bos_token` (transformers 5 leaves them out;
    without them the converter types <end_of_turn> normal)."""
    out.mkdir(parents=True)
    for path in Path(merged).iterdir():
        if path.is_file() and path.name not in ("tokenizer_config.json", "README.md"):
            (out / path.name).symlink_to(path.resolve())
    spm = ensure_sentencepiece(base_path) if base_path else None  # a GGUF-converted base: written from its GGUF
    if not (out / "tokenizer.model").exists() and spm is not None:
        (out / "tokenizer.model").symlink_to(spm.resolve())
    config = json.loads((Path(merged) / "tokenizer_config.json").read_text(encoding="utf-8"))
    config.pop("vocab_file", None)
    config["added_tokens_decoder"] = {
        str(i): {
            "content": t.content,
            "special": bool(t.special),
            "normalized": bool(t.normalized),
            "lstrip": bool(t.lstrip),
            "rstrip": bool(t.rstrip),
            "single_word": bool(t.single_word),
        }
        for i, t in sorted(tokenizer.added_tokens_decoder.items())
    }
    config["add_bos_token"] = adds_bos(tokenizer)
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    return out


def _last_error(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error:" in line.lower()]
    return (errors or lines or ["no output"])[-1][:300]


def tensor_count(folder: Path) -> int | None:
    """How many tensors the safetensors files in `folder` hold (their headers only): the converter's total, about."""
    total = 0
    for path in Path(folder).glob("*.safetensors"):
        with open(path, "rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        total += sum(key != "__metadata__" for key in header)
    return total or None


def _mib(value: str, prefix: str) -> float:
    """tqdm's unit_scale figure ('536M', '1.07G': powers of 1000) in MiB."""
    return float(value) * 1000 ** " kMGTP".index(prefix or " ") / 2**20


class Relay:
    """A child's output as it comes: its progress told through core.progress (tensors laid out, MiB written,
    tensors quantized), all of it kept for the error message; with --verbose every line is shown as well."""

    def __init__(self, label: str, tensors: int | None = None):
        self.label, self.tensors, self.phase = label, tensors, ""
        self.bar: Progress | None = None
        self.verbose = is_verbose()

    def _bar(self, phase: str, total: float | None, unit: str) -> Progress:
        if self.phase != phase:
            self.close()
            self.phase, self.bar = phase, Progress(total, f"{self.label}, {phase}", unit=unit)
        return self.bar

    def piece(self, text: str) -> None:
        if self.verbose and text.strip():
            print(text, flush=True)
        if TENSOR_LINE.search(text):
            bar = self._bar("reading", self.tensors, "tensor")
            if bar.total is not None and bar.n >= bar.total:  # more than the safetensors held: no ETA to give
                bar.total = None
            bar.update()
        elif m := WRITE_BAR.search(text):
            bar = self._bar("writing", _mib(m[3], m[4]), "MiB")
            bar.update(_mib(m[1], m[2]) - bar.n)
        elif m := QUANT_LINE.search(text):
            bar = self._bar("quantizing", int(m[2]), "tensor")
            bar.update(int(m[1]) - bar.n)

    def read(self, stream) -> str:
        """Every piece of `stream` (lines, and a bar's \\r-separated updates) as it comes; all of it, decoded."""
        kept, rest = [], b""
        while chunk := stream.read1(65536):
            kept.append(chunk)
            *pieces, rest = re.split(rb"[\r\n]", rest + chunk)
            for piece in pieces:
                self.piece(piece.decode("utf-8", errors="replace"))
        if rest:
            self.piece(rest.decode("utf-8", errors="replace"))
        return b"".join(kept).decode("utf-8", errors="replace")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run_relayed(cmd: list[str], relay: Relay, env: dict | None = None) -> tuple[int, str]:
    """(exit status, all its output): `cmd` tied to this process as core.procs ties it (it dies when we die, and is
    killed if we stop waiting), its stdout and stderr read together as they come, through `relay`."""
    with subprocess.Popen(procs.tied(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env) as proc:
        try:
            text = relay.read(proc.stdout)
            code = proc.wait()
        except BaseException:  # KeyboardInterrupt, SIGTERM (procs.terminate_as_interrupt), an error: the child goes too
            proc.kill()
            proc.wait()
            raise
        finally:
            relay.close()
    return code, text


def convert(root: Path, folder: Path, out_file: Path, outtype: str) -> Path:
    """llama.cpp's convert_hf_to_gguf.py, as a subprocess of this Python (its own gguf-py comes first on its path)."""
    cmd = [
        sys.executable,
        str(root / "convert_hf_to_gguf.py"),
        str(folder),
        "--outfile",
        str(out_file),
        "--outtype",
        outtype,
    ]
    # its writer's tqdm bar is read here (TQDM_DISABLE, set for logs, would hide it from us too)
    env = {k: v for k, v in os.environ.items() if k not in ("NO_LOCAL_GGUF", "TQDM_DISABLE")}
    code, text = run_relayed(cmd, Relay(f"gguf {outtype}", tensor_count(folder)), env)
    if code != 0 or not out_file.is_file():
        raise RunError(f"llama.cpp's converter failed ({outtype}): {_last_error(text)}")
    return out_file


def quantize(tool: Path, source: Path, out_file: Path, quant: str) -> Path:
    code, text = run_relayed([str(tool), str(source), str(out_file), quant.upper()], Relay(f"gguf {quant}"))
    if code != 0 or not out_file.is_file():
        raise RunError(f"llama-quantize failed ({quant}): {_last_error(text)}")
    return out_file


def metadata_check(gguf_file: Path, tokenizer, prompts: list[str]) -> dict:
    """The GGUF's tokenizer against training's: vocabulary, BOS/EOS/end-of-turn ids and types, add_bos, chat
    template, and the eval prompts' token ids through a tokenizer rebuilt from the GGUF alone."""
    from unsloth_sft.models.gguf import read_metadata
    from unsloth_sft.models.gguf_tokenizer import build_tokenizer

    meta = read_metadata(gguf_file)
    problems = []
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    tokens = meta["tokens"] or []
    differ = [i for i, t in enumerate(vocab) if i >= len(tokens) or tokens[i] not in (t, t.replace("▁", " "))]
    if differ:
        i = differ[0]
        problems.append(
            f"{len(differ)} vocabulary entries differ (first: id {i}, {vocab[i]!r} vs "
            f"{tokens[i] if i < len(tokens) else None!r})"
        )
    for name in ("bos", "eos"):
        want = getattr(tokenizer, f"{name}_token_id")
        if want is not None and meta[name] != want:
            problems.append(f"{name} id {meta[name]} in the GGUF, {want} in training")
    found = {t: token_id(tokenizer, t) for t in END_OF_TURN}
    end_of_turn = {t: i for t, i in found.items() if i is not None}
    for text, i in end_of_turn.items():
        if meta["types"][i] != CONTROL:
            problems.append(f"{text} (id {i}) is not a control token in the GGUF, so llama.cpp would not stop on it")
    # llama.cpp's default when the key is absent: add BOS for SentencePiece ("llama") vocabularies
    add_bos = meta["add_bos"] if "add_bos_token" in _keys(gguf_file) else meta["model"] == "llama"
    if add_bos != adds_bos(tokenizer):
        problems.append(f"add_bos_token {add_bos} in the GGUF, {adds_bos(tokenizer)} in training")
    template_equal = (meta["chat_template"] or None) == (tokenizer.chat_template or None)
    if not template_equal:
        problems.append("the GGUF's chat template differs from training's")
    same_ids = 0
    try:
        rebuilt = build_tokenizer(meta)
        same_ids = sum(
            rebuilt(p, add_special_tokens=False).input_ids == tokenizer(p, add_special_tokens=False).input_ids
            for p in prompts
        )
    except ModelError as err:
        problems.append(f"cannot rebuild a tokenizer from the GGUF: {err}")
    if same_ids < len(prompts):
        problems.append(f"only {same_ids}/{len(prompts)} eval prompts tokenize the same from the GGUF's vocabulary")
    return {
        "bos_id": meta["bos"],
        "eos_id": meta["eos"],
        "end_of_turn_ids": end_of_turn,
        "add_bos": add_bos,
        "chat_template_equal": template_equal,
        "vocabulary_equal": not differ,
        "prompts_tokenized_equal": f"{same_ids}/{len(prompts)}",
        "problems": problems,
    }


def _keys(gguf_file: Path) -> set[str]:
    from unsloth_sft.models.gguf import open_gguf

    return set(open_gguf(gguf_file).fields)


class _Discard(Exception):
    """Raised inside atomic_dir to throw the half-checked folder away (the problems are returned, not raised)."""


def export_gguf(
    merged: Path, out_dir: Path, cfg, tokenizer, template: str, prompts: list[str], merged_model, base_path: str | None
) -> tuple[dict, str | None]:
    """({file: figures}, problem or None): every export.gguf_quant of `merged` into out_dir (atomically), each
    with its Modelfile, checked against the merged model and training's tokenizer. Nothing is written on a problem."""
    import contextlib

    from unsloth_sft.core.files import atomic_dir, scratch_dir
    from unsloth_sft.export.check import check_gguf

    root = llama_cpp_dir()
    tool = check_quants(cfg.export.gguf_quant, root)
    problem = attention_scale_problem(merged_model.config)
    if problem:
        return {}, problem
    results: dict = {}
    problems: list[str] = []
    with scratch_dir(out_dir) as work, contextlib.suppress(_Discard):  # in the run folder: a kill leaves no /tmp trash
        staged = stage(merged, tokenizer, base_path, work / "model")
        with atomic_dir(out_dir) as tmp:
            for quant in dict.fromkeys(cfg.export.gguf_quant):
                out_file = tmp / f"{cfg.run_name}-{quant}.gguf"
                started = time.perf_counter()
                if quant in CONVERTER_TYPES:
                    print(f"gguf: converting merged/ to {out_file.name}", flush=True)
                    convert(root, staged, out_file, quant)
                else:  # llama.cpp's quantizer starts from a 16-bit file
                    f16 = work / "f16.gguf"
                    if not f16.is_file():
                        print("gguf: converting merged/ to 16-bit first (llama-quantize starts from it)", flush=True)
                        convert(root, staged, f16, "f16")
                    print(
                        f"gguf: quantizing the 16-bit one to {out_file.name} (llama-quantize {quant.upper()})",
                        flush=True,
                    )
                    quantize(tool, f16, out_file, quant)
                took = duration(time.perf_counter() - started)
                print(f"gguf: {out_file.name}, {size(out_file.stat().st_size)}, in {took}; checking it", flush=True)
                meta = metadata_check(out_file, tokenizer, prompts)
                figures = check_gguf(out_file, merged_model, tokenizer, prompts)
                results[out_file.name] = {"quant": quant, "bytes": out_file.stat().st_size, **figures, "metadata": meta}
                problems += [f"{out_file.name}: {p}" for p in meta["problems"]]
                text = modelfile(out_file.name, tokenizer, template, cfg.eval)
                (tmp / out_file.with_suffix(".Modelfile").name).write_text(text, encoding="utf-8")
            if problems:
                raise _Discard
    return results, "; ".join(problems) or None
