"""The trajectory canvas: one response sampled token by token, each step a state-action pair.

Shape legend: L sequence length so far (prompt + response), V vocabulary.

State s_t = prompt + tokens so far; action a_t = the next token, drawn from
π(·|s_t) = softmax(logits / temperature); the transition is concatenation; the reward is 0 at
every step but the last, where the task's verifier scores the whole response. The model is a
real one (a fresh tiny model, the lecture's sorting model, a directory the user loads, or the
mini-GRPO canvas's live policy), run by a full forward pass at every step.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from posttrain.algorithms import entropy_from_logits, token_logprobs
from posttrain.models.forward import call_model, positions_from_mask
from posttrain.rollout import encode_prompts
from posttrain.tasks.base import Example
from posttrain.tasks.sorting import REWARDS, make_sorting_verifier

SORTING_PROMPT = re.compile(r"\d+=")
"""The sorting task's plain prompt ("31415="): the only prompts the canvas can score."""
MAX_NEW_TOKENS = 64


def encode_prompt(tokenizer: Any, prompt: str) -> torch.Tensor:
    """(1, P) prompt ids, encoded the way the trainer encodes prompts (<bos> first)."""
    ids, mask = encode_prompts(tokenizer, [prompt])  # one prompt: no padding
    return ids[:, mask[0]]


def _token_text(tokenizer: Any, token_id: int) -> str:
    """What one token looks like: its decoded text (special tokens by name)."""
    text = tokenizer.decode([token_id], skip_special_tokens=False)
    return text if text else f"<{token_id}>"


def sorting_verdict(prompt: str, response: str, reward: str) -> tuple[float | None, str]:
    """The sorting verifier's (reward, status) for a "31415=" prompt, else (None, reason)."""
    if not SORTING_PROMPT.fullmatch(prompt):
        return None, "no verifier: sorting prompts look like 31415="
    digits = prompt[:-1]
    example = Example(prompt=prompt, answer="".join(sorted(digits)))
    verdict = make_sorting_verifier(digits=True, reward=reward)(example, response)
    return verdict.reward, verdict.status.value


@torch.no_grad()
def sample_trajectory(
    model: nn.Module,
    tokenizer: Any,
    prompt: str,
    *,
    temperature: float = 1.0,
    seed: int = 0,
    top: int = 5,
    reward: str = "partial",
    max_new_tokens: int | None = None,
) -> dict[str, Any]:
    """Sample one response token by token and record every step.

    Args:
        model: a causal LM (or the lecture's sorting model); input_ids (1, L) -> logits (1, L, V).
        tokenizer: its tokenizer (eos ends the response).
        prompt: the plain prompt text, e.g. "31415=".
        temperature: sampling temperature (> 0); the recorded probabilities use it too.
        seed: seeds the sampling generator (same seed, same trajectory).
        top: how many alternatives to list per step.
        reward: the sorting reward function ("exact", "partial" or "inclusion").
        max_new_tokens: response budget; default len(digits) + 1 for a sorting prompt, else 16.
    Returns:
        JSON-ready dict: prompt tokens, per-step state/action/alternatives/reward, the final
        response, reward and verifier status.
    """
    if not temperature > 0:
        raise ValueError(f"temperature: must be > 0, got {temperature}")
    if reward not in REWARDS:
        raise ValueError(f"reward: choose one of {sorted(REWARDS)}, got {reward!r}")
    if max_new_tokens is None:
        is_sorting = SORTING_PROMPT.fullmatch(prompt)
        max_new_tokens = len(prompt) if is_sorting else 16  # n digits + the stop token
    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise ValueError(f"max_new_tokens: must be in [1, {MAX_NEW_TOKENS}], got {max_new_tokens}")
    eos = tokenizer.eos_token_id
    device = next(model.parameters()).device
    ids = encode_prompt(tokenizer, prompt).to(device)  # (1, P)
    prompt_tokens = [_token_text(tokenizer, int(i)) for i in ids[0]]
    gen = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    steps, response_ids, finish = [], [], "length"
    try:
        for t in range(max_new_tokens):
            mask = torch.ones_like(ids, dtype=torch.bool)
            out = call_model(
                model, ids, attention_mask=mask.long(), position_ids=positions_from_mask(mask)
            )
            logits = out.logits[:, -1].float()  # (1, V)
            probs = torch.softmax(logits / temperature, dim=-1)[0]  # (V,)
            action = torch.multinomial(probs, 1, generator=gen)  # (1,)
            logprob = token_logprobs(logits[:, None], action[:, None], temperature)  # (1, 1)
            entropy = entropy_from_logits(logits, temperature)  # (1,)
            top_p, top_i = probs.topk(min(top, probs.numel()))
            token = int(action)
            steps.append(
                {
                    "t": t,
                    "state_length": int(ids.shape[1]),
                    "action": {
                        "id": token,
                        "text": _token_text(tokenizer, token),
                        "prob": float(probs[token]),
                        "logprob": float(logprob),
                    },
                    "top": [
                        {"id": int(i), "text": _token_text(tokenizer, int(i)), "prob": float(p)}
                        for p, i in zip(top_p, top_i, strict=True)
                    ],
                    "entropy": float(entropy),
                    "reward": 0.0,
                }
            )
            response_ids.append(token)
            ids = torch.cat([ids, action.view(1, 1)], dim=1)  # s' = concat(s, a)
            if eos is not None and token == eos:
                finish = "eos"
                break
    finally:
        model.train(was_training)
    # As the trainer's decode_responses: drop the final stop token, decode the rest as is.
    response = tokenizer.decode(response_ids[:-1] if finish == "eos" else response_ids)
    final_reward, status = sorting_verdict(prompt, response, reward)
    if final_reward is not None:
        steps[-1]["reward"] = final_reward  # terminal reward only
    return {
        "prompt": prompt,
        "prompt_tokens": prompt_tokens,
        "steps": steps,
        "response": response,
        "reward": final_reward,
        "status": status,
        "finish": finish,
        "temperature": temperature,
        "seed": seed,
        "sequence_logprob": sum(s["action"]["logprob"] for s in steps),
    }
