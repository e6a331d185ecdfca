"""The reranker within bounded memory: listwise scoring with the prompt computed once, the LM
head only where a score or loss needs it, a token budget on every path, gradient
checkpointing that leaves the gradients unchanged, and rerank k within the engine's images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from unime.config import ConfigError, LoraConfig, RerankerTrainConfig, load_config
from unime.judge import PromptTooLongError
from unime.losses import IGNORE_INDEX
from unime.rerank import Reranker, build_listwise_messages
from unime.rerank.encoding import encode_with_answers
from unime.train.reranker import RerankerTrainer, reranker_examples

COLOURS = [(200, 10, 10), (10, 200, 10), (10, 10, 200), (200, 200, 10), (10, 200, 200)]
IMAGES = [Image.new("RGB", (56 + 28 * k, 84), colour) for k, colour in enumerate(COLOURS)]


def candidates(count: int) -> list[tuple]:
    """Text, image and text+image candidates, cycling."""
    kinds = [lambda k: (f"caption number {k}", None), lambda k: ("", IMAGES[k % 5]),
             lambda k: (f"two shapes {k}", IMAGES[(k + 2) % 5])]
    return [kinds[k % 3](k) for k in range(count)]


def oracle_logprobs(backend, chat, prefix: str, continuations: list[str]) -> list[float]:
    """Each continuation scored on its own: one full forward of prompt + prefix + continuation,
    summing the log-probabilities of the continuation's tokens (transformers only)."""
    prompt = backend.judge.prompt_texts(backend.judge.prepare([chat]))[0] + prefix
    images = [part["image"] for part in backend.judge.prepare([chat])[0][0]["content"] if part.get("type") == "image"]
    tokenizer = backend.processor.tokenizer
    sums = []
    for continuation in continuations:
        inputs = backend.processor(text=[prompt + continuation], images=images or None, return_tensors="pt")
        n = len(tokenizer.encode(continuation, add_special_tokens=False))
        with torch.no_grad():
            logits = backend.model(**inputs).logits[0].double()
        ids = inputs["input_ids"][0]
        sums.append(sum(float(torch.log_softmax(logits[p - 1], -1)[ids[p]]) for p in range(len(ids) - n, len(ids))))
    return sums


@pytest.mark.parametrize("input_format", ["qwen2-vl-native", "unime-v2"])
@pytest.mark.parametrize("query_image", [None, IMAGES[4]], ids=["text-query", "image-query"])
def test_listwise_scores_in_one_prompt_pass_equal_per_candidate_forwards(tiny_dir, input_format, query_image):
    reranker = Reranker(str(tiny_dir / "reranker"), device="cpu", input_format=input_format)
    backend = reranker.backend
    cands = candidates(10)
    chat = build_listwise_messages("<|image_1|>\nWhich one shows it?", query_image, cands)
    continuations = [f"{k})" for k in range(1, 11)]
    seen = []
    hook = backend.model.lm_head.register_forward_hook(lambda _m, args, _out: seen.append(tuple(args[0].shape)))
    try:
        got = backend.continuation_logprobs(chat, "Ans: (", continuations)
    finally:
        hook.remove()
    want = oracle_logprobs(backend, chat, "Ans: (", continuations)
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=0)
    # the LM head saw one prompt position, then the later answer tokens of at most 4 candidates
    # at a time (each group over its own copy of the prompt's cache), never [k, L]
    assert seen[0][:2] == (1, 1) and len(seen) == 1 + 3
    assert all(shape[0] <= 4 and shape[1] <= 2 for shape in seen[1:])
    ranking = reranker.rank(("<|image_1|>\nWhich one shows it?", query_image), cands, mode="listwise")
    probs = np.exp(np.array(want) - max(want))
    np.testing.assert_allclose(ranking.scores, probs / probs.sum(), atol=1e-4)


def test_a_continuation_that_merges_with_the_prefix_is_refused(tiny_dir):
    from unime.rerank.reranker import answer_tokens

    tokenizer = Reranker(str(tiny_dir / "reranker"), device="cpu").backend.processor.tokenizer
    assert answer_tokens(tokenizer, "Ans: (", ["1)", "10)"])[1] == tokenizer.encode("10)", add_special_tokens=False)
    merging = next(t for t in ("s", "ns", "s:") if tokenizer.encode("An" + t, add_special_tokens=False)
                   != tokenizer.encode("An", add_special_tokens=False) + tokenizer.encode(t, add_special_tokens=False))
    with pytest.raises(ValueError, match="does not tokenise on its own"):
        answer_tokens(tokenizer, "An", [merging])


