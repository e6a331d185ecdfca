"""The method experiment (experiments/method_effect/run.py): its corpus split, arms, judge data, tables,
and a reduced end-to-end run in which every arm trains and evaluates."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest
import torch

from experiments.method_effect import components as me
from experiments.method_effect import report
from tests.helpers import ROOT, load_script
from unime.config import ConfigError, EmbedderTrainConfig, load_config
from unime.data import read_eval, read_pairs
from unime.demo import corpus as demo_data
from unime.demo import recipes
from unime.demo.corpus import DemoCorpusConfig
from unime.demo.truth import DemoTruth
from unime.losses import info_nce, soft_kl_alignment
from unime.prompts import NO, YES

SPLIT = DemoCorpusConfig(seed=3, train_images=120, grounding_images=30, eval_queries=12, eval_candidates=6,
                         noisy_rows=False, held_out_combos=3)


@pytest.fixture(scope="module")
def split_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("split")
    demo_data.build(root, SPLIT)
    return root


def test_held_out_combinations_never_reach_training(split_corpus):
    held = demo_data.held_out_combos(SPLIT.seed, SPLIT.held_out_combos)
    assert len(held) == 3 and len({s for s, _ in held}) == 3 and len({c for _, c in held}) == 3
    truth = DemoTruth.load(str(split_corpus))
    pairs, _ = read_pairs(str(split_corpus / "train"), image_root=str(split_corpus))
    images = {i for col in ("query_image", "pos_image") for i in pairs[col].to_pylist() if i}
    for image in images:
        attributes = truth.attributes[image]
        objects = attributes["objects"] if "objects" in attributes else [[attributes["shape"], attributes["colour"]]]
        assert not {tuple(o) for o in objects} & held, image
    tables, _ = read_eval(str(split_corpus / "eval"), image_root=str(split_corpus))
    assert set(tables) >= {"DemoI2TNovel", "DemoT2INovel", "DemoVQANovel", "DemoI2T"}
    for name in ("DemoI2TNovel", "DemoT2INovel", "DemoVQANovel"):
        for row in tables[name].to_pylist():
            image = row["qry_img_path"] or row["tgt_img_path"][0]
            assert (truth.scene(image).shape, truth.scene(image).colour) in held
            assert truth.matches(row["qry_text"], row["qry_img_path"], row["tgt_text"][0], row["tgt_img_path"][0])
    for row in tables["DemoI2T"].to_pylist():
        scene = truth.scene(row["qry_img_path"])
        assert (scene.shape, scene.colour) not in held


def test_default_corpus_has_no_novel_subsets(demo_dir):
    tables, _ = read_eval(str(demo_dir / "eval"), image_root=str(demo_dir))
    assert not [name for name in tables if name.endswith("Novel")]
    assert demo_data.eval_groups(novel=False) == demo_data.EVAL_GROUPS


def test_config_yaml_and_its_checks():
    config = load_config(ROOT / "configs" / "method_effect.yaml", cls=me.MethodEffectConfig)
    assert len(config.seeds) >= 3 and set(config.arms) >= {"infonce", "infonce_hard", "unime", "unime_rerank"}
    assert config.corpus.held_out_combos > 0 and not config.corpus.noisy_rows
    with pytest.raises(ConfigError, match="unime_rerank"):
        load_config(ROOT / "configs" / "method_effect.yaml", ["arms=[infonce, unime_rerank]"], cls=me.MethodEffectConfig)
    with pytest.raises(ConfigError, match="model_size"):
        load_config(ROOT / "configs" / "method_effect.yaml", ["model_size=huge"], cls=me.MethodEffectConfig)


def test_arms_differ_only_in_loss_and_negatives():
    recipe = me.EmbedderRecipe()
    configs = {arm: me.arm_train_config(arm, recipe, seed=4)
               for arm in me.ARMS if arm != "unime_rerank"}
    assert (configs["infonce"].num_hard_negatives, configs["infonce_hard"].num_hard_negatives) == (0, 8)
    assert configs["infonce"].infonce_weight == 1 and configs["infonce"].soft_label_weight == 0
    assert configs["infonce"].in_batch_negatives and configs["infonce_hard"].in_batch_negatives
    assert configs["unime"].soft_label_weight == 1 and configs["unime"].infonce_weight == 0
    assert not configs["unime"].in_batch_negatives and configs["unime_label"] == configs["unime"]
    assert configs["unime_label_inbatch"] == configs["unime_inbatch"]
    both = configs["unime_inbatch"]
    assert both.soft_label_weight == 1 and both.infonce_weight == 1 and both.in_batch_negatives
    shared = ("max_steps", "queries_per_worker", "temperature", "seed", "warmup_steps", "full_finetune")
    assert len({(repr(c.optim), *(getattr(c, k) for k in shared)) for c in configs.values()}) == 1


def test_loss_weights_select_the_objective():
    """soft_label_weight 0 + infonce_weight 1 is exactly InfoNCE; the defaults exactly the paper's KL."""
    from unime.train.embedder import EmbedderTrainer

    torch.manual_seed(0)
    queries = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    candidates = torch.nn.functional.normalize(torch.randn(4 * 3, 8), dim=-1)
    judge = torch.rand(4, 3)
    for arm, expected in (
        ("infonce_hard", info_nce(queries, candidates.reshape(4, 3, 8), 0.05, True)),
        ("unime", soft_kl_alignment(torch.einsum("bd,bcd->bc", queries, candidates.reshape(4, 3, 8)), judge, 0.05)),
    ):
        trainer = EmbedderTrainer.__new__(EmbedderTrainer)
        recipe = me.EmbedderRecipe(train=replace(me.EmbedderRecipe().train, temperature=0.05, num_hard_negatives=2))
        trainer.config = me.arm_train_config(arm, recipe, 0)
        torch.testing.assert_close(trainer.loss_fn(judge)(queries, candidates), expected)
    with pytest.raises(ConfigError, match="nothing to train"):
        EmbedderTrainConfig(soft_label_weight=0.0, infonce_weight=0.0)
    with pytest.raises(ConfigError, match="at least one hard negative"):
        EmbedderTrainConfig(num_hard_negatives=0)


