"""`proofline infer` as a user runs it: embed a JSONL file and generate from a prompt on a
stack of the test's own, and get results that a re-execution checked before they counted."""
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli as run

pytestmark = pytest.mark.stack

# Two topics, three sentences each: the vectors should keep them apart.
SENTENCES = ["A cat sits on the mat.", "A kitten is resting on a rug.",
             "The dog sleeps on the sofa.", "The central bank raised interest rates.",
             "Stock markets fell sharply today.", "Investors sold shares after the report."]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("infer-cli")
    # Both forms a line may take, and a blank line the pool skips as well.
    lines = [json.dumps(s) if i % 2 else json.dumps({"text": s}) for i, s in enumerate(SENTENCES)]
    (cwd / "texts.jsonl").write_text("\n".join(lines[:3] + [""] + lines[3:]) + "\n")
    (cwd / "bad.jsonl").write_text('{"text": "fine"}\n\n{"text": 42}\n')
    return cwd


@pytest.fixture(scope="module")
def stack(workdir):
    run(workdir, "dev", "up")
    yield workdir
    run(workdir, "dev", "down", check=False)


@pytest.fixture(scope="module")
def embedded(stack) -> dict:
    return json.loads(run(stack, "infer", "embed", "--input", "texts.jsonl",
                          "--output", "out/vectors.npy", "--json").stdout)


def test_embed_writes_one_verified_float32_row_per_text(stack, embedded):
    assert (embedded["state"], embedded["reason"]) == ("settled", None)
    assert embedded["input"] == "inline" and embedded["input_uri"] is None
    assert Path(embedded["output"]) == stack / "out" / "vectors.npy"
    vectors = np.load(embedded["output"], allow_pickle=False)
    assert vectors.dtype == np.float32 and vectors.shape == (len(SENTENCES), 384)
    assert (embedded["count"], embedded["dim"]) == vectors.shape
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-3)
    assert embedded["model"].startswith("sentence-transformers/all-MiniLM-L6-v2")
    assert {"queue_s", "cold_start_s", "warm", "model_s", "cost_usd"} <= set(embedded["metrics"])
    check = embedded["verification"]
    assert check["reexecution_matches"] is True and check["rows_reexecuted"] >= 1
    assert check["cosine_min"] >= check["cosine_min_required"]
    assert not (stack / "out" / "vectors.npy.part").exists()


def test_similar_sentences_land_closer_than_unrelated_ones(embedded):
    vectors = np.load(embedded["output"], allow_pickle=False)
    similarity = vectors @ vectors.T
    pets, money = [0, 1, 2], [3, 4, 5]
    for group, other in ((pets, money), (money, pets)):
        for i in group:
            nearest_same = max(similarity[i, j] for j in group if j != i)
            assert nearest_same > max(similarity[i, j] for j in other), SENTENCES[i]


def test_uploaded_jsonl_gives_the_same_vectors(stack, embedded):
    result = run(stack, "infer", "embed", "--input", "texts.jsonl", "--output",
                 "out/uploaded.npy", "--upload")
    assert "out/uploaded.npy" in result.stdout and f"{len(SENTENCES)} × 384" in result.stdout
    again = json.loads(run(stack, "infer", "embed", "--input", "texts.jsonl", "--output",
                           "out/uploaded-again.npy", "--upload", "--json").stdout)
    assert again["state"] == "settled" and again["input"] == "upload"
    assert again["input_uri"].startswith("s3://")
    for name in ("uploaded.npy", "uploaded-again.npy"):
        assert np.allclose(np.load(stack / "out" / name), np.load(embedded["output"]),
                           atol=1e-5)


def test_a_bad_line_is_named_and_nothing_is_submitted(workdir):
    result = run(workdir, "infer", "embed", "--input", "bad.jsonl", "--output", "out/bad.npy",
                 check=False)
    assert result.returncode == 1
    assert "line 3" in result.stderr and "created job" not in result.stderr
    assert not (workdir / "out" / "bad.npy").exists()


def test_generation_is_deterministic_and_within_max_tokens(stack):
    args = ("infer", "generate", "--prompt", "Once upon a time", "--max-tokens", "12",
            "--seed", "3")
    first = json.loads(run(stack, *args, "--json").stdout)
    assert (first["state"], first["reason"]) == ("settled", None)
    assert first["text"] and 1 <= first["tokens"] <= 12
    assert first["verification"]["reexecution_matches"] is True
    assert {"ttfb_s", "model_s", "warm", "cost_usd"} <= set(first["metrics"])
    # Without --json only the text reaches stdout, so it can be piped.
    second = run(stack, *args)
    assert second.stdout == first["text"] + "\n"
    assert "re-executed" in second.stderr


def test_too_many_tokens_are_refused_by_the_api(stack):
    result = run(stack, "infer", "generate", "--prompt", "x", "--max-tokens", "1000",
                 check=False)
    assert result.returncode == 1
    assert "max_tokens_too_large" in result.stderr or "invalid_value" in result.stderr


def test_a_timeout_exits_5_and_says_the_job_goes_on(stack):
    result = run(stack, "infer", "generate", "--prompt", "still going", "--timeout", "0",
                 "--json", check=False)
    assert result.returncode == 5
    assert "still" in result.stderr and "proofline jobs watch" in result.stderr