def test_prompts_over_the_token_budget_are_refused_with_their_length(tiny_dir):
    from unime.judge import HFJudge
    from unime.rerank import build_pairwise_messages

    judge = HFJudge(str(tiny_dir / "reranker"), device="cpu", max_model_len=160)
    short = build_pairwise_messages("q", None, "c", None)
    long = build_pairwise_messages("a long query " * 40, IMAGES[0], "c", None)
    assert judge.score([short]).shape == (1,)
    with pytest.raises(PromptTooLongError, match=r"prompt 1: \d+ tokens .* max_model_len=160"):
        judge.score([short, long])
    reranker = Reranker(str(tiny_dir / "reranker"), device="cpu", max_model_len=160)
    for mode in ("pairwise", "listwise", "listwise-greedy"):
        with pytest.raises(PromptTooLongError):
            reranker.rank(("a long query " * 40, None), candidates(3), mode)


def test_evaluation_counts_an_over_budget_row_as_a_miss_with_its_reason(tiny_dir, demo_dir):
    import pyarrow as pa

    from unime.pipeline.evaluate import RerankBatch

    rank = RerankBatch(str(tiny_dir / "reranker"), "hf", ["pairwise", "listwise"], "float32", "cpu", str(demo_dir),
                       {}, {}, max_model_len=120)
    rows = pa.Table.from_pylist([
        {"dataset": "D", "row_index": k, "qry_text": text, "qry_img_path": "", "cand_index": [0, 1],
         "pos_text": "a", "pos_image": "", "cand_texts": ["a", "b"], "cand_images": ["", ""]}
        for k, text in enumerate(["short", "a very long query " * 30])])
    out = rank(rows).to_pylist()
    assert [r["pairwise_error"] == "" for r in out] == [True, False]
    assert "max_model_len=120" in out[1]["listwise_error"] and not out[1]["listwise_hit"]


RECORD = {"query_text": "<|image_1|>\nWhat colour?", "query_image": "images/train/pair_00000.png", "pos_text": "red",
          "pos_image": "", "hard_negatives": [[f"colour {k}", "images/train/pair_00001.png" if k % 2 else ""]
                                              for k in range(10)], "hard_negatives_scores": [0.1] * 10}


def trainer(tiny_dir, demo_dir, **train) -> RerankerTrainer:
    config = RerankerTrainConfig(effective_batch_size=3, micro_batch_size=3,
                                 lora=LoraConfig(r=4, alpha=8, dropout=0.3, use_dora=False), **train)
    return RerankerTrainer(str(tiny_dir / "reranker"), config, max_steps=4, device="cpu", image_root=str(demo_dir),
                           seed=0)


def micro_batch_rows() -> list[dict]:
    import pyarrow as pa

    return reranker_examples(pa.Table.from_pylist([RECORD]), listwise_candidates=3, seed=0).to_pylist()


def test_training_loss_from_the_answer_window_equals_the_full_logits_loss(tiny_dir, demo_dir):
    from unime.train.reranker import chat_of

    run = trainer(tiny_dir, demo_dir)
    rows = micro_batch_rows()
    torch.manual_seed(3)
    got = run.micro_loss(rows)
    # reference: the whole [B, L, vocab], then every unmasked label by hand (same dropout masks)
    chats = run.inputs.prepare([chat_of(r, run.images) for r in rows])
    batch = encode_with_answers(run.processor, chats, [r["answer"] for r in rows])
    labels = batch.pop("labels")
    torch.manual_seed(3)
    logits = run.model(**batch, use_cache=False).logits.double()
    terms = [-torch.log_softmax(logits[b, p - 1], -1)[labels[b, p]] for b in range(labels.shape[0])
             for p in range(1, labels.shape[1]) if labels[b, p] != IGNORE_INDEX]
    assert float(got) == pytest.approx(float(torch.stack(terms).mean()), abs=1e-5)


