"""LoRA: which modules get adapters (targets), peft injection (layers), the kohya file (kohya_file)."""