def _pairs(rows):
    table = pa.Table.from_pylist([{"query_text": q, "query_image": "", "pos_text": p, "pos_image": "", "dataset": d,
                                   "source": "f", "row_index": k} for k, (q, p, d) in enumerate(rows)])
    table = table.append_column("query_id", pa.array([f"q{k}" for k in range(len(rows))]))
    return table.append_column("pos_id", pa.array([f"p:{p}" for _, p, _ in rows]))


def test_judge_examples_use_only_training_pairs_of_the_same_dataset():
    pairs = _pairs([("a", "x", "A"), ("b", "y", "A"), ("c", "x", "A"), ("d", "z", "B"), ("e", "w", "B")])
    examples = recipes.judge_examples(pairs, seed=0)
    yes = [e for e in examples if e["answer"] == YES]
    no = [e for e in examples if e["answer"] == NO]
    assert len(yes) == 5 and len(no) == 5 and {e["kind"] for e in examples} == {"pairwise"}
    positive_of = {r["query_text"]: r["pos_text"] for r in pairs.to_pylist()}
    dataset_of = {r["pos_text"]: r["dataset"] for r in pairs.to_pylist()}
    query_dataset = {r["query_text"]: r["dataset"] for r in pairs.to_pylist()}
    for example in no:
        assert example["cand_texts"][0] != positive_of[example["query_text"]]
        assert dataset_of[example["cand_texts"][0]] == query_dataset[example["query_text"]]


