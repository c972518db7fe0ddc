"""The exception types that mean *bad input*; everything else is a bug.

Usage::

    from diffloc.tracing.errors import DifflocInputError
    raise DifflocInputError("unknown attribute 'hue'; allowed: object, colour, style, viewpoint, count")

The hierarchy of bad input::

    DifflocInputError(ValueError)        the root: a value, a file or an option that is not allowed
    ├── UsageError                       a bad command-line option or combination
    ├── ConfigError                      a config value out of range (``__post_init__``)
    ├── InputFileError(FileNotFoundError) a named file that is missing or cannot be parsed
    │                                    (tracing/io.py's readers; names the file and the line)
    ├── OutputExistsError(FileExistsError) an output path that holds something else
    ├── FormatVersionError               a file from a newer diffloc
    └── subclasses beside their checks:  PromptError (tracing/prompts.py), EditError (editing/records.py)
    SiteError(LookupError)               tracing/sites.py: a malformed site or one the model lacks;
                                         not a DifflocInputError subclass, but bad input too

The CLI (``diffloc/cli/app.py``) turns each of these into one line ``error: ...`` with exit
code 2; ``diffloc --debug`` shows its traceback too. Any other exception is a bug and keeps its
traceback. Library code raises a subclass naming the bad value and what is allowed. The
subclasses also inherit the builtin type a caller would expect (``ValueError``,
``LookupError``, ``FileNotFoundError``), so ``except ValueError`` keeps working.

Some library checks raise plain builtins for library callers: the sampler's ``ValueError``s
(``SamplerConfig`` out of range, token positions or step windows outside the model) guard
arguments that the CLI validates before any work starts (``TraceConfig``, the options of
``diffloc edit`` / ``evaluate``); one that reaches them from the command line is a missing
check, fixed where the option is read, not by catching ``ValueError``.
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

