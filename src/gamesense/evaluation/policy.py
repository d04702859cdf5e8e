"""A loaded language model as a :class:`~gamesense.tasks.base.Policy` for rollout evaluations."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gamesense.config import GenerationSection
from gamesense.evaluation.generation import generate_batch
from gamesense.models.decoding import last_token_logits, left_padded
from gamesense.tasks.base import Messages


class ModelPolicy:
    """Acts for a task's environment with a causal LM.

    ``choose`` picks, for each prompt, the candidate answer with the highest total log-probability under the
    model (sum over the answer's tokens, EOS excluded), so the model can never answer outside the candidates:
    when every candidate is one token (Snake's move names), one forward pass per prompt compares their
    next-token logits; otherwise every prompt x candidate sequence is scored. ``generate`` decodes greedily.

    Args:
        model: an :class:`~gamesense.models.refs.InferenceModel` (model + tokenizer).
        name: label in tables (e.g. ``fine-tuned``).
        generation: the recipe's ``generation`` section (``batch_size`` also batches ``choose``).
        stop_strings: where ``generate`` stops (the task's stop strings).
    """

    def __init__(self, model, name: str, generation: GenerationSection, stop_strings: Sequence[str] = ()):
        self.inference, self.name = model, name
        self.generation, self.stop_strings = generation, tuple(stop_strings)

    def _prompt_ids(self, prompts: Sequence[Messages]) -> list[list[int]]:
        tokenizer = self.inference.tokenizer
        return [tokenizer.apply_chat_template(m, tokenize=True, add_generation_prompt=True, return_dict=False)
                for m in prompts]  # fmt: skip

    @torch.inference_mode()
    def choose(self, prompts: Sequence[Messages], choices: Sequence[Sequence[str]]) -> list[int]:
        """Index of the most likely candidate per prompt.

        Args:
            prompts: chat messages, one list per decision.
            choices: candidate answers per prompt (at least one each).

        Returns:
            ``len(prompts)`` indices into the matching ``choices`` row.

        Raises:
            ValueError: a prompt without candidates.
        """
        tokenizer, model = self.inference.tokenizer, self.inference.model
        if any(len(c) == 0 for c in choices):
            raise ValueError("every prompt needs at least one candidate answer")
        prompt_ids = self._prompt_ids(prompts)
        answers = [[tokenizer(option, add_special_tokens=False)["input_ids"] for option in row] for row in choices]
        if all(len(a) == 1 for row in answers for a in row):
            return self._choose_next_token(prompt_ids, [[a[0] for a in row] for row in answers])
        rows, owners, spans = [], [], []
        for i, (ids, options) in enumerate(zip(prompt_ids, answers)):
            for answer in options:
                rows.append(ids + answer)
                owners.append(i)
                spans.append((len(ids), len(ids) + len(answer)))
        width = max(len(r) for r in rows)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        device = next(model.parameters()).device
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for r, ids in enumerate(rows):  # right padding: answer positions stay where spans say
            input_ids[r, : len(ids)] = torch.tensor(ids)
            attention[r, : len(ids)] = 1
        scores = torch.empty(len(rows))
        batch_size = self.generation.batch_size
        for start in range(0, len(rows), batch_size):
            stop = min(start + batch_size, len(rows))
            logits = model(input_ids=input_ids[start:stop].to(device), attention_mask=attention[start:stop].to(device)).logits
            logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
            for r in range(start, stop):
                a, b = spans[r]
                targets = input_ids[r, a:b]
                scores[r] = logprobs[r - start, a - 1 : b - 1].gather(-1, targets[:, None]).sum()
        best: dict[int, tuple[float, int]] = {}
        counters: dict[int, int] = {}
        for r, owner in enumerate(owners):
            k = counters.get(owner, 0)
            counters[owner] = k + 1
            if owner not in best or scores[r] > best[owner][0]:
                best[owner] = (float(scores[r]), k)
        return [best[i][1] for i in range(len(prompts))]

    def _choose_next_token(self, prompt_ids: list[list[int]], candidates: list[list[int]]) -> list[int]:
        """Single-token candidates: one forward pass per prompt, comparing the next-token logits of the
        candidates at the prompt's end (the same ranking as their log-probabilities). Prompts are batched by
        length and left-padded (positions from the attention mask) so only the last position's logits are
        computed (:func:`~gamesense.models.decoding.last_token_logits`)."""
        model = self.inference.model
        pad = self.inference.tokenizer.pad_token_id
        pad = pad if pad is not None else self.inference.tokenizer.eos_token_id
        device = next(model.parameters()).device
        order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
        picks = [0] * len(prompt_ids)
        batch_size = self.generation.batch_size
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            input_ids, attention, positions = (t.to(device) for t in left_padded([prompt_ids[i] for i in rows], pad))
            logits = last_token_logits(model, input_ids=input_ids, attention_mask=attention, position_ids=positions)
            logits = logits.float().cpu()
            for r, i in enumerate(rows):
                picks[i] = int(logits[r, candidates[i]].argmax())
        return picks

    def generate(self, prompts: Sequence[Messages]) -> list[str]:
        """Greedy completions, cut at the stop strings."""
        result = generate_batch(self.inference.model, self.inference.tokenizer, list(prompts), self.generation,
                                self.stop_strings, progress=False)  # fmt: skip
        return result.texts