def test_judge_examples_draw_fresh_negatives_each_round():
    pairs = _pairs([(q, p, "A") for q, p in zip("abcdefgh", "stuvwxyz")])
    examples = recipes.judge_examples(pairs, seed=0, rounds=3)
    assert len(examples) == 3 * 2 * 8
    negatives = {}
    for example in examples:
        if example["answer"] == NO:
            negatives.setdefault(example["query_text"], []).append(example["cand_texts"][0])
    assert all(len(drawn) == 3 for drawn in negatives.values())
    assert any(len(set(drawn)) > 1 for drawn in negatives.values())


def test_batches_keep_groups_together_and_cover_every_row_each_epoch():
    rows = [{"query": q, "answer": a} for q in range(6) for a in (YES, NO)]
    batches = list(recipes.batches(rows, size=4, steps=6, seed=0, group=2))
    for batch in batches:
        assert batch["answer"] == [YES, NO, YES, NO] and batch["query"][0::2] == batch["query"][1::2]
    first_epoch = [q for batch in batches[:3] for q in batch["query"][0::2]]
    assert sorted(first_epoch) == list(range(6))
    with pytest.raises(ValueError, match="do not split into groups of 2"):
        next(recipes.batches(rows[:3], size=4, steps=1, seed=0, group=2))


def test_caption_examples_answer_image_queries_with_their_text_positive():
    pairs = pa.Table.from_pylist([
        {"query_text": "<|image_1|>\nWhat colour?", "query_image": "i.png", "pos_text": "red", "pos_image": ""},
        {"query_text": "Find an image: red", "query_image": "", "pos_text": "<|image_1|>", "pos_image": "j.png"},
        {"query_text": "<|image_1|>\nSelect", "query_image": "k.png", "pos_text": "crop", "pos_image": "k0.png"}])
    examples = recipes.caption_examples(pairs)
    assert examples == [{"kind": "generate", "query_text": "<|image_1|>\nWhat colour?", "query_image": "i.png",
                         "cand_texts": [], "cand_images": [], "answer": "red"}]


def test_retrieval_negatives_cycle_and_empty_pools_are_left_out():
    pairs = _pairs([("a", "x", "A"), ("b", "y", "A")])
    pools = pa.table({"query_id": ["q0", "q1"], "pos_id": ["p:x", "p:y"], "pool_ids": [["p:y", "p:z"], []]})
    items = {"p:y": ("y", ""), "p:z": ("z", "")}
    negatives = me.retrieval_negatives(pools, items, 3)
    assert negatives == {"q0p:x": [("y", ""), ("z", ""), ("y", "")]}
    records = recipes.plain_records(pairs, negatives)
    assert [r["query_text"] for r in records] == ["a"] and records[0]["hard_negatives_scores"] == [0.0] * 3
    assert len(recipes.plain_records(pairs)) == 2


def test_tables_report_mean_and_spread_over_seeds():
    subsets = {"DemoI2T": 50.0, "DemoT2I": 70.0, "DemoI2TNovel": 20.0}
    results = {"arms": {"infonce": {0: {"p_at_1": subsets}, 1: {"p_at_1": {**subsets, "DemoI2T": 70.0}}}},
               "config": {"seeds": [0, 1]}}
    stats = report.arm_statistics(results)
    assert stats["infonce"]["DemoI2T"] == (60.0, pytest.approx(np.std([50, 70], ddof=1)), 2)
    assert stats["infonce"]["OOD"][0] == 20.0 and stats["infonce"]["IND"][0] == 65.0
    markdown = report.p_at_1_markdown(stats)
    assert "60.0 ± 14.1" in markdown and "(i) InfoNCE" in markdown
    assert "| (i) InfoNCE, in-batch negatives | 46.7 | 53.3 |" in report.per_seed_markdown(results)


