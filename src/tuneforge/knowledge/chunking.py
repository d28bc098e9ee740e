"""Fixed-size chunking in the embedder's own tokens, as Bedrock's FIXED_SIZE strategy counts them."""

from __future__ import annotations

from collections.abc import Sequence


def fixed_size_chunks(
    text: str, offsets: Sequence[tuple[int, int]], max_tokens: int, overlap_percentage: int
) -> list[str]:
    """Windows of ``max_tokens`` tokens, each starting ``max_tokens - overlap`` tokens after the last.

    ``offsets`` are the tokens' character spans in ``text`` (a fast tokenizer's offset mapping), so
    each chunk is a verbatim slice of the document (whitespace and punctuation kept) rather than
    decoded tokens. The overlap is rounded down and always leaves a step of at least one token.
    """
    if not offsets:
        return []
    overlap = max_tokens * overlap_percentage // 100
    step = max(1, max_tokens - overlap)
    chunks = []
    for start in range(0, len(offsets), step):
        window = offsets[start : start + max_tokens]
        chunks.append(text[window[0][0] : window[-1][1]])
        if start + max_tokens >= len(offsets):
            break
    return chunks
