"""GGUF export with llama.cpp's converter, checked: export_check.json figures, tokenizer metadata, Modelfile,
and an export that fails when the merged model is not the adapter's."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.conftest import small_config
from unsloth_sft.core.errors import RunError
from unsloth_sft.export.gguf import llama_cpp_candidates

HAVE_CONVERTER = any((p / "convert_hf_to_gguf.py").is_file() for p in llama_cpp_candidates())
needs_converter = pytest.mark.skipif(
    not HAVE_CONVERTER, reason="llama.cpp's converter is not unpacked (scripts/setup.sh does it)"
)
pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "unsloth_sft"]


def parse_modelfile(text: str) -> dict:
    """FROM, TEMPLATE and PARAMETER entries of a Modelfile (the subset modelfile() writes), for checks."""
    out: dict = {"parameters": {}}
    rest = text
    while rest:
        line, _, rest = rest.partition("\n")
        if line.startswith("FROM "):
            out["from"] = line[5:].strip()
        elif line.startswith(('TEMPLATE """', 'SYSTEM """')):
            key, _, first = line.partition(' """')
            body = first + "\n" + rest
            out[key.lower()], _, rest = body.partition('"""')
            rest = rest.lstrip("\n")
        elif line.startswith("PARAMETER "):
            key, value = line[10:].split(" ", 1)
            out["parameters"].setdefault(key, []).append(json.loads(value) if value.startswith('"') else value)
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """The demo shape on the tiny model, trained and exported at the end of training: lora + gguf f16, q8_0."""
    from unsloth_sft import pipeline

    if not HAVE_CONVERTER:
        pytest.skip("llama.cpp's converter is not unpacked (scripts/setup.sh does it)")
    cfg = small_config(
        tmp_path_factory.mktemp("gguf"),
        "model.backend=transformers",
        "export.save_methods=[lora, gguf]",
        "export.gguf_quant=[f16, q8_0]",
        "export.check_prompts=3",
    )
    pipeline.run_training(cfg)
    return cfg.run_dir


@needs_converter
def test_export_check_figures_match_a_reload(run_dir):
    """export_check.json holds merged-vs-adapter and merged-vs-GGUF figures; reloading each GGUF gives them again."""
    from transformers import AutoTokenizer

    from unsloth_sft.export.check import compare, eval_prompts, load_float32, load_gguf_into
    from unsloth_sft.runs.folder import RunDir

    check = json.loads((run_dir / "export_check.json").read_text())
    merged = check["merged_vs_adapter"]
    assert merged["passed"] and merged["top1_agreement"] >= 0.99 and merged["prompts"] == 3
    assert merged["greedy_equal"] == 3 and merged["max_logit_diff"] < 1e-2  # float32 merge: rounding only
    assert set(check["gguf"]) == {"t-f16.gguf", "t-q8_0.gguf"}
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "merged")
    prompts, _ = eval_prompts(RunDir(run_dir).config(), tokenizer, 3)
    merged_model = load_float32(run_dir / "merged")
    for name, figures in check["gguf"].items():
        again = compare(merged_model, load_gguf_into(run_dir / "gguf" / name, merged_model.config), tokenizer, prompts)
        assert again["top1_agreement"] == figures["top1_agreement"], name
        assert again["max_logit_diff"] == pytest.approx(figures["max_logit_diff"], rel=1e-3, abs=1e-5), name
        assert again["greedy_equal"] == figures["greedy_equal"], name
        assert figures["lossy"] == (figures["top1_agreement"] < 1 or figures["greedy_equal"] < figures["prompts"])
    f16 = check["gguf"]["t-f16.gguf"]
    assert f16["top1_agreement"] >= 0.99 and f16["greedy_equal"] == 3  # 16-bit weights: the same model
    assert check["gguf"]["t-q8_0.gguf"]["top1_agreement"] >= 0.9
    card = (run_dir / "gguf" / "README.md").read_text()
    assert "t-q8_0.gguf" in card and "ollama create" in card and "llama-cli" in card and "gguf_file=" in card
    assert "## Export check" in (run_dir / "merged" / "README.md").read_text()
    from unsloth_sft.evaluation.report import run_summary

    summary = run_summary(RunDir(run_dir))
    assert f"gguf (llama.cpp, Ollama): {run_dir / 'gguf'}" in summary and "export_check.json" in summary


