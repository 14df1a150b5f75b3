"""The bridge from verl's reward loop to mmr's reward (`mmr.rewards`).

verl 0.9.1 computes rewards in its reward loop, one trajectory per `run_single` call,
many calls in flight at once on an asyncio loop. `MMRRewardManager` is registered with
verl through its `importlib` reward-manager source (`mmr rl train` sets it up):

    reward.reward_manager.source=importlib
    reward.reward_manager.module.path=<this file>   reward.reward_manager.name=MMRRewardManager
    reward.custom_reward_function.path=<this file>  reward.custom_reward_function.name=compute_score

Each call decodes the response, counts its tokens from the batch (for the overthinking
budget), and scores it with `mmr.rewards.compute_score` in a thread, so rule checks (in
mmr's math-verify worker processes) and LLM-judge calls of many trajectories overlap.
Every part goes back as `reward_extra_info` (accuracy, format, length, judge,
judge_fallbacks, errors), which verl logs. A judge that is down falls back to the rule
score inside `mmr.rewards`, so training never stalls on it; a reward that raises scores
0 and is counted in `errors`.

What verl 0.9.1 does not offer here: the whole rollout group in one call. Its reward
loop hands over single trajectories, so the group-relative length term (`length.mode:
group|both`) is 0 under verl; the per-response budget term works. mmr's local engine
(`mmr rl local`) scores whole groups through `score_batch`.
"""

from __future__ import annotations

import logging
from typing import Any

from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase

from mmr.rewards import compute_score as _mmr_compute_score

logger = logging.getLogger(__name__)

# The keys every trajectory reports, in a fixed order: verl builds its metric arrays
# from the first trajectory's keys, so they must never vary.
EXTRA_KEYS = ("accuracy", "format", "length", "judge", "judge_fallbacks", "errors")


def compute_score(
    data_source: Any, solution_str: str, ground_truth: Any, extra_info: Any = None, **kwargs: Any
) -> dict[str, Any]:
    """verl's reward-function signature; mmr's composite reward (see `mmr.rewards`)."""
    return _mmr_compute_score(data_source, solution_str, ground_truth, extra_info, **kwargs)


def extra_info_of(result: dict[str, Any] | None, error: str | None) -> dict[str, float]:
    """Fixed-key numbers for verl's metrics from one mmr reward result."""
    result = result or {}
    judge = result.get("judge")
    return {
        "accuracy": float(result.get("accuracy", 0.0)),
        "format": float(result.get("format", 0.0)),
        "length": float(result.get("length", 0.0)),
        "judge": float("nan") if judge is None else float(judge),
        "judge_fallbacks": float(result.get("judge_fallback", 0.0)),
        "errors": 0.0 if error is None else 1.0,
    }


class MMRRewardManager(RewardManagerBase):
    """verl reward manager that scores each trajectory with mmr's reward."""

    def __init__(
        self,
        config: Any,
        tokenizer: Any,
        compute_score: Any,
        reward_router_address: str | None = None,
        reward_model_tokenizer: Any = None,
    ) -> None:
        super().__init__(config, tokenizer, compute_score)
        # verl hands over the configured function with its reward_kwargs bound.
        self.compute_score = compute_score or _mmr_compute_score

    async def run_single(self, data: Any) -> dict[str, Any]:
        item = data[-1:][0]
        response_ids = item.batch["responses"]
        n_tokens = int(item.batch["attention_mask"][-response_ids.shape[-1] :].sum())
        response = await self.loop.run_in_executor(
            None,
            lambda: self.tokenizer.decode(response_ids[:n_tokens], skip_special_tokens=True),
        )
        info = dict(item.non_tensor_batch.get("extra_info") or {})
        info["response_tokens"] = n_tokens
        ground_truth = item.non_tensor_batch["reward_model"]["ground_truth"]
        data_source = item.non_tensor_batch.get("data_source", "mmr")
        try:
            result = await self.loop.run_in_executor(
                None,
                lambda: self.compute_score(
                    data_source=data_source,
                    solution_str=response,
                    ground_truth=ground_truth,
                    extra_info=info,
                    response_tokens=n_tokens,
                ),
            )
            error = None
        except Exception as err:  # a reward bug must cost one trajectory, not the run
            logger.exception("mmr reward failed on one trajectory; scoring it 0")
            result, error = None, f"{type(err).__name__}: {err}"
        score = float(result["score"]) if result else 0.0
        return {"reward_score": score, "reward_extra_info": extra_info_of(result, error)}
