"""DeRy's own errors: what a user can cause and fix.

Every error DeRy raises on purpose derives from :class:`DeryError` (and, for
compatibility with ``except ValueError`` code, from the matching built-in
class). The tools print them as one line ``error: <message>`` and exit 2
(:func:`dery.cli.run`); anything else is a bug and keeps its traceback.
"""

__all__ = ['DeryError', 'ConfigError', 'UnknownTypeError', 'MissingFileError', 'CheckpointError', 'error_message']


class DeryError(Exception):
    """Base class of the errors DeRy raises on purpose: the message says what is wrong and how to fix it."""


class ConfigError(DeryError, ValueError):
    """A config value, argument or input that cannot work."""


class UnknownTypeError(DeryError, KeyError):
    """A config ``type`` that no registry knows (the message lists the registered names)."""


class MissingFileError(DeryError, FileNotFoundError):
    """A file DeRy needs is not there (the message says where it should be)."""


class CheckpointError(DeryError, RuntimeError):
    """A checkpoint that cannot be loaded, or does not belong to the network it is loaded into."""


def error_message(e):
    """The one-line message of an error (a KeyError's message without its quotes)."""
    if isinstance(e, KeyError) and len(e.args) == 1 and isinstance(e.args[0], str):
        msg = e.args[0]
    else:
        msg = str(e) or type(e).__name__
    return ' '.join(msg.split('\n')).strip()
