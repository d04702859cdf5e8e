"""Snake engine throughput: env steps/s and scripted-agent moves/s per board size (pure Python, 1 core),
and with ``--llm`` a model's in-game moves/s.

    .venv/bin/python benchmarks/snake_env.py [--grids 8 10 12 16] [--seconds 0.5] [--llm MODEL]

For each grid, games are played back to back (seeds 0, 1, ...) for ``--seconds`` per agent:

- random agent: ``env steps/s`` = ``SnakeEnv.step`` alone; ``loop steps/s`` = ``env.state()`` +
  ``RandomAgent.act`` + ``env.step``, i.e. what a rollout costs.
- heuristic agent: ``moves/s`` = ``HeuristicAgent.act`` alone (BFS); ``loop steps/s`` as above.

Timers wrap each call, so the per-call overhead of ``perf_counter`` (~0.1 us) is included.
"""

from __future__ import annotations

import argparse
import statistics
import time

from gamesense.tasks.snake.agents import HeuristicAgent, RandomAgent
from gamesense.tasks.snake.game import SnakeEnv


def measure(agent_name: str, grid: int, seconds: float) -> dict[str, float]:
    """Play games until ``seconds`` of wall time have passed (the last game is finished)."""
    clock = time.perf_counter
    env = SnakeEnv(grid)
    steps = 0
    agent_s = env_s = 0.0
    scores = []
    seed = 0
    start = clock()
    while clock() - start < seconds:
        agent = RandomAgent(seed) if agent_name == "random" else HeuristicAgent(seed)
        env.reset(seed=seed)
        terminated = False
        while not terminated:
            t0 = clock()
            move = agent.act(env.state())
            t1 = clock()
            _, _, terminated, _, _ = env.step(move)
            t2 = clock()
            agent_s += t1 - t0
            env_s += t2 - t1
            steps += 1
        scores.append(env.score)
        seed += 1
    total = clock() - start
    return {
        "games": len(scores),
        "steps": steps,
        "env_steps_per_s": steps / env_s,
        "agent_moves_per_s": steps / agent_s,
        "loop_steps_per_s": steps / total,
        "mean_score": statistics.fmean(scores),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grids", type=int, nargs="+", default=[8, 10, 12, 16])
    parser.add_argument("--seconds", type=float, default=0.5, help="time per (agent, grid)")
    parser.add_argument("--llm", help="also time a model playing (base id/path, adapter dir, models:/...)")
    parser.add_argument("--llm-games", type=int, default=8, help="games per grid for the model")
    parser.add_argument("--llm-steps", type=int, default=30, help="moves per game for the model")
    args = parser.parse_args()

    header = (
        f"{'grid':>5} {'agent':>10} {'games':>6} {'env steps/s':>12} {'agent moves/s':>14} "
        f"{'loop steps/s':>13} {'mean score':>11}"
    )
    print(header)
    print("-" * len(header))
    for grid in args.grids:
        for agent_name in ("random", "heuristic"):
            r = measure(agent_name, grid, args.seconds)
            print(
                f"{grid:>5} {agent_name:>10} {r['games']:>6} {r['env_steps_per_s']:>12,.0f} "
                f"{r['agent_moves_per_s']:>14,.0f} {r['loop_steps_per_s']:>13,.0f} {r['mean_score']:>11.1f}"
            )
    if args.llm:
        llm_moves_per_s(args.llm, args.grids, args.llm_games, args.llm_steps)


def llm_moves_per_s(model_ref: str, grids: list[int], games: int, steps: int) -> None:
    """In-game moves/s of a model playing with the snake recipe's prompt, three ways in one run: all games
    in lockstep with one forward pass per move (what evaluation does), one game at a time, and the
    lockstep games scored as four full candidate sequences instead of one next-token comparison."""
    from gamesense.config import load_recipe
    from gamesense.evaluation.policy import ModelPolicy
    from gamesense.models.refs import load_for_inference
    from gamesense.tasks import get_task
    from gamesense.training.recipe import LLMRecipe

    recipe = load_recipe("snake", LLMRecipe)
    task = get_task("snake", recipe.task_options)
    model = load_for_inference(model_ref, dtype=recipe.model.dtype)
    plan = [(g, 1000 + i) for g in grids for i in range(games)]

    class FullSequences(ModelPolicy):
        """Forces the general path: every prompt x candidate sequence scored."""

        def choose(self, prompts, choices):
            return super().choose(prompts, [[f"{c} " for c in row] for row in choices])  # 2 tokens each

    one_at_a_time = recipe.generation.model_copy(update={"batch_size": 1})
    ways = {
        f"{len(plan)} games in lockstep": (ModelPolicy(model, "batched", recipe.generation), plan),
        "one game at a time": (ModelPolicy(model, "single", one_at_a_time), plan[: len(grids)]),
        "4 full sequences per move": (FullSequences(model, "full", recipe.generation), plan),
    }
    print(f"\nLLM agent {model_ref} ({model.description}), games capped at {steps} moves")
    rates = {}
    for name, (policy, games_played) in ways.items():
        results, seconds = task.play(policy, games_played, max_steps=steps, progress=False)
        rates[name] = sum(r.steps for r in results) / seconds
        print(f"  {name:28s} {rates[name]:8.1f} moves/s ({sum(r.steps for r in results)} moves, {seconds:.1f} s)")
    base = rates[f"{len(plan)} games in lockstep"]
    print("  ratios: lockstep / one at a time = {:.1f}x, next-token / full sequences = {:.1f}x".format(
        base / rates["one game at a time"], base / rates["4 full sequences per move"]))


if __name__ == "__main__":
    main()
