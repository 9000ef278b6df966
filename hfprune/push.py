"""Upload a saved pruned model folder to the Hugging Face Hub."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import HfPruneError


class HubError(HfPruneError, RuntimeError):
    """The Hub could not be reached or refused the upload; the local folder is untouched."""


def commit_operations(folder: str | os.PathLike, repo_id: str | None = None) -> list:
    """The `CommitOperationAdd` list for every file of ``folder`` (weights, config, plan, card, remote code).

    With ``repo_id``, the card's loading snippets point at the repository instead of the local placeholder path
    (the local ``README.md`` is not modified).
    """
    from huggingface_hub import CommitOperationAdd

    from .hub import CARD_PLACEHOLDER_PATH

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise HfPruneError(f"{folder} has no config.json: push a folder written by `hfprune prune` or save_pruned.")
    from .hub import MANIFEST_NAME

    # The manifest is local bookkeeping (what `overwrite` may replace); a Hub repo has its own history.
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and p.relative_to(folder).as_posix() != MANIFEST_NAME
    )
    operations = []
    for path in files:
        content: str | bytes = str(path)
        if repo_id is not None and path.relative_to(folder).as_posix() == "README.md":
            content = path.read_text(encoding="utf-8").replace(CARD_PLACEHOLDER_PATH, repo_id).encode("utf-8")
        operations.append(
            CommitOperationAdd(path_in_repo=path.relative_to(folder).as_posix(), path_or_fileobj=content)
        )
    return operations


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    commit_message: str = "Upload pruned model with hfprune",
) -> str:
    """Create ``repo_id`` if needed and commit every file of ``folder`` in one commit; returns the commit URL."""
    from huggingface_hub import HfApi, get_token

    operations = commit_operations(folder, repo_id)
    token = token or get_token()
    if not token:
        raise HubError(
            "No Hugging Face token: run `huggingface-cli login` or set HF_TOKEN, then push again. "
            f"Nothing was uploaded; {folder} is unchanged."
        )
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision is not None:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.create_commit(repo_id, operations=operations, commit_message=commit_message, revision=revision)
    except HfPruneError:
        raise
    except Exception as err:  # network errors, offline mode, auth: all end the same way for the user
        raise HubError(
            f"Could not push {folder} to {repo_id}: {type(err).__name__}: {err}. The local folder is unchanged; "
            "check the network, HF_HUB_OFFLINE and your token, then retry."
        ) from err
    return str(getattr(info, "commit_url", info))
