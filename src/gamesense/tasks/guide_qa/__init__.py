"""Guide Q&A: answer players' questions about a game, from question-answer pairs a teacher model writes out of
the game's guides. ``ingest`` -> ``chunking`` -> ``prompts`` -> ``filters`` -> ``synth`` build the data
(``gamesense synth qa``, in ``commands``); ``task`` is the task plugin."""

from gamesense.tasks.guide_qa.task import TASK, GuideQATask

__all__ = ["TASK", "GuideQATask"]
