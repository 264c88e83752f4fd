"""Subspaces learned online, with no curvature product: a PCA of each parameter block's
recent updates (:class:`UpdateHistory`) or a streamed sketch of its gradient covariance
(:class:`GradientSketch`). Pass one to :class:`~subspace_optim.SubspaceProjectedOptimizer`
in place of a curvature operator; :class:`SubspaceSource` is the protocol for new ones."""

from .history import UpdateHistory
from .protocol import SubspaceSource
from .sketch import GradientSketch

__all__ = ["GradientSketch", "SubspaceSource", "UpdateHistory"]
