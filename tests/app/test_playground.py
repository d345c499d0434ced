"""The playground page (`unsloth-sft chat RUN_DIR`): one-line errors, the streamed answers, and the page driven
in a real headless Chromium (skipped, saying why, where Chromium or Playwright is missing)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "params" / "demo-cpu.yaml"
SCREENSHOT_ENV = "UNSLOTH_SFT_SCREENSHOT"  # also save the page's screenshot there (docs/playground.png was made so)
START_LIMIT_S = 240  # model load + Gradio start on 2 busy cores; the test fails with the server's log after it


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fake_finished_run(folder: Path) -> Path:
    """What finished_run checks, without weights: config.yaml, metrics.json, an adapter config."""
    from unsloth_sft.config.load import load_config, save_config

    (folder / "adapter").mkdir(parents=True)
    save_config(load_config(DEMO, [f"output_dir={folder.parent}", f"run_name={folder.name}"]), folder / "config.yaml")
    (folder / "metrics.json").write_text("{}")
    (folder / "adapter" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "tiny-gemma2"}))
    return folder


def chat_cli(capsys, *args: str) -> tuple[int, list[str]]:
    """Run `unsloth-sft chat ...`; (exit code, its `unsloth-sft: error:` lines)."""
    from unsloth_sft.app.cli import main

    code = main(["chat", *args])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [line for line in err.splitlines() if line.startswith("unsloth-sft: error:")]


# ---------------------------------------------------------------- one-line errors (no model, no browser)


def test_chat_refuses_a_folder_that_is_not_a_run(capsys, tmp_path):
    code, lines = chat_cli(capsys, str(tmp_path))
    assert code == 2 and len(lines) == 1 and "no config.yaml, so not a run folder" in lines[0], lines


def test_chat_refuses_an_unfinished_run(capsys, tmp_path):
    run = fake_finished_run(tmp_path / "half")
    (run / "metrics.json").unlink()
    code, lines = chat_cli(capsys, str(run))
    assert code == 2 and len(lines) == 1 and "not a finished run (no metrics.json)" in lines[0], lines


def test_chat_refuses_a_port_in_use(capsys, tmp_path):
    run = fake_finished_run(tmp_path / "done")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, lines = chat_cli(capsys, str(run), "--port", str(port))
    assert code == 2 and len(lines) == 1, lines
    assert f"port {port} on 127.0.0.1 is in use" in lines[0] and f"--port {port + 1}" in lines[0]


def test_chat_without_the_ui_extra_names_the_pip_command(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # what `import gradio` does where it is not installed
    code, lines = chat_cli(capsys, str(fake_finished_run(tmp_path / "done")))
    assert code == 2 and len(lines) == 1 and 'pip install "unsloth-sft[ui]"' in lines[0], lines


# ---------------------------------------------------------------- the prefilled input of each task (no model)


@pytest.mark.parametrize(
    "params", ["demo-cpu.yaml", "cpu/gsm8k.yaml", "cpu/qa-json.yaml", "cpu/alpaca.yaml", "cpu/prompt-completion.yaml"]
)
def test_prefilled_example_renders_as_eval_renders_it(params, tokenizer):
    """The page's first example, rendered for the model, is eval's prompt for the first test example."""
    from unsloth_sft import tasks
    from unsloth_sft.app.playground import example_pairs, render_input
    from unsloth_sft.config.load import load_config
    from unsloth_sft.data.examples import load_examples
    from unsloth_sft.data.prompts import choose_template, prompts_for

    cfg = load_config(ROOT / "params" / params)
    ex = load_examples(cfg)
    pairs, where = example_pairs(cfg, ex.task)
    assert where == "test split" and len(pairs) == min(len(ex.test.rows), 20) and tasks.get(ex.task).input_label
    conv = ex.test_conversations[0]
    expected = prompts_for(tokenizer, [conv], choose_template(ex.task, cfg.data, tokenizer))[0]
    assert render_input(cfg, ex.task, tokenizer, pairs[0][0]) == expected
    assert pairs[0][1] == conv[-1]["content"]


def test_prefilled_chat_and_text_examples():
    """Chat: the first user message and its reply; raw text: the start infer continues, then what follows it."""
    from unsloth_sft.app.playground import example_pairs
    from unsloth_sft.config.load import load_config
    from unsloth_sft.data.examples import load_examples
    from unsloth_sft.data.prompts import TEXT_PROMPT_CHARS

    chat = load_config(ROOT / "params" / "cpu" / "chat.yaml")
    conv = [m for m in load_examples(chat).test_conversations[0] if m["role"] != "system"]
    assert example_pairs(chat, "chat")[0][0] == (conv[0]["content"], conv[1]["content"])
    text = load_config(ROOT / "params" / "cpu" / "raw-text.yaml")
    ex = load_examples(text)
    split = ex.test if ex.test is not None and ex.test.rows else ex.train
    first = split.rows[0][ex.text_column]
    given, following = example_pairs(text, "text")[0][0]
    assert given == first[:TEXT_PROMPT_CHARS] and following and first.startswith(given + following)


# ---------------------------------------------------------------- the demo run and its answers


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The demo recipe on the tiny model, trained briefly (adapter only) and evaluated: a finished run."""
    from unsloth_sft import pipeline
    from unsloth_sft.config.load import load_config
    from unsloth_sft.evaluation.evaluate import evaluate_run

    tmp = tmp_path_factory.mktemp("playground")
    cfg = load_config(
        DEMO,
        [
            f"output_dir={tmp}",
            "model.load_in_4bit=false",
            "model.backend=transformers",
            "train.max_steps=10",
            "train.optim=adamw_torch",
            "export.save_methods=[lora]",
            "eval.num_examples=2",
            "eval.max_new_tokens=24",
        ],
    )
    pipeline.run_training(cfg)
    evaluate_run(cfg, cfg.run_dir)
    return cfg