@pytest.mark.integration
def test_reduced_experiment_every_arm_trains_and_evaluates(tmp_path):
    """The CI smoke run: one seed, a few steps; asserts only that every arm trains and evaluates."""
    bench = load_script("experiments/method_effect/run.py")
    out = tmp_path / "run"
    bench.main([f"out_dir={out}", "seeds=[0]", "corpus.train_images=60", "corpus.grounding_images=20",
                "corpus.eval_queries=10", "corpus.eval_candidates=6", "embedder.base_steps=4", "embedder.train.max_steps=4",
                "embedder.train.queries_per_worker=8",
                "chat_model.steps=3", "chat_model.chats_per_step=8", "judge.steps=3", "judge.chats_per_step=8",
                "reranker.judge=label", "reranker.steps=3", "reranker.chats_per_step=6",
                "mining.pool_size=10"])
    results = json.loads((out / "results.json").read_text())
    subsets = set(results["eval_rows"])
    assert {"DemoI2TNovel", "DemoT2I"} <= subsets
    for arm in me.ARMS:
        value = results["arms"][arm]["0"]
        assert set(value["p_at_1"]) == subsets and all(0 <= v <= 100 for v in value["p_at_1"].values())
        if arm != "unime_rerank":
            assert len(value["losses"]) == 4 and all(np.isfinite(value["losses"]))
    for judge in ("trained", "label"):
        assert 0 <= results["judges"][judge]["held_out_auc"] <= 1
    assert results["judges"]["label"]["held_out_auc"] == 1.0
    assert results["judges"]["label"]["filter"]["precision"] == 1.0
    for name in ("table.md", "method_effect.png", "report.html"):
        assert (out / name).stat().st_size > 0


@pytest.mark.parametrize("freeze_vision", [True, False])
def test_reranker_trainer_vision_tower_frozen_only_when_asked(tiny_dir, freeze_vision):
    from unime.config import RerankerTrainConfig, TrainPlacement
    from unime.train.reranker import RerankerTrainer

    train = RerankerTrainConfig(full_finetune=True, freeze_vision=freeze_vision, effective_batch_size=4,
                                micro_batch_size=4, placement=TrainPlacement(use_gpu=False))
    trainer = RerankerTrainer(str(tiny_dir / "reranker"), train, max_steps=2, device="cpu")
    visual = [p.requires_grad for p in trainer.model.model.visual.parameters()]
    language = [p.requires_grad for p in trainer.model.model.language_model.parameters()]
    assert all(language) and all(visual) is not freeze_vision and any(visual) is not freeze_vision


def test_yes_no_answer_loss_trains_the_judges_p_yes(tiny_dir):
    """The trainer's "yes_no" loss is -log of the P(Yes) (or P(No)) the judge reads from the
    same chat; listwise rows are refused."""
    from unime.config import OptimConfig, RerankerTrainConfig, TrainPlacement
    from unime.judge import HFJudge
    from unime.train.reranker import RerankerTrainer, chat_of

    train = RerankerTrainConfig(full_finetune=True, effective_batch_size=2, micro_batch_size=2,
                                placement=TrainPlacement(use_gpu=False), answer_loss="yes_no",
                                optim=OptimConfig(lr=2e-5, weight_decay=0.01, max_grad_norm=1.0))
    trainer = RerankerTrainer(str(tiny_dir / "judge"), train, max_steps=2, device="cpu")
    rows = [{"kind": "pairwise", "query_text": "two red circles", "query_image": "", "cand_texts": [text],
             "cand_images": [""], "answer": answer} for text, answer in (("red", YES), ("a blue square", NO))]
    judge = HFJudge(str(tiny_dir / "judge"), device="cpu")
    p_yes = judge.score([chat_of(row, trainer.images) for row in rows])
    with torch.no_grad():
        loss = trainer.micro_loss(rows)
    assert loss.item() == pytest.approx(-(np.log(p_yes[0]) + np.log(1 - p_yes[1])) / 2, rel=1e-4)
    with pytest.raises(ValueError, match="pairwise chats only; got a 'listwise' row"):
        trainer.micro_loss(rows[:1] + [rows[1] | {"kind": "listwise", "answer": "Ans: (1)"}])
    assert np.isfinite(trainer.step({key: [row[key] for row in rows] for key in rows[0]}))


