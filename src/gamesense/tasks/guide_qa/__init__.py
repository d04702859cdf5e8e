"""Guide Q&A: answer players' questions about a game, from question-answer pairs a teacher model writes out of
the game's guides. ``synth`` builds the data (``gamesense synth qa``), ``task`` is the task plugin."""

from gamesense.tasks.guide_qa.task import TASK, GuideQATask

__all__ = ["TASK", "GuideQATask"]
