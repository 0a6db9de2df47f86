"""``python -m jaxcnn`` is the same as the ``jaxcnn`` command."""

from jaxcnn.cli import entry_point

entry_point()
