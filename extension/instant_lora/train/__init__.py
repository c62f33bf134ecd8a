"""Training: plan (derived numbers) -> loop (emits events, obeys a control) -> saved files."""
