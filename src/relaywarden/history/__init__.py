"""The message history: every message's arrival, attempts and outcome, searchable after it
has left the queue. Fed from the queue's journal by the admin process (indexer.py)."""

from relaywarden.history.store import STATUSES, History, HistoryError, message_status, parse_since

__all__ = ["STATUSES", "History", "HistoryError", "message_status", "parse_since"]
