"""Errors that carry one clear sentence for the user."""


class UnlearnkitError(Exception):
    """Base class: the message is meant to be shown to the user as-is."""


class ConfigError(UnlearnkitError):
    pass


class DataError(UnlearnkitError):
    pass


class ModelLoadError(UnlearnkitError):
    pass


class TrainingError(UnlearnkitError):
    pass


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a command, with a sentence saying what was kept and what can be done."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message
