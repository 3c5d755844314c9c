"""The training engine: the only place (with serving/) that imports torch, transformers and peft.

Import submodules directly; this package's ``__init__`` stays free of heavy imports so that
``openft.training.spec`` can be used by the worker and services without loading torch.
"""
