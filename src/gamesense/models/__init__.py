"""Model layer: provisioning base models, loading them (optionally 4-bit) and attaching LoRA adapters."""
