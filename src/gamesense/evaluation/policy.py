"""A loaded language model as a :class:`~gamesense.tasks.base.Policy` for rollout evaluations."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gamesense.evaluation.generation import generate_batch
from gamesense.tasks.base import Messages


class ModelPolicy:
    """Acts for a task's environment with a causal LM.

    ``choose`` picks, for each prompt, the candidate answer with the highest total log-probability under the
    model (sum over the answer's tokens, EOS excluded): all prompt x candidate sequences go through one batched
    forward pass, so the model can never answer outside the candidates. ``generate`` decodes greedily.

    Args:
        model: an :class:`~gamesense.models.refs.InferenceModel` (model + tokenizer).
        name: label in tables (e.g. ``fine-tuned``).
        max_new_tokens / batch_size / stop_strings: greedy decoding settings for ``generate``.
    """

    def __init__(self, model, name: str, max_new_tokens: int = 64, batch_size: int = 32,
                 stop_strings: Sequence[str] = ()):  # fmt: skip
        self.inference, self.name = model, name
        self.max_new_tokens, self.batch_size, self.stop_strings = max_new_tokens, batch_size, tuple(stop_strings)

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
        rows, owners, spans = [], [], []
        for i, (ids, options) in enumerate(zip(prompt_ids, choices)):
            for option in options:
                answer = tokenizer(option, add_special_tokens=False)["input_ids"]
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
        for start in range(0, len(rows), self.batch_size):
            stop = min(start + self.batch_size, len(rows))
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

    def generate(self, prompts: Sequence[Messages]) -> list[str]:
        """Greedy completions, cut at the stop strings."""
        result = generate_batch(self.inference.model, self.inference.tokenizer, list(prompts), self.max_new_tokens,
                                self.batch_size, self.stop_strings, progress=False)  # fmt: skip
        return result.texts
