"""Snake engine throughput: env steps/s and scripted-agent moves/s per board size (pure Python, 1 core).

    .venv/bin/python benchmarks/snake_env.py [--grids 8 10 12 16] [--seconds 0.5]

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
        # ------------------------------------------------------------------ PLACEHOLDER: LLM agent
        # In-game LLM moves/s (prompt = render.text_view(state), one generation per move) goes here,
        # once the Snake task's LLM agent exists. Not implemented on purpose.
        # ------------------------------------------------------------------------------------------


if __name__ == "__main__":
    main()
