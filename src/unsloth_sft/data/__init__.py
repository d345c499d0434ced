"""Data: a source (`sources`) -> rows matched to a task's fields (`columns`) -> conversations (`rows`, `mix` for
several sources) -> text with the trained spans marked (`prompts`) -> token ids with the prompt masked (`tokenize`).
`examples` is the stage's entry (`load_examples` before a model loads, `prepare` after, `pick_examples`);
`preview` shows what training will see."""
