"""Prompt templates shipped as files, loaded into LlamaIndex ``PromptTemplate``s.

Each template's variables are checked when it is loaded, so a typo in a template file fails at
start-up, not in the middle of a query.
"""

from __future__ import annotations

from importlib import resources

from llama_index.core.prompts import PromptTemplate
from llama_index.core.prompts.utils import get_template_vars

from rag.errors import ConfigError

# template name -> the variables it must use (exactly)
VARIABLES: dict[str, set[str]] = {
    "caption": set(),
    "rerank": {"k", "instruction", "caption"},
    "rerank_text": {"k", "instruction"},
    "reason": {"instruction", "caption", "top"},
}

__all__ = ["VARIABLES", "load_prompt", "template_variables"]


def template_variables(text: str) -> set[str]:
    """Variables as LlamaIndex sees them: ``{name}``; other braces (a JSON example) stay text."""
    return set(get_template_vars(text))


def load_prompt(name: str, text: str | None = None) -> PromptTemplate:
    """The template ``prompts/<name>.txt`` (or ``text`` to override it), variables checked."""
    if name not in VARIABLES:
        raise ConfigError(f"unknown prompt {name!r}; known: {sorted(VARIABLES)}")
    if text is None:
        text = resources.files(__name__).joinpath(f"{name}.txt").read_text(encoding="utf-8")
    found = template_variables(text)
    if found != VARIABLES[name]:
        raise ConfigError(
            f"prompt {name!r} must use variables {sorted(VARIABLES[name])}, found {sorted(found)}"
        )
    return PromptTemplate(text.strip())