def test_checkpoint_init_std(tmp_path):
    from unime.demo import tiny
    from unime.models import load_model

    size = tiny.SIZES["tiny"]
    tiny.build_checkpoint(tmp_path / "wide", "qwen2_5_vl", size, tiny.train_tokenizer(size.vocab_size), 0, init_std=0.08)
    weights = dict(load_model(str(tmp_path / "wide"), device="cpu").named_parameters())
    for name in ("model.language_model.layers.0.self_attn.q_proj.weight", "model.visual.blocks.0.attn.qkv.weight"):
        assert weights[name].std().item() == pytest.approx(0.08, rel=0.1), name


def test_judge_examples_keep_true_matches_out_of_the_negatives():
    positive_of = dict(zip("abcdefgh", ["red", "red circle", "blue", "green", "red square", "pink", "grey", "teal"]))
    pairs = _pairs([(q, p, "A") for q, p in positive_of.items()])

    def shares_a_word(query_text, query_image, candidate_text, candidate_image):
        return bool(set(positive_of[query_text].split()) & set(candidate_text.split()))

    examples = recipes.judge_examples(pairs, seed=0, rounds=4, matches=shares_a_word)
    negatives = [e for e in examples if e["answer"] == NO]
    assert len(negatives) == 4 * 8
    for example in negatives:
        assert not shares_a_word(example["query_text"], "", example["cand_texts"][0], "")
    # without the oracle, a random draw does pick such candidates
    unfiltered = [e for e in recipes.judge_examples(pairs, seed=0, rounds=4) if e["answer"] == NO]
    assert any(shares_a_word(e["query_text"], "", e["cand_texts"][0], "") for e in unfiltered)


def test_near_miss_negatives_share_the_most_words_with_the_pair():
    texts = ["three red circles", "two red circles", "four blue squares", "a green diamond", "three red squares",
             "two pink triangles", "a grey circle", "four teal diamonds"]
    pairs = _pairs([(q, p, "A") for q, p in zip("abcdefgh", texts)])
    overlap = {}
    for text in texts:  # what a hand count gives: the most words any other text shares
        overlap[text] = max(len(set(text.split()) & set(other.split())) for other in texts if other != text)
    near = [e for e in recipes.judge_examples(pairs, seed=0, rounds=3, near_miss_share=1.0) if e["answer"] == NO]
    positive_of = dict(zip("abcdefgh", texts))
    for example in near:  # all 7 others are among the 16 drawn, so the nearest is found
        positive = positive_of[example["query_text"]]
        assert len(set(positive.split()) & set(example["cand_texts"][0].split())) == overlap[positive]
    random_ones = [e for e in recipes.judge_examples(pairs, seed=0, rounds=3) if e["answer"] == NO]
    assert any(len(set(positive_of[e["query_text"]].split()) & set(e["cand_texts"][0].split()))
               < overlap[positive_of[e["query_text"]]] for e in random_ones)


def test_other_dataset_negatives_come_from_every_dataset_at_their_share():
    pairs = _pairs([(f"q{k}", f"p{k}", "AB"[k % 2]) for k in range(40)])
    dataset_of = {r["pos_text"]: r["dataset"] for r in pairs.to_pylist()}
    query_dataset = {r["query_text"]: r["dataset"] for r in pairs.to_pylist()}

    def crossed(share):
        negatives = [e for e in recipes.judge_examples(pairs, seed=0, rounds=5, other_dataset_share=share)
                     if e["answer"] == NO]
        return sum(dataset_of[e["cand_texts"][0]] != query_dataset[e["query_text"]] for e in negatives) / len(negatives)

    assert crossed(0.0) == 0.0
    # drawn from every dataset half the time, half of those land in the other dataset: ~1/4
    assert 0.15 < crossed(0.5) < 0.35
