"""``python -m gamesense`` (also what ``accelerate launch -m gamesense finetune`` runs on every process)."""

from gamesense.cli import main

main()
