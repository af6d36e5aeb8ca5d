"""finetune-operator: one FineTuneJob resource becomes a complete LLM fine-tuning run.

This package is the control side: the API models, the Kopf operator, the manifest builders and the
``finetune`` command (validate, operator, run). It never imports torch; the trainer side lives in
``finetune_trainer``.
"""

__version__ = "0.1.0"
