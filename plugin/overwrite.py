"""Refusals for want of ``overwrite``, worded by each interface in its own control.

The error carries what exists (``.what``), the field or key (``.field``) and the other way out
(``.alternative``); its message is the Python wording (``pass overwrite=True``), and
:func:`worded` gives the CLI's (``--overwrite``) or the App's (the *Overwrite* checkbox), so no
interface repeats another's logic or speaks another's language.
"""
from __future__ import annotations

__all__ = ["CONTROLS", "NeedsOverwrite", "worded"]

#: interface -> how it asks for ``overwrite``
CONTROLS = {"python": "pass overwrite=True", "cli": "pass --overwrite", "app": "tick the Overwrite checkbox"}


class NeedsOverwrite(Exception):
    """Base of the refusals that ``overwrite`` lifts (combined with the built-in type callers
    catch, e.g. ``class OutputExistsError(NeedsOverwrite, ValueError)``)."""

    def __init__(self, what: str, field: str | None = None, alternative: str = ""):
        self.what, self.field, self.alternative = what, field, alternative
        super().__init__(self.worded("python"))

    def worded(self, interface: str = "python") -> str:
        """The message with ``interface``'s control (``python``, ``cli``, ``app``)."""
        text = f"{self.what}; {CONTROLS[interface]} to replace it"
        return text + (f", or {self.alternative}" if self.alternative else "")

    def __reduce__(self):  # pickles (worker processes) with the parts, not the worded message
        return (type(self), (self.what, self.field, self.alternative))


def worded(err: BaseException, interface: str) -> str:
    """``str(err)``, in ``interface``'s words when ``err`` is a :class:`NeedsOverwrite`."""
    return err.worded(interface) if isinstance(err, NeedsOverwrite) else str(err)
