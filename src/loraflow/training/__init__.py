"""LoRA / QLoRA fine-tuning: presets, trainer, background jobs."""
