"""Snake game agent task: the game engine (``game``), text and GIF views (``render``), scripted agents
(``agents``) and the JSONL trajectory format (``trajectories``)."""