@pytest.fixture(scope="module")
def pg(demo_run):
    from unsloth_sft.app.playground import load_playground

    return load_playground(demo_run.run_dir)


def infer_output(run_dir: Path, value, tmp_path: Path) -> str:
    """What `unsloth-sft infer --run RUN_DIR` writes for one input (the library function the CLI calls)."""
    from unsloth_sft.evaluation.infer import infer_file, run_task
    from unsloth_sft.runs.config import run_from_params

    run, cfg = run_from_params(None, [], run_dir)
    which = run.model()
    model, adapter = which.weights, which.adapter
    (tmp_path / "in.jsonl").write_text(json.dumps(value, ensure_ascii=False) + "\n", encoding="utf-8")
    infer_file(cfg, model, adapter, tmp_path / "in.jsonl", tmp_path / "out.jsonl", run_task(run, cfg))
    return json.loads((tmp_path / "out.jsonl").read_text(encoding="utf-8"))["output"]


@pytest.mark.slow
def test_streamed_answers_are_evals_answers(pg, demo_run):
    """On the first test example, with the run's eval settings, base and tuned stream what eval wrote for them."""
    from unsloth_sft.app.playground import render_input, stream_answer

    assert pg.task == "summarization" and pg.has_base and pg.examples_from == "test split"
    dialogue, reference = pg.examples[0]
    row = json.loads((demo_run.run_dir / "eval" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()[0])
    prompt = render_input(pg.cfg, pg.task, pg.tokenizer, dialogue)
    assert prompt == row["input"] and reference == row["reference"]  # the same text, rendered as eval renders it
    tuned = list(stream_answer(pg, prompt, pg.cfg.eval))
    base = list(stream_answer(pg, prompt, pg.cfg.eval, base=True))
    assert len(tuned) > 2 and all(tuned[i + 1].startswith(tuned[i]) for i in range(len(tuned) - 2))  # grows
    assert tuned[-1] == row["tuned"] and base[-1] == row["base"]


@pytest.mark.slow
def test_stop_ends_generation_at_the_next_token(pg):
    from unsloth_sft.app.playground import render_input, stream_answer

    prompt = render_input(pg.cfg, pg.task, pg.tokenizer, pg.examples[0][0])
    pg.stop.set()
    try:
        text = list(stream_answer(pg, prompt, pg.cfg.eval))[-1]
    finally:
        pg.stop.clear()
    assert len(pg.tokenizer(text, add_special_tokens=False).input_ids) <= 1, text


@pytest.mark.slow
def test_chat_input_renders_every_turn_in_the_template(pg):
    """A chat run's conversation goes through the same render_prompt as training: every turn, then the reply header."""
    from unsloth_sft.app.playground import render_input
    from unsloth_sft.data.prompts import render_prompt

    turns = [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi there"},
        {"role": "user", "content": "and now?"},
    ]
    text = render_input(pg.cfg, "chat", pg.tokenizer, turns)
    assert text == render_prompt(pg.tokenizer, turns, "chat")
    assert text.index("hello") < text.index("hi there") < text.index("and now?")
    assert text.endswith("<start_of_turn>model\n")


# ---------------------------------------------------------------- the page in a real browser


@pytest.fixture(scope="module")
def browser(chromium):
    """The shared headless Chromium (tests/conftest.py), for a page that needs Gradio."""
    pytest.importorskip("gradio", reason='gradio not installed: pip install "unsloth-sft[ui]"')
    return chromium


def wait_until_served(proc: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + START_LIMIT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"`unsloth-sft chat` exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail(f"`unsloth-sft chat` did not serve {url} within {START_LIMIT_S} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def served(demo_run, tmp_path):
    """`unsloth-sft chat RUN_DIR --port P` in its own process, as a user starts it; stopped after the test."""
    port, log = free_port(), tmp_path / "chat.log"
    paths = [str(ROOT / "src"), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))  # this checkout's package, installed or not
    cmd = [sys.executable, "-m", "unsloth_sft", "chat", str(demo_run.run_dir), "--port", str(port)]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_served(proc, url, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def wait_done(page) -> str:
    page.wait_for_function(
        "() => ['done', 'stopped'].includes(document.querySelector('#status')?.innerText.trim())", timeout=120_000
    )
    return page.inner_text("#status").strip()


@pytest.mark.slow
def test_page_answers_side_by_side_as_infer_does(browser, served, demo_run, tmp_path):
    """Submit the prefilled test example: both columns fill, and the tuned one is `infer`'s greedy output."""
    from unsloth_sft.app.playground import example_pairs, render_input
    from unsloth_sft.evaluation.infer import run_task
    from unsloth_sft.runs.folder import RunDir

    cfg = demo_run
    dialogue, reference = example_pairs(cfg, "summarization")[0][0]
    page = browser.new_page()
    page.goto(served)
    page.wait_for_selector("#generate")
    assert page.input_value("#input textarea") == dialogue  # prefilled from the run's test split
    assert page.input_value("#reference textarea") == reference
    page.click("#generate")
    assert wait_done(page) == "done"
    base, tuned = page.input_value("#base-output textarea"), page.input_value("#tuned-output textarea")
    assert base.strip() and tuned.strip()
    assert tuned == infer_output(cfg.run_dir, dialogue, tmp_path)
    shot = tmp_path / "playground.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:4] == b"\x89PNG"
    if os.environ.get(SCREENSHOT_ENV):
        shutil.copyfile(shot, os.environ[SCREENSHOT_ENV])

    # The toggle shows the exact text the model continued, as the library renders it, and its token ids.
    page.click("#show input")
    page.wait_for_function("() => document.querySelector('#seen-text textarea')?.value.length > 0")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(cfg.run_dir / "adapter")
    prompt = render_input(cfg, run_task(RunDir(cfg.run_dir), cfg), tok, dialogue)
    assert page.input_value("#seen-text textarea") == prompt
    ids = tok(prompt, add_special_tokens=False).input_ids
    assert page.input_value("#seen-ids textarea") == f"{len(ids)} tokens: " + " ".join(map(str, ids))

    # The second tab: the eval table base -> tuned and the loss curve.
    page.get_by_role("tab", name="Report").click()
    page.wait_for_selector("#report table")
    report = page.inner_text("#report")
    assert "eval_loss" in report and "rougeL" in report
    assert f"{RunDir(cfg.run_dir).eval_metrics()['test_examples']} test examples, summarization task" in report
    assert page.locator("#loss-curve img").count() == 1 and page.locator("#metrics-chart img").count() == 1
    page.close()


@pytest.mark.slow
def test_merged_only_folder_shows_only_the_tuned_column(browser, demo_run, tiny_path, tmp_path):
    """No adapter, only merged weights: no base to switch back to, so one column and a sentence saying why."""
    from unsloth_sft.app.playground_ui import serve

    run = tmp_path / "merged-only"
    shutil.copytree(demo_run.run_dir, run, ignore=shutil.ignore_patterns("adapter", "checkpoints"))
    shutil.copytree(tiny_path, run / "merged")  # stands in for merged weights: any full model folder
    port = free_port()
    app = serve(run, port, block=False)
    try:
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_selector("#generate")
        assert "no LoRA adapter" in page.inner_text("#no-base")
        assert not page.is_visible("#base-output") and page.is_visible("#tuned-output")
        page.click("#generate")
        assert wait_done(page) == "done"
        assert page.input_value("#tuned-output textarea").strip()
        page.close()
    finally:
        app.close()


@pytest.mark.slow
def test_chat_page_keeps_each_sides_own_conversation(browser, pg):
    """A chat run's page: two messages, each side answers with its own earlier replies in the prompt."""
    import dataclasses

    from unsloth_sft.app.playground import render_input
    from unsloth_sft.app.playground_ui import build_app, launch
    from unsloth_sft.evaluation.generate import generate

    chat = dataclasses.replace(pg, task="chat", examples=[("नमस्ते, आप कैसे हैं?", "मैं ठीक हूँ।")])
    port = free_port()
    app = launch(build_app(chat), port, block=False)

    def reply(history: list[dict], adapter: bool) -> str:  # what the library generates for that conversation
        prompt = render_input(chat.cfg, "chat", chat.tokenizer, history)
        with chat.model.disable_adapter() if not adapter else contextlib.nullcontext():
            return generate(chat.model, chat.tokenizer, [prompt], chat.cfg.eval, progress=False)[0]

    try:
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_selector("#generate")
        assert page.input_value("#input textarea") == "नमस्ते, आप कैसे हैं?"
        page.click("#generate")
        assert wait_done(page) == "done"
        assert page.input_value("#input textarea") == ""  # emptied for the next message
        page.fill("#input textarea", "और बताइए")
        page.click("#generate")
        assert wait_done(page) == "done"
        tuned_history: list[dict] = []
        for side, adapter in (("#base-output", False), ("#tuned-output", True)):
            history = [{"role": "user", "content": "नमस्ते, आप कैसे हैं?"}]
            history.append({"role": "assistant", "content": reply(history, adapter)})
            history.append({"role": "user", "content": "और बताइए"})
            history.append({"role": "assistant", "content": reply(history, adapter)})
            shown = " ".join(page.inner_text(side).split())
            at = 0
            for message in history:  # every turn, in order (both replies may be the same text)
                at = shown.find(" ".join(message["content"].split()), at)
                assert at >= 0, (side, shown, history)
                at += 1
            tuned_history = history
        page.click("#show input")  # with the box empty: the exact text the last tuned reply continued
        page.wait_for_function("() => document.querySelector('#seen-text textarea')?.value.length > 0")
        expected = render_input(chat.cfg, "chat", chat.tokenizer, tuned_history[:-1])
        assert page.input_value("#seen-text textarea") == expected
        page.close()
    finally:
        app.close()


@pytest.mark.slow
def test_stop_button_ends_a_long_answer(browser, pg):
    """Max new tokens 2048, Stop as soon as the base has started: it ends there, and the tuned side never starts."""
    from unsloth_sft.app.playground_ui import build_app, launch

    port = free_port()
    app = launch(build_app(pg), port, block=False)
    try:
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_selector("#generate")
        page.fill("#max-new-tokens input[type=number]", "2048")
        page.press("#max-new-tokens input[type=number]", "Enter")
        page.click("#generate")
        page.wait_for_function("() => document.querySelector('#base-output textarea')?.value.length > 0")
        page.click("#stop")
        assert wait_done(page) == "stopped"
        base = page.input_value("#base-output textarea")
        assert 0 < len(pg.tokenizer(base, add_special_tokens=False).input_ids) < 2048
        assert page.input_value("#tuned-output textarea") == ""
        page.close()
    finally:
        app.close()
