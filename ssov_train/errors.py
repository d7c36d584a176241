"""Errors ssov raises for bad user input: one clear message naming the thing at fault."""


class SsovError(Exception):
    """Base class for errors caused by user input (files, configs, data), not by bugs."""


class ConfigError(SsovError):
    """A configuration file or value is invalid."""


class DataError(SsovError):
    """A dataset file or sample is missing, corrupt or inconsistent."""
