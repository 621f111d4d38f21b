"""The trainer: a dataset snapshot in, a calibrated small model served by Triton out.

snapshot (read + validate) -> finetune -> export ONNX (+ int8) -> calibrate + evaluate on the
holdout -> Triton model repository (load + verify) -> model card -> ModelRegistered.
Heavy imports (torch, transformers, optimum) stay inside the modules that need them.
"""