def gradients(run: RerankerTrainer, rows: list[dict]) -> dict[str, torch.Tensor]:
    run.model.zero_grad(set_to_none=True)
    torch.manual_seed(11)  # the same LoRA-dropout masks with and without checkpointing
    run.micro_loss(rows).backward()
    return {n: p.grad.clone() for n, p in run.model.named_parameters() if p.requires_grad}


def test_gradient_checkpointing_leaves_the_gradients_unchanged(tiny_dir, demo_dir):
    rows = micro_batch_rows()
    plain = gradients(trainer(tiny_dir, demo_dir), rows)
    checkpointed_run = trainer(tiny_dir, demo_dir, gradient_checkpointing=True)
    assert checkpointed_run.model.is_gradient_checkpointing
    checkpointed = gradients(checkpointed_run, rows)
    assert plain.keys() == checkpointed.keys() and len(plain) > 4
    assert any(float(g.abs().sum()) > 0 for g in plain.values())
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, atol=1e-6, rtol=1e-4, msg=name)


def test_trainer_leaves_out_and_counts_examples_over_the_token_budget(tiny_dir, demo_dir):
    """One over-long example must not stop a long training run: it is left out and counted."""
    rows = micro_batch_rows()
    unbounded = RerankerTrainer(str(tiny_dir / "reranker"), RerankerTrainConfig(effective_batch_size=3,
                                micro_batch_size=3), max_steps=1, device="cpu", image_root=str(demo_dir))
    lengths = unbounded.encode(rows)["attention_mask"].sum(1).tolist()
    budget = sorted(lengths)[1]  # the longest example no longer fits
    run = RerankerTrainer(str(tiny_dir / "reranker"), RerankerTrainConfig(effective_batch_size=3, micro_batch_size=3),
                          max_steps=1, device="cpu", image_root=str(demo_dir), max_model_len=budget)
    assert run.encode(rows)["attention_mask"].shape[0] == 2 and run.skipped_examples == 1
    assert run.micro_loss(rows) is not None
    tight = RerankerTrainer(str(tiny_dir / "reranker"), RerankerTrainConfig(effective_batch_size=3, micro_batch_size=3),
                            max_steps=1, device="cpu", image_root=str(demo_dir), max_model_len=10)
    assert tight.micro_loss(rows) is None and tight.skipped_examples == 3
    batch = {k: [r[k] for r in rows] for k in rows[0]}
    assert tight.step(batch) == 0.0 and tight.step_count == 1  # a step with nothing to learn from still counts


def test_rerank_k_is_bounded_by_the_vllm_engines_images_per_prompt():
    vllm_serve = ["serve.rerank_backend=vllm", "serve.rerank_mode=listwise"]
    with pytest.raises(ConfigError, match=r"serve.limits.max_rerank_k: .*admits 16"):
        load_config(None, [*vllm_serve, "serve.limits.max_rerank_k=20"])
    assert load_config(None, [*vllm_serve, "serve.limits.max_rerank_k=15"])
    assert load_config(None, [*vllm_serve, "serve.limits.max_rerank_k=20", "eval.rerank_engine.max_images_per_prompt=21"])
    with pytest.raises(ConfigError, match="eval.rerank_k"):
        load_config(None, ["eval.rerank_backend=vllm", "eval.rerank_k=16"])
    # no cap where no vLLM engine builds listwise prompts
    assert load_config(None, ["eval.rerank_k=16", "serve.limits.max_rerank_k=20"])
    assert load_config(None, ["eval.rerank_backend=vllm", "eval.rerank_k=16", "eval.rerank_modes=[pairwise]"])



def test_the_reranker_honours_lora_use_dora(tiny_dir):
    """``train_reranker.lora.use_dora`` reaches PEFT: DoRA adds a magnitude vector per adapted
    layer, plain LoRA none."""
    def magnitudes(use_dora: bool) -> int:
        config = RerankerTrainConfig(effective_batch_size=1, micro_batch_size=1,
                                     lora=LoraConfig(r=4, alpha=8, dropout=0.0, use_dora=use_dora))
        model = RerankerTrainer(str(tiny_dir / "reranker"), config, max_steps=1, device="cpu").model
        return sum("lora_magnitude_vector" in name for name, _ in model.named_parameters())

    assert magnitudes(True) > 0 and magnitudes(False) == 0
