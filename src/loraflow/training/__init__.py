"""LoRA / QLoRA fine-tuning: params, model, batching, trainer, jobs, worker, runner."""
