"""wmplan: planning and control with learned diffusion-forcing video world models."""

from __future__ import annotations

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: importing wmplan must not pull in torch for env-only users.
    if name == "WorldModel":
        from wmplan.rollout import WorldModel

        return WorldModel
    raise AttributeError(name)
