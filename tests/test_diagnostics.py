"""Diagnostics on synthetic data with a known answer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from strata.experiments.diagnostics import (
    ablation_matrix,
    association_metrics,
    collect_router_stats,
    log_diagnostics_to_tensorboard,
    mutual_information,
    normalized_mutual_information,
    planted_strata_batches,
    purity,
    routing_diagnostics,
    strata_disabled,
)
from strata.experiments.intrinsic_dimension import local_intrinsic_dimension, twonn_global
from strata.models.stratified import StratifiedConfig, StratifiedForCausalLM
from strata.models.stratified.routers import StratifiedPart, kmeans


def test_router_equal_to_planted_labels_scores_one() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(4, size=2000)
    relabelled = (labels + 1) % 4  # the names of the strata do not matter
    m = association_metrics(relabelled, labels, n_permutations=200, seed=0)
    assert m["purity"] == pytest.approx(1.0) and m["nmi"] == pytest.approx(1.0)
    assert m["mi"] == pytest.approx(np.log(4), abs=0.01)
    assert m["nmi_p_value"] < 0.01 and m["purity_p_value"] < 0.01
    assert m["purity_null_mean"] < 0.3


def test_random_router_scores_chance_and_is_not_significant() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(4, size=2000)
    router = rng.integers(4, size=2000)
    m = association_metrics(router, labels, n_permutations=200, seed=0)
    assert m["nmi"] < 0.01
    assert m["purity"] < 0.3
    assert m["nmi_p_value"] > 0.05 and m["purity_p_value"] > 0.05 and m["mi_p_value"] > 0.05


def test_metric_edge_cases() -> None:
    a = np.array([0, 0, 1, 1])
    assert purity(np.zeros(4), a) == 0.5
    assert normalized_mutual_information(np.zeros(4), a) == 0.0
    assert mutual_information(a, a) == pytest.approx(np.log(2))


def test_association_by_hand_2x2() -> None:
    # a = [0,0,1,1], b = [0,1,1,1]: joint p(0,0)=1/4, p(0,1)=1/4, p(1,1)=1/2; p(a)=(1/2,1/2), p(b)=(1/4,3/4)
    a, b = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])
    mi = 0.25 * np.log(0.25 / (0.5 * 0.25)) + 0.25 * np.log(0.25 / (0.5 * 0.75)) + 0.5 * np.log(0.5 / (0.5 * 0.75))
    assert mi == pytest.approx(0.2158, abs=1e-4)  # nats; in bits it would be 0.3113
    h_a = np.log(2)
    h_b = -(0.25 * np.log(0.25) + 0.75 * np.log(0.75))
    assert mutual_information(a, b) == pytest.approx(mi, abs=1e-12)
    assert mutual_information(b, a) == pytest.approx(mi, abs=1e-12)
    # arithmetic normalisation: MI / ((H(a) + H(b)) / 2) = 0.3437 (geometric: 0.3456)
    assert normalized_mutual_information(a, b) == pytest.approx(mi / ((h_a + h_b) / 2), abs=1e-12)
    # clusters of a: {b0, b1} -> majority 1 of 2, {b1, b1} -> 2 of 2; clusters of b: {a0} -> 1, {a0, a1, a1} -> 2
    assert purity(a, b) == pytest.approx(3 / 4) and purity(b, a) == pytest.approx(3 / 4)


def test_association_by_hand_3x2() -> None:
    # 3 clusters x 2 labels, N = 6; contingency rows = clusters: [[2, 1], [0, 2], [1, 0]]
    assignment, labels = np.array([0, 0, 0, 1, 1, 2]), np.array([0, 0, 1, 1, 1, 0])
    # p(c) = (3/6, 2/6, 1/6), p(l) = (1/2, 1/2); sum over the non-zero cells of p(c,l) ln(p(c,l) / p(c)p(l))
    mi = (2 / 6) * np.log((2 / 6) / (3 / 6 * 1 / 2)) + (1 / 6) * np.log((1 / 6) / (3 / 6 * 1 / 2)) \
        + (2 / 6) * np.log((2 / 6) / (2 / 6 * 1 / 2)) + (1 / 6) * np.log((1 / 6) / (1 / 6 * 1 / 2))
    h_c = -(0.5 * np.log(0.5) + (1 / 3) * np.log(1 / 3) + (1 / 6) * np.log(1 / 6))
    h_l = np.log(2)
    assert mi == pytest.approx(0.3749, abs=1e-4)  # = ln(4/3)/3 + ln(2/3)/6 + ln(2)/3 + ln(2)/6
    assert mutual_information(assignment, labels) == pytest.approx(mi, abs=1e-12)
    assert normalized_mutual_information(assignment, labels) == pytest.approx(2 * mi / (h_c + h_l), abs=1e-12)
    assert purity(assignment, labels) == pytest.approx((2 + 2 + 1) / 6)  # majority count per cluster
    # transposed: clusters = labels (rows [[2, 0, 1], [1, 2, 0]]): majority 2 + 2 of 6
    assert purity(labels, assignment) == pytest.approx(4 / 6)
    m = association_metrics(assignment, labels, n_permutations=0)
    assert (m["mi"], m["nmi"], m["purity"]) == pytest.approx((mi, 2 * mi / (h_c + h_l), 5 / 6), abs=1e-12)


def test_kmeans_recovers_separated_blobs() -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 8)) * 10
    labels = rng.integers(4, size=400)
    x = centers[labels] + rng.normal(size=(400, 8))
    _, found = kmeans(x, 4, seed=0)
    assert normalized_mutual_information(found, labels) > 0.99


@pytest.mark.parametrize("method", ["twonn", "mle"])
def test_local_intrinsic_dimension_on_known_manifolds(method: str) -> None:
    rng = np.random.default_rng(0)
    plane = rng.uniform(-1, 1, size=(2000, 2)) @ rng.normal(size=(2, 10))  # a 2-D plane in 10-D
    gauss = rng.normal(size=(2000, 5))
    lid_plane = local_intrinsic_dimension(plane, k=20, method=method)
    lid_gauss = local_intrinsic_dimension(gauss, k=20, method=method)
    assert lid_plane.shape == (2000,)
    assert abs(np.median(lid_plane) - 2) < 0.35
    assert abs(np.median(lid_gauss) - 5) < 0.8
    assert abs(twonn_global(plane) - 2) < 0.2 and abs(twonn_global(gauss) - 5) < 0.5


def test_lid_handles_duplicates_and_separates_strata() -> None:
    rng = np.random.default_rng(0)
    line = np.outer(rng.uniform(size=600), rng.normal(size=8))  # 1-D
    blob = rng.normal(size=(600, 8)) + 20  # 8-D, far away
    x = np.concatenate([line, line[:50], blob])  # exact duplicates must not break the estimate
    lid = local_intrinsic_dimension(x, k=15)
    assert np.isfinite(lid).all()
    assert np.median(lid[:600]) < 1.5 and np.median(lid[-600:]) > 5


def _tiny_model(stratified_type: str, vocab: int, **kw) -> StratifiedForCausalLM:
    torch.manual_seed(0)
    cfg = StratifiedConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        stratified_type=stratified_type,
        pad_token_id=0,
        **kw,
    )
    model = StratifiedForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, StratifiedPart):
                for p in module.parameters(recurse=False):
                    p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def test_oracle_router_diagnostics_end_to_end(tmp_path) -> None:
    batches, vocab = planted_strata_batches(3, batch_size=8, seq_len=12, seed=0)
    batches[0]["attention_mask"][:, -3:] = 0  # padded tokens must be left out
    model = _tiny_model("moe", vocab, stratum_source="domain")
    stats = collect_router_stats(model, batches, [b["stratum_ids"] for b in batches])
    n_valid = sum(int(b["attention_mask"].sum()) for b in batches)
    assert len(stats.domains) == n_valid and stats.hidden[0].shape == (n_valid, 32)
    diag = routing_diagnostics(stats, n_permutations=50, lid_k=10)
    json.dumps(diag)
    for layer in diag["layers"]:
        assert layer["router"]["purity"] == pytest.approx(
            1.0
        )  # the oracle source routes by the planted label
        assert layer["router"]["nmi"] == pytest.approx(1.0)
        assert {"kmeans", "lid", "experts"} <= set(layer)
        assert set(layer["lid"]["per_domain"]) == set(diag["domain_fractions"])

    class Writer:
        def __init__(self) -> None:
            self.scalars: dict[str, float] = {}

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            self.scalars[tag] = value

    writer = Writer()
    assert log_diagnostics_to_tensorboard(writer, diag, step=3) == len(writer.scalars) > 20
    assert writer.scalars["diag/layers/layer0/router/nmi"] == pytest.approx(1.0)
    assert "diag/layers/layer1/router/load/0" in writer.scalars

    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path)) as real:
        log_diagnostics_to_tensorboard(real, diag, step=0)
    assert any(tmp_path.iterdir())


def test_baseline_diagnostics_have_kmeans_and_lid_only() -> None:
    batches, vocab = planted_strata_batches(2, batch_size=8, seq_len=12, seed=0)
    stats = collect_router_stats(_tiny_model("none", vocab), batches)  # domain ids from batch["stratum_ids"]
    diag = routing_diagnostics(stats, n_permutations=20, lid_k=10)
    assert all("router" not in layer and "kmeans" in layer and "lid" in layer for layer in diag["layers"])


def test_ablation_matrix_and_disable_context() -> None:
    batches, vocab = planted_strata_batches(2, batch_size=8, seq_len=12, seed=0)
    by_domain: dict[int, list[dict[str, torch.Tensor]]] = {}
    for b in batches:
        for d in b["stratum_ids"].unique().tolist():
            keep = b["stratum_ids"] == d
            by_domain.setdefault(d, []).append({k: v[keep] for k, v in b.items()})
    model = _tiny_model("routing", vocab, stratum_source="domain")
    result = ablation_matrix(model, by_domain)
    json.dumps(result)
    assert len(result["loss"]) == 4 and len(result["loss"][0]) == len(by_domain)
    assert model.config.disabled_strata is None
    # with the oracle source, switching stratum s off can only change the loss of domain s
    for s, row in enumerate(result["delta"]):
        for d, delta in zip(result["domains"], row):
            if int(d) != s:
                assert delta == pytest.approx(0.0, abs=1e-6)
            else:
                assert abs(delta) > 1e-6
    with strata_disabled(model, [2]):
        assert model.config.disabled_strata == [2]
    assert model.config.disabled_strata is None
