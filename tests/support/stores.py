"""The queue's two sides with hand-off on, as the relay's processes open them."""

from __future__ import annotations

from pathlib import Path

from relaywarden.queue.store import Store


def stores(data: Path, layout: str, files=None) -> tuple[Store, Store]:
    """The receiving store (hand-off) and the one that delivers: the same store
    (``inline``), or a delivery process's that follows the log (``separate``). ``files``:
    the delivering side's file operations (inline: used for SQLite only, not the log)."""
    receiving = Store.open(data)
    receiving.start_handoff(deliver_here=layout == "inline")
    if layout == "inline":
        if files is not None:
            receiving.files = files
        return receiving, receiving
    delivering = Store.open(data, **({} if files is None else {"files": files}))
    delivering.start_following()
    return receiving, delivering
