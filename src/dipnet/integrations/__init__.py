"""Adapters to other training engines, each an optional extra imported on its own:
``dipnet.integrations.hf`` (Hugging Face ``Trainer``: ``pip install 'dipnet[llm]'``) and
``dipnet.integrations.lightning`` (PyTorch Lightning: ``pip install 'dipnet[lightning]'``)."""
