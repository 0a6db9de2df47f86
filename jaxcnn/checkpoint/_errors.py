"""What can go wrong with checkpoints: unreadable or unwritable ones, a resume that does
not fit, and a run stopped by a signal."""

from __future__ import annotations

from typing import Mapping

from jaxcnn.errors import JaxcnnError


class CheckpointError(JaxcnnError):
    """A checkpoint that cannot be written, found or read.

    Example:
      >>> issubclass(CheckpointError, JaxcnnError)
      True
    """


class ResumeMismatchError(CheckpointError):
    """The config differs from the checkpoint's in a field that resuming needs unchanged.

    Attributes:
      differences: ``{"section.field": (checkpoint value, new value)}``.

    Example:
      >>> e = ResumeMismatchError("differs", differences={"model.name": ("a", "b")})
      >>> e.differences["model.name"]
      ('a', 'b')
    """

    def __init__(self, message: str, *, differences: Mapping[str, tuple]):
        super().__init__(message)
        self.differences = dict(differences)


class Preempted(Exception):
    """Training stopped on SIGTERM/SIGINT after saving a checkpoint; run again to resume.

    Not a :class:`~jaxcnn.errors.JaxcnnError`: nothing was wrong with the
    input. The command line exits with ``EXIT_PREEMPTED`` (75).

    Attributes:
      step: the step that was saved.
      workdir: the run directory to resume from.
      signal_name: ``SIGTERM`` or ``SIGINT``.

    Example:
      >>> str(Preempted(step=7, workdir="runs/a", signal_name="SIGTERM")).split(";")[0]
      'SIGTERM: saved step 7 in runs/a'
    """

    def __init__(self, *, step: int, workdir: str, signal_name: str):
        super().__init__(f"{signal_name}: saved step {step} in {workdir}; run the same command "
                         "again to resume")
        self.step, self.workdir, self.signal_name = step, workdir, signal_name
