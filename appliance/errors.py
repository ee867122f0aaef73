"""Exceptions a user can act on.

Every error that reaches the CLI is an ``ApplianceError``: its message is one
sentence naming the problem (and, where there is one, the fix).  The CLI turns
it into one line on stderr and a non-zero exit status; it never prints a
traceback for these.
"""


class ApplianceError(Exception):
    """Base class: a failure with a message meant for the operator."""

    exit_code = 1


class ConfigError(ApplianceError):
    """A configuration file or value is invalid; the message names the key."""

    exit_code = 2


class UsageError(ApplianceError):
    """A command-line argument is invalid."""

    exit_code = 2


class KernelError(ApplianceError):
    """The kernel refused an operation or lacks a feature we need."""


class LabError(ApplianceError):
    """The network-namespace lab could not be built, queried or removed."""
