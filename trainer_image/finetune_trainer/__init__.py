"""finetune-trainer: the code a FineTuneJob's pods run.

Pull the base model and data from object storage, validate and tokenize, train with torchrun and
DeepSpeed, checkpoint and resume, evaluate, push artifacts, report progress, and serve the result.
Only ``config`` is importable without torch.
"""

__version__ = "0.1.0"
