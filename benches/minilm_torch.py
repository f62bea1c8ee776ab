"""sentence-transformers (PyTorch) on the same texts as `recsys bench embed`.

usage: minilm_torch.py MODEL_DIR TEXTS BATCHES(comma-separated) THREADS
prints JSON: {"peer": what ran, "torch": version, "threads": n, "tokens": tokens per text, "<batch>": texts/s, ...}
"""
import json
import sys
import time

WORDS = "music night heart love dance light time dream rain road home sky summer morning river window".split()


def text(i):
    # Same as `bench_text` in cli/src/bench_embed.rs: long enough to truncate at 256 tokens.
    return f"song {i}: " + " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(300))


def main():
    model_dir, n, batches, threads = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    import torch

    torch.set_num_threads(threads)
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_dir, device="cpu")
    model.max_seq_length = 256
    texts = [text(i) for i in range(n)]
    tokens = len(model.tokenizer(texts[0], truncation=True, max_length=256)["input_ids"])
    import sentence_transformers

    out = {"peer": f"sentence-transformers {sentence_transformers.__version__} on torch {torch.__version__}",
           "torch": torch.__version__, "threads": torch.get_num_threads(), "tokens": tokens}
    with torch.inference_mode():
        for b in (int(x) for x in batches.split(",")):
            model.encode(texts[: max(b, 4)], batch_size=b, normalize_embeddings=True)
            start = time.perf_counter()
            model.encode(texts, batch_size=b, normalize_embeddings=True)
            out[str(b)] = n / (time.perf_counter() - start)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
