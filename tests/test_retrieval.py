"""retrieve_pool against a plain numpy reference: flat, sharded, IVF, edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from unime.mining import IndexSpec, retrieve_pool


def normalised(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def reference(queries, candidates, positive_ids, k):
    rows = np.full((len(queries), k), -1)
    sims = np.full((len(queries), k), -np.inf, dtype=np.float32)
    for i, q in enumerate(queries):
        s = candidates @ q
        keep = [j for j in np.argsort(-s, kind="stable") if s[j] < s[positive_ids[i]] and j != positive_ids[i]][:k]
        rows[i, : len(keep)], sims[i, : len(keep)] = keep, s[keep]
    return rows, sims


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    queries, candidates = normalised(rng, 40, 16), normalised(rng, 500, 16)
    positive_ids = rng.integers(0, 500, size=40)
    # make positives genuinely close for half the queries, so the filter bites at many depths
    candidates[positive_ids[:20]] = queries[:20] + 0.1 * candidates[positive_ids[:20]]
    candidates /= np.linalg.norm(candidates, axis=1, keepdims=True)
    return queries, candidates, positive_ids


def test_flat_matches_numpy(data):
    queries, candidates, positive_ids = data
    rows, sims = retrieve_pool(queries, candidates, positive_ids, k=10)
    want_rows, want_sims = reference(queries, candidates, positive_ids, 10)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(sims, want_sims, atol=1e-5)
    assert not (rows == positive_ids[:, None]).any()
    pos_sims = np.einsum("ij,ij->i", queries, candidates[positive_ids])
    assert (sims < pos_sims[:, None]).all()


def test_shards_equal_one_array_and_load_lazily(data):
    queries, candidates, positive_ids = data
    loaded = []

    def loader(start, stop):
        def load():
            loaded.append(start)
            return candidates[start:stop]
        return load

    shards = [loader(s, min(s + 128, 500)) for s in range(0, 500, 128)]
    rows, sims = retrieve_pool(queries, shards, positive_ids, k=10)
    want_rows, _ = retrieve_pool(queries, candidates, positive_ids, k=10)
    np.testing.assert_array_equal(rows, want_rows)
    assert loaded == [0, 128, 256, 384] * 2  # positives pass, then search pass; one shard at a time


def test_ivf_probing_every_list_is_exact_and_partial_probing_has_high_recall(data):
    queries, candidates, positive_ids = data
    flat_rows, _ = retrieve_pool(queries, candidates, positive_ids, k=10)
    rows, _ = retrieve_pool(queries, candidates, positive_ids, k=10, index=IndexSpec("ivf", nlist=8, nprobe=8))
    np.testing.assert_array_equal(rows, flat_rows)
    rows, _ = retrieve_pool(queries, candidates, positive_ids, k=10, index=IndexSpec("ivf", nlist=8, nprobe=4))
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, flat_rows)])
    assert recall > 0.5


def test_fewer_than_k_qualify():
    queries = np.array([[1.0, 0.0]], dtype=np.float32)
    candidates = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6]], dtype=np.float32)
    # positive is row 2 (sim 0.6): row 0 (1.0) and row 3 (0.8) are more similar, dropped
    rows, sims = retrieve_pool(queries, candidates, [2], k=3)
    assert rows.tolist() == [[1, -1, -1]]
    assert sims[0, 0] == 0.0 and np.isneginf(sims[0, 1:]).all()


def test_ties_with_the_positive_are_dropped():
    queries = np.array([[1.0, 0.0]], dtype=np.float32)
    candidates = np.array([[0.6, 0.8], [0.6, -0.8], [0.0, 1.0]], dtype=np.float32)
    rows, _ = retrieve_pool(queries, candidates, [0], k=2)
    assert rows.tolist() == [[2, -1]]  # row 1 ties the positive's 0.6 exactly


def test_bad_positive_ids():
    with pytest.raises(IndexError, match="positive_ids out of range"):
        retrieve_pool(np.ones((2, 2), np.float32), np.ones((3, 2), np.float32), [0, 7], k=1)
    with pytest.raises(ValueError, match="1 positive ids for 2 queries"):
        retrieve_pool(np.ones((2, 2), np.float32), np.ones((3, 2), np.float32), [0], k=1)


def test_uniform_sample_draws_from_every_shard():
    from unime.mining.retrieval import uniform_sample

    shards = [np.full((n, 2), float(k), np.float32) for k, n in enumerate([500, 300, 200])]
    sample, total = uniform_sample(shards, 200, seed=1)
    assert total == 1000 and sample.shape == (200, 2)
    counts = np.bincount(sample[:, 0].astype(int), minlength=3)
    assert all(abs(c - 200 * n / 1000) < 30 for c, n in zip(counts, [500, 300, 200])), counts
    everything, _ = uniform_sample(shards, 5000)
    assert len(everything) == 1000


def test_ivf_recall_does_not_depend_on_shard_order():
    """Candidates sorted by a skewed key (the embed stage sorts by length), in shards: the IVF
    quantiser must see the whole pool, so recall equals that of a shuffled pool."""
    rng = np.random.default_rng(3)
    centres = normalised(rng, 12, 16)
    labels = rng.integers(0, 12, 3000)
    candidates = centres[labels] + 0.5 * normalised(rng, 3000, 16)
    candidates /= np.linalg.norm(candidates, axis=1, keepdims=True)
    queries = candidates[rng.choice(3000, 60, replace=False)] + 0.05 * normalised(rng, 60, 16)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    spec = IndexSpec("ivf", nlist=24, nprobe=2, train_size=600)

    def recall(order):
        pool = candidates[order]
        positives = np.argmax(queries @ pool.T, axis=1)
        exact, _ = retrieve_pool(queries, pool, positives, k=10)
        approx, _ = retrieve_pool(queries, [pool[i: i + 500] for i in range(0, 3000, 500)], positives, k=10,
                                  index=spec)
        return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(approx, exact)])

    sorted_recall, shuffled_recall = recall(np.argsort(labels, kind="stable")), recall(rng.permutation(3000))
    assert shuffled_recall > 0.9  # (a quantiser trained on the first shard: 0.79 sorted)
    assert abs(sorted_recall - shuffled_recall) < 0.05, (sorted_recall, shuffled_recall)


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_searches_capped_below_the_gpu_k_limit_finish_on_the_cpu_index(data, kind, monkeypatch):
    """A GPU index takes k <= 2048; queries whose positive is outranked by more candidates
    than that are finished on the CPU copy. Simulated on the CPU with a cap of 16."""
    from unime.mining import retrieval

    queries, candidates, positive_ids = data
    # random positives for half the queries: hundreds of candidates outrank them
    assert (np.einsum("ij,ij->i", queries, candidates[positive_ids]) < 0.5).sum() >= 15
    want = retrieve_pool(queries, candidates, positive_ids, k=10, index=IndexSpec(kind, nlist=4, nprobe=4))
    widths, placed = [], retrieval._placed

    class Recorded:  # the index, with every search's k recorded
        def __init__(self, index):
            self.index, self.ntotal = index, index.ntotal

        def search(self, queries, k):
            widths.append(k)
            return self.index.search(queries, k)

    monkeypatch.setattr(retrieval, "_placed", lambda index, spec: (Recorded(index), placed(index, spec)[1]))
    got = retrieve_pool(queries, candidates, positive_ids, k=10,
                        index=IndexSpec(kind, nlist=4, nprobe=4, max_search_k=16))
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], atol=1e-6)
    assert widths and max(widths) == 16  # the capped index never searched wider; the CPU copy finished


def test_the_pool_retrieval_refuses_hnsw(data):
    """One IndexSpec serves retrieval and the search index; only the index can be HNSW (the pool
    search widens past everything at least as similar as the positive)."""
    queries, candidates, positive_ids = data
    with pytest.raises(ValueError, match="'flat' or 'ivf'"):
        retrieve_pool(queries, candidates, positive_ids, k=10, index=IndexSpec("hnsw"))
