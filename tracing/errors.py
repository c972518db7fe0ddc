"""The one exception type that means *bad input*; everything else is a bug.

Usage::

    from diffloc.tracing.errors import DifflocInputError
    raise DifflocInputError("unknown attribute 'hue'; allowed: object, colour, style, viewpoint, count")

The CLI turns a :class:`DifflocInputError` (and only that) into one line ``error: ...`` with
exit code 2; ``diffloc --debug`` shows its traceback too. Any other exception is a bug and
keeps its traceback. Library code raises a subclass naming the bad value and what is allowed.
The subclasses also inherit the builtin type a caller would expect (``ValueError``,
``LookupError``, ``FileNotFoundError``), so ``except ValueError`` keeps working.
"""
from __future__ import annotations


class DifflocInputError(ValueError):
    """Bad input from a user: a value, a file or an option that is not allowed."""


class UsageError(DifflocInputError):
    """A bad command-line option or combination of options."""


class ConfigError(DifflocInputError):
    """A configuration value outside its allowed range (raised in ``__post_init__``)."""


class InputFileError(DifflocInputError, FileNotFoundError):
    """A named input file or folder that does not exist or cannot be read."""


class OutputExistsError(DifflocInputError, FileExistsError):
    """An output path that holds something else (another sweep's config, the source model)."""


class FormatVersionError(DifflocInputError):
    """A file written with a schema version this diffloc cannot read."""
