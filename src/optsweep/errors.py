"""Errors meant for the person at the keyboard: one sentence naming the field, the value and the fix.

run.py prints them without a traceback and exits with status 2 (set HYDRA_FULL_ERROR=1 for the traceback).
"""


class UserError(Exception):
    """A configuration or input problem the user can fix; its message is the whole story."""