@needs_converter
def test_gguf_tokenizer_is_trainings(run_dir):
    """Chat template, BOS/EOS and end-of-turn ids in the GGUF are training's; <end_of_turn> is a control token."""
    from transformers import AutoTokenizer

    from unsloth_sft.models.gguf import read_metadata

    tokenizer = AutoTokenizer.from_pretrained(run_dir / "adapter")
    check = json.loads((run_dir / "export_check.json").read_text())
    for name in ("t-f16.gguf", "t-q8_0.gguf"):
        meta = read_metadata(run_dir / "gguf" / name)
        assert meta["chat_template"] == tokenizer.chat_template
        assert (meta["bos"], meta["eos"]) == (tokenizer.bos_token_id, tokenizer.eos_token_id)
        end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
        assert meta["tokens"][end_of_turn] == "<end_of_turn>" and meta["types"][end_of_turn] == 3
        assert meta["tokens"][: len(tokenizer)] == tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        recorded = check["gguf"][name]["metadata"]
        assert recorded["problems"] == [] and recorded["prompts_tokenized_equal"] == "3/3"
        assert recorded["end_of_turn_ids"] == {"<end_of_turn>": end_of_turn}


@needs_converter
def test_modelfile_matches_the_tokenizer(run_dir):
    """Each GGUF has a Modelfile: FROM it, Gemma's turns without <bos>, a stop per end-of-turn marker, greedy eval."""
    from transformers import AutoTokenizer

    from unsloth_sft.models.gguf import read_metadata

    tokenizer = AutoTokenizer.from_pretrained(run_dir / "adapter")
    for quant in ("f16", "q8_0"):
        parsed = parse_modelfile((run_dir / "gguf" / f"t-{quant}.Modelfile").read_text())
        assert parsed["from"] == f"./t-{quant}.gguf" and (run_dir / "gguf" / f"t-{quant}.gguf").is_file()
        template = parsed["template"]
        assert "<bos>" not in template  # llama.cpp adds BOS itself (add_bos)
        assert "<start_of_turn>user\n" in template and template.endswith("<start_of_turn>model\n")
        stops = parsed["parameters"]["stop"]
        assert "<end_of_turn>" in stops
        meta = read_metadata(run_dir / "gguf" / f"t-{quant}.gguf")
        for marker in stops + ["<start_of_turn>"]:
            i = tokenizer.convert_tokens_to_ids(marker)
            assert i != tokenizer.unk_token_id and meta["tokens"][i] == marker and meta["types"][i] == 3
        assert parsed["parameters"]["temperature"] == ["0"] and parsed["parameters"]["num_predict"] == ["8"]


@needs_converter
def test_broken_merge_fails_the_export(run_dir, tmp_path):
    """A merged folder that is not base + adapter (here: noise on every layer's weights) stops the export, says so,
    records the figures, and writes no GGUF."""
    import torch
    from safetensors.torch import load_file, save_file

    from unsloth_sft.export.plan import export_run

    broken = tmp_path / "t"
    shutil.copytree(run_dir, broken)
    shutil.rmtree(broken / "gguf")
    weights = load_file(broken / "merged" / "model.safetensors")
    torch.manual_seed(0)
    for name, w in weights.items():
        if ".layers." in name and w.dim() == 2:
            weights[name] = w + torch.randn_like(w) * w.std() * 3
    save_file(
        {k: v.contiguous() for k, v in weights.items()},
        broken / "merged" / "model.safetensors",
        metadata={"format": "pt"},
    )
    with pytest.raises(RunError, match="disagrees with the adapter"):
        export_run(broken, ["gguf"])
    check = json.loads((broken / "export_check.json").read_text())
    assert check["merged_vs_adapter"]["passed"] is False
    assert check["merged_vs_adapter"]["top1_agreement"] < 0.95
    assert not (broken / "gguf").exists()
    assert torch.equal(
        load_file(broken / "merged" / "model.safetensors")["model.norm.weight"], weights["model.norm.weight"]
    )  # the merged folder itself is left as it was


def test_missing_converter_says_how_to_get_it(tmp_path, monkeypatch):
    from unsloth_sft.config.load import load_config
    from unsloth_sft.export.plan import check_gguf_tools

    monkeypatch.setenv("UNSLOTH_SFT_LLAMA_CPP", str(tmp_path / "nowhere"))
    with pytest.raises(RunError) as err:
        check_gguf_tools(load_config(overrides=["export.save_methods=[lora, gguf]"]))
    text = str(err.value)
    assert "scripts/setup.sh" in text and "UNSLOTH_SFT_LLAMA_CPP" in text and "\n" not in text


