"""Training engine: method interface, loop, checkpoints."""
from .method import Component, Method, StepContext, build_method, method_names, register_component

__all__ = ["Component", "Method", "StepContext", "build_method", "method_names", "register_component"]
