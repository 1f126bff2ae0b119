"""Deployment targets for a poolx export: `write_triton_repo` writes a Triton Inference Server model repository."""

from poolx.deploy.triton import write_triton_repo

__all__ = ["write_triton_repo"]
