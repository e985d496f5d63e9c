"""What pybus keeps on disk, in SQLite: the dead-letter queue and the work-queue journal."""

from .dlq import DeadLetter, DeadLetterQueue
from .journal import Journal

__all__ = ["DeadLetter", "DeadLetterQueue", "Journal"]
