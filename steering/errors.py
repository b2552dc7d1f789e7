"""Errors a user sees. Every message names the bad value and what would be valid."""


class SteeringError(Exception):
    """Base class: the message is user-facing and safe to show in the UI or an API answer."""


class ModelLoadError(SteeringError):
    """A model or tokenizer could not be loaded, or its decoder layers could not be found."""


class SAELoadError(SteeringError):
    """SAE files are missing, of an unknown format, corrupt, or unsupported for steering."""


class PlanError(SteeringError):
    """A steering plan does not fit the SAE or model it is applied to (index, layer, value)."""
