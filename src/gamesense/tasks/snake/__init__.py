"""Snake game agent task: the game engine (``game``), text and GIF views (``render``), scripted agents
(``agents``), the JSONL trajectory format (``trajectories``) and the task plugin (``task``)."""

from gamesense.tasks.snake.task import TASK, SnakeTask

__all__ = ["TASK", "SnakeTask"]