def test_missing_quantizer_says_how_to_build_it(tmp_path, monkeypatch):
    from unsloth_sft.config.load import load_config
    from unsloth_sft.export.plan import check_gguf_tools

    (tmp_path / "convert_hf_to_gguf.py").write_text("")
    monkeypatch.setenv("UNSLOTH_SFT_LLAMA_CPP", str(tmp_path))
    monkeypatch.setenv("PATH", "/nonexistent")  # no llama-quantize on PATH either
    check_gguf_tools(load_config(overrides=["export.gguf_quant=[f16, q8_0]"]))  # the converter alone suffices
    with pytest.raises(RunError) as err:
        check_gguf_tools(load_config(overrides=["export.gguf_quant=[q4_k_m]"]))
    text = str(err.value)
    assert "llama-quantize" in text and "cmake -B build" in text and str(tmp_path) in text and "\n" not in text


# What llama.cpp's tools print as they go (convert_hf_to_gguf.py: a line per tensor on stderr, then gguf-py's
# tqdm "Writing" bar, \r-separated; llama-quantize: "[  i/  n] name - ..."), from stand-ins that take a moment.
FAKE_CONVERTER = r"""
import sys, time
out = sys.argv[sys.argv.index("--outfile") + 1]
for i in range(3):
    print(f"INFO:hf-to-gguf:blk.{i}.attn_q.weight,  torch.float32 --> F16, shape = {{16, 16}}", file=sys.stderr)
    time.sleep(0.05)
if "broken" in out:
    sys.exit("Traceback (most recent call last):\nValueError: Can not map tensor 'lm_head.weight'")
print("INFO:gguf.gguf_writer:Writing the following files:", file=sys.stderr, flush=True)
for done in ("0.00", "1.05M", "2.10M"):
    sys.stderr.write(f"\rWriting:  50%|#####     | {done}/2.10M [00:00<00:00, 10.0Mbyte/s]")
    sys.stderr.flush()
    time.sleep(0.05)
open(out, "wb").write(b"GGUF")
"""
FAKE_QUANTIZER = """
import sys
for i in range(1, 4):
    print(f"[{i:4d}/{3:4d}] blk.{i}.attn_q.weight - [16, 16, 1, 1], type = f16, converting to q4_K .. done", flush=True)
open(sys.argv[2], "wb").write(b"GGUF")
"""


def fake_safetensors(folder, names) -> None:
    """A model.safetensors of one float per tensor: its 8-byte header length, its JSON header, the data."""
    entries = {n: {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]} for i, n in enumerate(names)}
    header = json.dumps({**entries, "__metadata__": {"format": "pt"}}).encode()
    (folder / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(4 * len(names)))


def test_conversion_and_quantization_tell_their_progress_and_keep_the_output_for_errors(tmp_path, capsys, monkeypatch):
    from unsloth_sft.export.gguf import convert, quantize, tensor_count

    root, model = tmp_path / "llama.cpp", tmp_path / "model"
    root.mkdir()
    model.mkdir()
    (root / "convert_hf_to_gguf.py").write_text(FAKE_CONVERTER)
    fake_safetensors(model, ["blk.0.attn_q.weight", "blk.1.attn_q.weight", "blk.2.attn_q.weight"])
    assert tensor_count(model) == 3
    monkeypatch.setenv("UNSLOTH_SFT_PROGRESS_S", "0")
    monkeypatch.setenv("TQDM_DISABLE", "1")  # a log's setting: the converter's bar is still read
    monkeypatch.delenv("UNSLOTH_SFT_VERBOSE", raising=False)
    convert(root, model, tmp_path / "t-f16.gguf", "f16")
    lines = [line.split(" |")[0] for line in capsys.readouterr().out.splitlines()]
    assert lines == [
        *(f"gguf f16, reading: {n}/3 tensors ({p}%)" for n, p in ((1, 33), (2, 67), (3, 100))),
        *(f"gguf f16, writing: {n}/2.003 MiB ({p}%)" for n, p in (("0", 0), ("1.001", 50), ("2.003", 100))),
    ]
    with pytest.raises(RunError) as err:
        convert(root, model, tmp_path / "broken-f16.gguf", "f16")
    assert str(err.value) == "llama.cpp's converter failed (f16): ValueError: Can not map tensor 'lm_head.weight'"
    tool = tmp_path / "llama-quantize"
    tool.write_text(f"#!{sys.executable}\n{FAKE_QUANTIZER}")
    tool.chmod(0o755)
    capsys.readouterr()
    quantize(tool, tmp_path / "t-f16.gguf", tmp_path / "t-q4_k_m.gguf", "q4_k_m")
    lines = [line.split(" |")[0] for line in capsys.readouterr().out.splitlines()]
    assert lines == [f"gguf q4_k_m, quantizing: {n}/3 tensors ({p}%)" for n, p in ((1, 33), (2, 67), (3, 100))]
    monkeypatch.setenv("UNSLOTH_SFT_VERBOSE", "1")  # --verbose: the tool's own lines as well
    convert(root, model, tmp_path / "again-f16.gguf", "f16")
    assert "INFO:hf-to-gguf:blk.0.attn_q.weight," in capsys.readouterr().out


