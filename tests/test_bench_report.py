"""scripts/bench.py's report: how runs become medians, ratios and Markdown."""

from __future__ import annotations

from typing import Any

from scripts import bench


def test_runs_become_samples_and_medians_with_min_and_max() -> None:
    runs = [
        {"inbox_per_s": 100, "crypto_ceiling_per_s": 400, "trials_s": [1.0, 3.0]},
        {"inbox_per_s": 300, "crypto_ceiling_per_s": 400, "trials_s": [2.0], "ok": True},
        {"inbox_per_s": 200, "crypto_ceiling_per_s": 400, "steps": [{"rate": 5}], "x": None},
    ]
    samples: dict[str, list[float]] = {}
    for run in runs:
        for name, values in bench.flatten("direct", run).items():
            samples.setdefault(name, []).extend(values)
    # Booleans, None and lists of maps are details, not figures.
    assert set(samples) == {
        "direct.inbox_per_s",
        "direct.crypto_ceiling_per_s",
        "direct.trials_s",
    }
    figs = bench.summarise(samples)
    assert figs["direct.inbox_per_s"] == {"median": 200, "min": 100, "max": 300, "n": 3}
    assert figs["direct.trials_s"] == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    ratio, ceiling = bench.ceilings(figs, loopback=1e9)["direct.inbox_per_s"]
    assert ratio == 0.5
    assert "crypto" in ceiling


def test_mesh_sizes_and_nested_figures_get_their_own_names() -> None:
    doc = [
        {"nodes": 25, "delivery_ratio": 1.0, "latency_s": {"p50": 0.5, "p99": 9.0}},
        {"nodes": 100, "delivery_ratio": 0.9, "latency_s": {"p50": 2.0, "p99": 30.0}},
    ]
    flat = bench.flatten("mesh", doc)
    assert flat["mesh.n25.latency_s_p99"] == [9.0]
    assert flat["mesh.n100.delivery_ratio"] == [0.9]
    assert bench.label_of("mesh.n100.latency_s_p99") == ("100 nodes: delivery latency p99", "s")
    assert bench.label_of("mesh.n100.nodes") is None  # JSON only


def report(figures: dict[str, list[float]], suites: list[dict[str, Any]]) -> str:
    machine = {
        "date": "2026-01-01 00:00 UTC",
        "commit": "abc1234",
        "cpu": "a CPU",
        "cpus": 2,
        "memory_gib": 8,
        "kernel": "6.1",
        "python": "3.11.7",
        "sqlite": "3.40.1",
        "pynacl": "1.5",
        "cbor2": "5.6",
        "trio": "0.25",
    }
    figs = bench.summarise(figures)
    return bench.markdown(
        {
            "quick": True,
            "machine": machine,
            "loopback_bytes_per_s": 2**30,
            "suites": suites,
            "figures": figs,
            "ceilings": bench.ceilings(figs, 2**30),
        }
    )


def test_the_markdown_shows_known_figures_ratios_and_what_did_not_run() -> None:
    text = report(
        {
            "direct.inbox_per_s": [1000.0, 2000.0, 3000.0],
            "direct.crypto_ceiling_per_s": [4000.0],
            "direct.accepted_total": [5.0],  # no label: JSON only
            "lxmf.p2pdm_burst_msgs_per_s": [900.0],
            "lxmf.lxmf_burst_msgs_per_s": [30.0],
            "lxmf.p2pdm_latency_p50_s": [0.008],
            "lxmf.lxmf_latency_p50_s": [0.002],
        },
        [
            {"name": "direct", "runs": 3, "skipped": None, "commit": "abc1234"},
            {"name": "relay", "runs": 1, "skipped": None, "commit": "0ld0ld0", "date": "d"},
            {"name": "lxmf", "runs": 1, "skipped": None},
            {"name": "files", "runs": 0, "skipped": "not present yet"},
        ],
    )
    assert "| direct: committed in B's inbox (msgs/s) | 2,000 | 1,000 | 3,000 | 3 | 0.50" in text
    assert "accepted_total" not in text
    assert "From an earlier run: d, commit 0ld0ld0." in text
    assert "| burst throughput (msgs/s) | 900 | 30.00 | 30 |" in text
    assert "| latency p50, submit to arrival (ms) | 8.00 | 2.00 | 4 |" in text
    assert "Not run: not present yet." in text
    assert "2 CPUs" in text
