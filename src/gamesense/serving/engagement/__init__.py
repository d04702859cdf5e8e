"""The engagement model in production: :mod:`~gamesense.serving.engagement.predictor` (a registered version loaded,
scored by a vectorised predictor over compiled trees, :mod:`~gamesense.serving.engagement.compiled_trees`),
:mod:`~gamesense.serving.engagement.batch` (files scored, rejects kept) and :mod:`~gamesense.serving.engagement.api`
(the online API that follows the champion alias)."""