def test_attention_scale_llama_cpp_ignores_is_refused():
    """llama.cpp's Gemma-2 scales by 1/sqrt(head_dim): a different query_pre_attn_scalar is a different model."""
    from transformers import Gemma2Config

    from unsloth_sft.export.gguf import attention_scale_problem
    from unsloth_sft.models.tiny import TINY_SHAPE

    assert attention_scale_problem(Gemma2Config(**TINY_SHAPE)) is None  # the tiny model: equal by construction
    shape = {**TINY_SHAPE, "query_pre_attn_scalar": 256}
    assert "query_pre_attn_scalar 256" in attention_scale_problem(Gemma2Config(**shape))
    real_2b = Gemma2Config(head_dim=256, query_pre_attn_scalar=256, num_hidden_layers=26)
    assert attention_scale_problem(real_2b) is None


@needs_converter
def test_cli_export_gguf_with_quant(run_dir, tmp_path):
    """`unsloth-sft export RUN --method gguf --quant f16` rewrites gguf/ with only that type; a bad type is one line."""
    copy = tmp_path / "t"
    shutil.copytree(run_dir, copy)
    done = subprocess.run(
        [*CLI, "export", str(copy), "--method", "gguf", "--quant", "f16"], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in (copy / "gguf").glob("*.gguf")) == ["t-f16.gguf"]
    assert set(json.loads((copy / "export_check.json").read_text())["gguf"]) == {"t-f16.gguf"}
    done = subprocess.run(
        [*CLI, "export", str(copy), "--method", "gguf", "--quant", "q9_9"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and "gguf_quant" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_modelfile_templates_follow_training(tokenizer):
    """Gemma: turn markers, no <bos>, system folded as prompts._merge_system folds it; a ChatML template's default
    system text becomes SYSTEM; a qa run gets its Question/Answer prompt; greedy eval becomes temperature 0."""
    import copy

    from unsloth_sft.config.run import EvalConfig
    from unsloth_sft.data.prompts import render_prompt
    from unsloth_sft.export.modelfile import CHATML_TEMPLATE, modelfile

    gemma = parse_modelfile(modelfile("m.gguf", tokenizer, "chat", EvalConfig()))
    folded = render_prompt(tokenizer, [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}], "chat")
    assert folded.endswith("<start_of_turn>user\nS\n\nU<end_of_turn>\n<start_of_turn>model\n")
    assert "{{ $system }}\n\n{{ end }}{{ $m.Content }}<end_of_turn>\n" in gemma["template"]  # the same fold
    assert "SYSTEM" not in gemma and gemma["parameters"]["num_predict"] == ["64"]
    chatml = copy.deepcopy(tokenizer)
    chatml.chat_template = (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\\nYou are SmolLM<|im_end|>\\n' }}{% endif %}"
        "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    parsed = parse_modelfile(modelfile("m.gguf", chatml, "chat", EvalConfig(do_sample=True, temperature=0.7)))
    assert parsed["template"] == CHATML_TEMPLATE and parsed["system"] == "You are SmolLM"
    assert parsed["parameters"]["temperature"] == ["0.7"] and parsed["parameters"]["top_k"] == ["50"]
    qa = parse_modelfile(modelfile("m.gguf", tokenizer, "qa", EvalConfig()))
    assert qa["template"] == "Question: {{ .Prompt }}\nAnswer:"


def test_older_run_config_with_quantization_method_still_loads():
    """Run folders written before export.gguf_quant carry export.quantization_method: they must still load."""
    from unsloth_sft.config.load import load_config

    cfg = load_config(overrides=["export.quantization_method=q4_k_m"])
    assert cfg.export.gguf_quant == ["f16", "q8_0"]
