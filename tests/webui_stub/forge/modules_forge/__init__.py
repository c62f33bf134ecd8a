"""Forge's own package (its presence is how the extension recognises WebUI Forge)."""
