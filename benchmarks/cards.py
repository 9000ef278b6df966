"""The model cards in ``model_cards/``: each benchmark script renders the card of its headline model there, with
hfprune's own template (`hfprune.hub.render_model_card`), and says which command rendered it."""

from __future__ import annotations

from pathlib import Path
from typing import Any


REPO = Path(__file__).resolve().parents[1]
CARDS = REPO / "model_cards"


def with_provenance(card: str, command: str, variant: str) -> str:
    """``card`` with a comment naming the command and variant that rendered it, after the YAML metadata (which
    must stay first for the Hub to read it)."""
    note = f"<!-- Rendered by `{command}` ({variant}); the benchmark rewrites this file each time it runs. -->\n"
    if card.startswith("---\n"):
        end = card.index("\n---\n", 4) + len("\n---\n")
        return card[:end] + note + card[end:]
    return note + card


def write_card(name: str, model: Any, *, command: str, variant: str, base_model: str, **card: Any) -> Path:
    """Render ``model``'s card (``card``: `render_model_card`'s keywords) into ``model_cards/<name>.md``."""
    from hfprune.hub import render_model_card

    pruning_config = card.pop("pruning_config", None)
    report = card.pop("report", None)
    base_report = card.pop("base_report", None)
    card.setdefault("model_name", name)  # the base model's folder name ("final", "data") says nothing
    rendered = render_model_card(model, base_model, pruning_config, report, base_report, **card)
    path = CARDS / f"{name}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(with_provenance(str(rendered), command, variant))
    return path
