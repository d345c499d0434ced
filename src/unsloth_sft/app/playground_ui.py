"""The playground's Gradio page and server: the layout and its events; the work is in `playground`."""

from __future__ import annotations

import os
from pathlib import Path

from unsloth_sft import tasks
from unsloth_sft.app.playground import (
    DEFAULT_PORT,
    HOST,
    Playground,
    check_port,
    check_ui_installed,
    finished_run,
    generation_config,
    load_playground,
    render_input,
    report_markdown,
    stream_answer,
    token_pieces,
)
from unsloth_sft.core.errors import DataError, RunError


def _image(path: Path):
    """A PNG of the run as a PIL image (a path would open the run folder to Gradio's file server)."""
    if not path.is_file():
        return None
    from PIL import Image

    with Image.open(path) as img:
        return img.copy()


def _turn(history: list[dict], message: str, reply: str | None = None) -> list[dict]:
    """A conversation with the user's next message (and the model's reply, once there is one)."""
    out = [*history, {"role": "user", "content": message}]
    return out if reply is None else [*out, {"role": "assistant", "content": reply}]


def build_app(pg: Playground):
    """Input fitted to the task, base and tuned side by side, the prompt and tokens, settings, the Report tab."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    ecfg, task, tok, record = pg.cfg.eval, pg.task, pg.tokenizer, tasks.get(pg.task)
    chat = record.shape == "messages"  # a conversation: a chat box, turn after turn
    device = next(pg.model.parameters()).device
    source = f"{pg.cfg.model.name} + the run's LoRA adapter" if pg.has_base else "the run's merged model"
    first = pg.examples[0] if pg.examples else ("", "")
    choices = [f"{i + 1}. {given[:70].replace(chr(10), ' ')}" for i, (given, _) in enumerate(pg.examples)]
    output = gr.Chatbot if chat else gr.Textbox
    img_args = dict(interactive=False, buttons=["download", "fullscreen"])  # no "share" to a Hub discussion
    out_args = dict(buttons=["copy"], feedback_options=None) if chat else dict(lines=8, max_lines=30)

    with gr.Blocks(title=f"unsloth-sft playground: {pg.cfg.run_name}", analytics_enabled=False) as app:
        gr.Markdown(
            f"## unsloth-sft playground: {pg.cfg.run_name}\n{source} · task **{task}** · device {device} · "
            "the text is rendered with the run's own template, as in training"
        )
        with gr.Tab("Playground"):
            example = gr.Dropdown(
                choices, value=choices[0] if choices else None, label=f"Example from the run's {pg.examples_from}"
            )
            with gr.Row():
                text = gr.Textbox(first[0], label=record.input_label, lines=3 if chat else 8, elem_id="input")
                reference = gr.Textbox(
                    first[1],
                    label="Reference (the example's own answer)",
                    lines=3 if chat else 8,
                    interactive=False,
                    elem_id="reference",
                )
            with gr.Row():
                send = gr.Button("Send" if chat else "Generate", variant="primary", elem_id="generate")
                stop = gr.Button("Stop", variant="stop", elem_id="stop")
                clear = gr.Button("Clear", elem_id="clear")
            status = gr.Markdown("", elem_id="status")
            if not pg.has_base:
                gr.Markdown(f"**{pg.no_base_reason}**", elem_id="no-base")
            with gr.Row():
                with gr.Column(visible=pg.has_base):
                    base_out = output(label="Base (adapter off)", elem_id="base-output", **out_args)
                with gr.Column():
                    tuned_out = output(label="Tuned", elem_id="tuned-output", **out_args)
            show = gr.Checkbox(label="Show the exact text and tokens the model sees", elem_id="show")
            with gr.Group(visible=False) as seen:
                seen_text = gr.Textbox(label="Prompt text (special tokens included)", lines=6, elem_id="seen-text")
                seen_tokens = gr.HighlightedText(
                    label="Tokens",
                    combine_adjacent=False,
                    show_legend=False,
                    show_inline_category=False,
                    color_map={"0": "#dbeafe", "1": "#fde68a"},
                )
                seen_ids = gr.Textbox(label="Token ids", lines=2, elem_id="seen-ids")
            with gr.Accordion("Generation settings (defaults: the run's eval section)", open=True):
                with gr.Row():
                    max_new = gr.Slider(
                        1, 2048, ecfg.max_new_tokens, step=1, label="Max new tokens", elem_id="max-new-tokens"
                    )
                    decoding = gr.Radio(
                        ["greedy", "sample"], value="sample" if ecfg.do_sample else "greedy", label="Decoding"
                    )
                    temperature = gr.Slider(0.05, 2.0, ecfg.temperature, step=0.05, label="Temperature (sample)")
                    top_p = gr.Slider(0.05, 1.0, ecfg.top_p, step=0.05, label="Top-p (sample)")
                    penalty = gr.Slider(1.0, 2.0, ecfg.repetition_penalty, step=0.05, label="Repetition penalty")
            histories = gr.State(([], []))  # chat: the base's and the tuned model's conversations, each its own replies
        with gr.Tab("Report"):
            report = gr.Markdown(report_markdown(pg.run), elem_id="report")
            with gr.Row():
                loss_img = gr.Image(
                    _image(pg.run.loss_plot), type="pil", label="Loss curve", elem_id="loss-curve", **img_args
                )
                metrics_png = pg.run.eval_dir() / "metrics.png"
                metrics_img = gr.Image(
                    _image(metrics_png), type="pil", label="Base vs tuned", elem_id="metrics-chart", **img_args
                )

        def pick(choice: str):
            return pg.examples[choices.index(choice)] if choice in choices else (gr.update(), gr.update())

        def prompt_of(history: list[dict], value: str) -> str:
            return render_input(pg.cfg, task, tok, _turn(history, value) if chat else value)

        def shown(value: str, hist, visible: bool):
            if not visible:
                return gr.update(visible=False), "", [], ""
            try:
                if chat and not value.strip() and hist[1]:  # nothing typed yet: what the last tuned reply continued
                    prompt = render_input(pg.cfg, task, tok, hist[1][:-1])
                else:
                    prompt = prompt_of(hist[1], value)
            except DataError as err:
                return gr.update(visible=True), f"(cannot render: {err})", [], ""
            pieces = token_pieces(tok, prompt)
            marks = [(piece, str(n % 2)) for n, (_, piece) in enumerate(pieces)]  # alternate colours: boundaries
            ids = f"{len(pieces)} tokens: " + " ".join(str(i) for i, _ in pieces)
            return gr.update(visible=True), prompt, marks, ids

        def respond(value: str, hist, max_new_tokens, decoding_, temperature_, top_p_, penalty_):
            pg.stop.clear()
            settings = generation_config(ecfg, max_new_tokens, decoding_, temperature_, top_p_, penalty_)
            base_hist, tuned_hist = hist if chat else ([], [])
            try:
                prompts = prompt_of(base_hist, value), prompt_of(tuned_hist, value)
            except DataError as err:
                yield gr.update(), gr.update(), f"**Cannot render this input:** {err}", hist, gr.update()
                return

            def view(base: str, tuned: str, note: str, new_hist=hist, box=None):
                box = gr.update() if box is None else box
                if chat:
                    return _turn(base_hist, value, base), _turn(tuned_hist, value, tuned), note, new_hist, box
                return base, tuned, note, new_hist, box

            base = ""
            if pg.has_base:
                for base in stream_answer(pg, prompts[0], settings, base=True):
                    yield view(base, "", "generating: base (adapter off) ...")
            if pg.stop.is_set():
                yield view(base, "", "stopped")
                return
            tuned = ""
            for tuned in stream_answer(pg, prompts[1], settings):
                yield view(base, tuned, "generating: tuned ...")
            note = "stopped" if pg.stop.is_set() else "done"
            if chat:  # each side keeps its own replies; the box empties for the next message
                yield view(base, tuned, note, (_turn(base_hist, value, base), _turn(tuned_hist, value, tuned)), "")
            else:
                yield view(base, tuned, note)

        def reset():
            pg.stop.set()
            return ([] if chat else ""), ([] if chat else ""), "", ([], [])

        seen_out = [seen, seen_text, seen_tokens, seen_ids]
        example.change(pick, example, [text, reference])
        show.change(shown, [text, histories, show], seen_out)
        text.change(shown, [text, histories, show], seen_out)
        for trigger in (send.click, text.submit):
            trigger(
                respond,
                [text, histories, max_new, decoding, temperature, top_p, penalty],
                [base_out, tuned_out, status, histories, text],
                concurrency_limit=1,  # one model in memory, and the adapter switch is global to it
                concurrency_id="generate",
            ).then(shown, [text, histories, show], seen_out)
        stop.click(pg.stop.set, None, None, queue=False)
        for clearing in (clear.click, base_out.clear, tuned_out.clear) if chat else (clear.click,):
            clearing(reset, None, [base_out, tuned_out, status, histories], queue=False)  # both sides start over
        app.load(
            lambda: (report_markdown(pg.run), _image(pg.run.loss_plot), _image(metrics_png)),
            None,
            [report, loss_img, metrics_img],
        )
    return app


def launch(app, port: int = DEFAULT_PORT, block: bool = True):
    """Serve a built page on 127.0.0.1:port, never with a public share link; block until Ctrl-C unless told not to."""
    import gradio as gr

    theme = gr.themes.Soft(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])  # no web fonts
    try:
        app.queue().launch(
            server_name=HOST,
            server_port=port,
            share=False,
            inbrowser=False,
            quiet=True,
            show_error=True,  # a failed generation's message in the page, not only in this terminal
            prevent_thread_lock=True,
            theme=theme,
        )
    except OSError as err:  # taken since check_port looked
        raise RunError(f"port {port} on {HOST} is in use ({err}); pass another one, e.g. --port {port + 1}") from None
    print(f"playground: http://{HOST}:{port}  (Ctrl-C stops it)", flush=True)
    if block:
        app.block_thread()
    return app


def serve(path: str | os.PathLike, port: int = DEFAULT_PORT, block: bool = True):
    """`unsloth-sft chat`: check what is cheap to check, load the model once, serve the page; returns the app."""
    finished_run(path)
    check_port(port)
    check_ui_installed()
    return launch(build_app(load_playground(path)), port, block)
