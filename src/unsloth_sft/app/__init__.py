"""What users run: the `unsloth-sft` command (`cli` parses, `commands` has one function per command) and the
playground page (`playground` does the work, `playground_ui` is its Gradio layout)."""
