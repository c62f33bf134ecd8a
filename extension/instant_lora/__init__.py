"""Instant LoRA: the trainer package shared by the WebUI tab, the standalone app and the CLI.

Data flows one way: dataset -> captions -> cache -> train -> save -> test.
Importing this package imports no torch; the heavy modules load on first use.
"""

__version__ = "0.1.0"
