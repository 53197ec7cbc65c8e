"""Adapters to other training engines, each an optional extra imported on its own:
``dipnet.integrations.lightning`` (PyTorch Lightning: ``pip install 'dipnet[lightning]'``)."""
