"""The errors a user can cause and fix: printed by the CLI as one line with exit code 2.

Every error a person can act on (a bad config value, missing data, a checkpoint that does not fit,
a run that stopped itself) derives from UserError; anything else is a bug and keeps its traceback.
UserError derives from ValueError so that code catching ValueError around parsing keeps working.
"""

from __future__ import annotations


class UserError(ValueError):
    """Something the user asked for or handed in cannot be used; the message says what and why."""


class ConfigError(UserError):
    """A bad configuration value or argument; the message names the key or flag and what is allowed."""


__all__ = ["UserError", "ConfigError"]
