"""The one error type users see. Message = what happened, to which file; hint = what to do."""

from __future__ import annotations


class InstantLoraError(Exception):
    """A problem the user can act on. The CLI prints it in one line and exits non-zero; the UI shows it."""

    def __init__(self, message: str, hint: str | None = None, path: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.path = str(path) if path is not None else None

    def __str__(self) -> str:
        return f"{self.message}\n  -> {self.hint}" if self.hint else self.message


class UnsupportedModel(InstantLoraError):
    """A readable checkpoint of a kind this trainer does not train (SDXL refiner, SD3, FLUX,
    inpainting, ...): refused before a run starts, unlike a file that merely fails to read."""
