"""The README's recipe table is generated from the recipe file and the pydantic models: it cannot drift."""

from __future__ import annotations

import re
from pathlib import Path

from gamesense.config import load_recipe, rows_to_markdown
from gamesense.training.recipe import LLMRecipe, llm_recipe_rows
from gamesense.tasks import get_task

README = Path(__file__).resolve().parents[1] / "README.md"


def viggo_rows() -> list[tuple[str, str, str]]:
    recipe = load_recipe("viggo", LLMRecipe)
    options = get_task(recipe.task, recipe.task_options).Options
    return llm_recipe_rows("viggo", options)


def test_readme_recipe_table_matches_the_recipe_file():
    match = re.search(r"<!-- recipe-table: viggo -->\n(.*?)\n<!-- /recipe-table -->", README.read_text(), re.S)
    assert match, "README lost its recipe-table markers"
    assert match.group(1) == rows_to_markdown(viggo_rows()), \
        "README recipe table is stale: paste `gamesense recipe show viggo --markdown`"


def test_every_recipe_key_has_a_meaning():
    assert [key for key, _, meaning in viggo_rows() if not meaning] == []
