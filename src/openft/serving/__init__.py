"""Chat completions over base models, LoRA adapters and full fine-tuned checkpoints (torch loads lazily)."""
