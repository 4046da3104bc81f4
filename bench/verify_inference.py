"""Inference cheats against the verifier's re-execution rules (`chalicelib.verification.
inference`, as the inference pool's check applies them), with the real models.

Embeddings: jobs of 100 rows drawn from a pool of sentences; a cheat fakes 5 % of the rows,
or runs another model of the same shape (MiniLM with perturbed or re-initialised weights).
A new worker has every row re-executed; an established one the rows `audits_needed` says
catch a 5 % cheat with p ≥ 0.999 (`audit.items_to_audit`), drawn with a fresh secret each trial. The trusted model's
vectors of the pool are computed once (it is deterministic); the honest set measures how far
another batch size moves them, which is the documented tolerance. Generations: another
model, sampling instead of greedy decoding, a truncated text.
"""
from __future__ import annotations

import copy
import hashlib
import io
import json
import random
import secrets

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bench import adversary
from bench.embed import sentences
from chalicelib.verification import audit
from chalicelib.verification import inference as rules
from gpu_functions import handler as pool
from gpu_functions import inference

ROWS = 100
COSINE_MIN = 0.999
PROMPTS = [f"{a} {b}." for a in ("Write about", "Describe", "Explain", "Tell a story about")
           for b in ("a lighthouse", "verifiable compute", "a river at night", "a market",
                     "the first snow", "a quiet library", "a ship leaving port")]


def _npy(vectors: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, vectors.astype(np.float32), allow_pickle=False)
    return buffer.getvalue()


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _vectors(model, texts, batch_size=64) -> np.ndarray:
    return model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                        convert_to_numpy=True).astype(np.float32)


def _perturbed(model, scale: float, reinit: bool = False):
    return adversary.perturbed(copy.deepcopy(model), scale, reinit=reinit)


def _other_model_outputs(honest: dict[str, dict]) -> dict[str, dict]:
    """What a worker running the tiny generator with perturbed weights returns, greedy (the
    stand-in model is small: a light perturbation often leaves its greedy text unchanged)."""
    source = inference.tiny_generator()
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = _perturbed(AutoModelForCausalLM.from_pretrained(source).eval(), 0.5)
    outputs = {}
    for prompt, reference in honest.items():
        encoded = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            generated = model.generate(**encoded, max_new_tokens=16, do_sample=False,
                                       pad_token_id=tokenizer.eos_token_id)
        tokens = generated[0, encoded["input_ids"].shape[1]:].tolist()
        outputs[prompt] = {"text": tokenizer.decode(tokens, skip_special_tokens=True),
                           "token_ids": tokens, "model": reference["model"]}
    return outputs


def run(trials: int, rng: random.Random, results: dict) -> list[tuple]:
    embedder = pool.model("embed_batch")
    embedder.embed.local(["warm"])                     # loads the weights
    model = embedder.model
    texts = sentences(1000)
    trusted = _vectors(model, texts)
    others = {"embed_perturbed_weights": _vectors(_perturbed(model, 0.05), texts),
              "embed_reinitialised_weights": _vectors(_perturbed(model, 0, reinit=True), texts)}
    established = audit.items_to_audit(ROWS, trusted=False, verified_jobs=10**6,
                                       sample_rate=0.1, floor=0.01)
    rows = []

    def judge(claimed: np.ndarray, picked: list[int], audited: int) -> bool:
        data = _npy(claimed)
        key = audit.audit_key(secrets.token_hex(32), subject="bench", committed=[_sha(data)])
        drawn = audit.draw(key, "rows", ROWS, audited)
        verdict = rules.embeddings(data=data, reported_sha256=_sha(data),
                                   actual_sha256=_sha(data), expected_count=ROWS, rows=drawn,
                                   reference=trusted[[picked[i] for i in drawn]],
                                   cosine_min=COSINE_MIN)
        return verdict.passed

    for depth, audited in (("new_worker", ROWS), ("established", established)):
        caught = promoted = 0
        for _ in range(trials):                  # 5 % of the rows faked
            picked = rng.sample(range(len(texts)), ROWS)
            claimed = trusted[picked].copy()
            for row in rng.sample(range(ROWS), 5):
                noisy = claimed[row] + np.random.default_rng(rng.getrandbits(32)).normal(
                    0, 0.05, claimed.shape[1])
                claimed[row] = noisy / np.linalg.norm(noisy)
            passed = judge(claimed, picked, audited)
            caught += not passed
            promoted += passed
        rows.append((f"embed_5pct_rows_perturbed_{depth}", f"5 of {ROWS} rows",
                     caught, trials, promoted))
    for name, vectors in others.items():
        caught = promoted = 0
        for _ in range(trials):
            picked = rng.sample(range(len(texts)), ROWS)
            passed = judge(vectors[picked], picked, established)
            caught += not passed
            promoted += passed
        rows.append((name, "every row, another model", caught, trials, promoted))

    honest_rejected, cosines = 0, []
    for i in range(max(50, trials // 6)):
        picked = rng.sample(range(len(texts)), ROWS)
        batch = rng.choice([1, 8, 32, 100])
        claimed = _vectors(model, [texts[j] for j in picked], batch_size=batch)
        cosines.append(float(np.min(np.sum(claimed * trusted[picked], axis=1))))
        honest_rejected += not judge(claimed, picked, ROWS)
    results.update(verify_embed_honest_rejected=honest_rejected,
                   verify_embed_honest_cosine_min=round(min(cosines), 7),
                   verify_embed_rows_audited_established=established)
    print(f"honest embeddings: {honest_rejected} rejected; smallest cosine to the trusted "
          f"vectors across batch sizes {min(cosines):.7f} (tolerance {COSINE_MIN})")
    rows += _generations(trials, rng, results)
    return rows


def _generations(trials: int, rng: random.Random, results: dict) -> list[tuple]:
    generator = pool.model("generate_small")
    generate = generator.generate.local
    generate("warm", 4, 0)
    honest = {p: generate(p, 16, 0) for p in PROMPTS}
    other_outputs = _other_model_outputs(honest)
    rows = []

    def judge(claimed: dict, prompt: str) -> bool:
        data = json.dumps({k: claimed[k] for k in ("text", "token_ids", "model")}).encode()
        verdict = rules.generation(data=data, reported_sha256=_sha(data),
                                   actual_sha256=_sha(data), max_tokens=16,
                                   model=honest[prompt]["model"], reference=honest[prompt])
        return verdict.passed

    cheats = {
        "generate_other_model": lambda p: other_outputs[p],
        "generate_sampled_not_greedy": lambda p: generate(p, 16, rng.randrange(1 << 16),
                                                          greedy=False),
        "generate_truncated": lambda p: {**honest[p], "token_ids": honest[p]["token_ids"][:-3],
                                         "text": honest[p]["text"][:-5]},
    }
    for name, cheat in cheats.items():
        caught = promoted = 0
        for _ in range(trials):
            # Output that happens to equal the honest one is no cheat (the client gets the
            # right bytes): such draws are made again, so every trial is a real cheat.
            while True:
                prompt = rng.choice(PROMPTS)
                claimed = cheat(prompt)
                if claimed["token_ids"] != honest[prompt]["token_ids"]:
                    break
            passed = judge(claimed, prompt)
            caught += not passed
            promoted += passed
        rows.append((name, "the whole generation", caught, trials, promoted))
    rejected = sum(not judge(generate(p, 16, 0), p) for p in PROMPTS)
    results["verify_generate_honest_rejected"] = rejected
    return rows
