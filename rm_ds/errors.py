"""The errors a user can fix, and the exit code each one ends ``rm-ds`` with.

The README's exit-code table is this module:

=====  ==========================================  ===============================================
code   class                                       printed as (one line, once, rank 0)
=====  ==========================================  ===============================================
0      (success)
1      anything else: a bug, or a crash            its traceback
2      ``ConfigError``: a config key or option     ``rm-ds: config error: train.lr: must be > 0``
3      ``DataError``: an input file's contents     ``rm-ds: data error: a.jsonl line 2: field 'rejected': missing``
4      a rank died or stopped responding           ``rm-ds: rank 0: a collective timed out ...``
5      a non-finite training step                  ``rm-ds: step N: non-finite training step ...``
6      ``AddressInUse``: ``rm-ds serve``'s port    ``rm-ds: port in use: 127.0.0.1:8000 is already taken ...``
=====  ==========================================  ===============================================

Codes 4 and 5 come from the training loop (``rm_ds.cluster.dist``, ``rm_ds.train.faults``), not from a
``UserError``. Every ``UserError`` message names where the problem is: the config key or command-line
option, or the file, its line (or row) and the field.
"""

from __future__ import annotations

EXIT_BUG = 1
EXIT_PEER_LOST = 4
EXIT_NON_FINITE = 5


class UserError(ValueError):
    """Bad input the user can fix: ``rm-ds`` prints ``rm-ds: <kind>: <message>`` and exits ``exit_code``."""

    exit_code = EXIT_BUG
    kind = "error"

    def line(self) -> str:
        """The one line ``rm-ds`` prints (newlines in the message joined)."""
        return " ".join(f"rm-ds: {self.kind}: {self}".splitlines())


class ConfigError(UserError):
    """A config value or key, or a command-line option, is wrong; the message names the key or option."""

    exit_code = 2
    kind = "config error"


class DataError(UserError):
    """Bad input data; the message names the file (or dataset), the row or line, and the field."""

    exit_code = 3
    kind = "data error"


class AddressInUse(UserError):
    """``rm-ds serve``: the host and port to listen on are taken (checked before any model loads)."""

    exit_code = 6
    kind = "port in use"
