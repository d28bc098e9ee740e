"""Continuous batching gives every request the answer it would get alone, and frees finished rows."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tuneforge.engine.batching import ContinuousBatcher, Sequence, _safe_length
from tuneforge.engine.static_decode import LoneSequenceStep
from tuneforge.model.builtin import ensure_builtin
from tuneforge.model.folders import load_for_inference
from tuneforge.serving.protocol import GenerationRequest

PROMPTS = ["Ticket: my invoice\nCategory:", "a much longer prompt, so that rows need left padding", "x"]


@pytest.fixture(scope="module")
def model_and_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    torch.set_num_threads(1)
    models = tmp_path_factory.mktemp("models")
    return load_for_inference(ensure_builtin("forge-micro", models), models)


def solo_greedy(model: Any, tokenizer: Any, prompt: str, max_tokens: int) -> list[int]:
    from tuneforge.model.prompts import encode_prompt

    ids = torch.tensor([encode_prompt(tokenizer, prompt)])
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_tokens,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=tokenizer.pad_token_id,
    )
    return [int(t) for t in out[0, ids.shape[1] :]]


def submit(batcher: ContinuousBatcher, prompt: str, **options: Any) -> tuple[Sequence, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    request = GenerationRequest(prompt=prompt, **options)
    sequence = Sequence(request, batcher.tokenize(prompt, request.max_tokens), events.append)
    batcher.submit(sequence)
    return sequence, events


def test_requests_joining_a_running_batch_get_their_solo_greedy_answer(model_and_tokenizer: tuple[Any, Any]) -> None:
    model, tokenizer = model_and_tokenizer
    batcher = ContinuousBatcher(model, tokenizer, max_batch=8)
    batcher.eos_ids = set()  # a random model may end early; compare full lengths
    first, _ = submit(batcher, PROMPTS[0], max_tokens=12)
    batcher.step()
    batcher.step()
    others = [submit(batcher, p, max_tokens=12)[0] for p in PROMPTS[1:]]
    steps = 0
    while batcher.running or steps == 0:
        batcher.step()
        steps += 1
    for sequence in [first, *others]:
        assert sequence.generated == solo_greedy(model, tokenizer, sequence.request.prompt, 12)
    assert steps <= 12, "joined requests should decode together, not one after another"


def test_stop_sequence_max_tokens_and_streamed_text_add_up(model_and_tokenizer: tuple[Any, Any]) -> None:
    model, tokenizer = model_and_tokenizer
    batcher = ContinuousBatcher(model, tokenizer)
    batcher.eos_ids = set()
    reference, _ = submit(batcher, PROMPTS[0], max_tokens=10)
    while batcher.running or not reference.cancelled.is_set():
        batcher.step()
    full = tokenizer.decode(reference.generated)
    stop = full[3:5]
    streamed, events = submit(batcher, PROMPTS[0], max_tokens=10, stop=(stop,), stream=True)
    while not streamed.cancelled.is_set():
        batcher.step()
    end = events[-1]
    assert end["event"] == "end" and end["stop_reason"] == "stop_sequence"
    assert end["text"] == full[: full.find(stop)]
    assert "".join(e["text"] for e in events if e["event"] == "text") == end["text"]
    assert [e["output_tokens"] for e in events] == sorted(e["output_tokens"] for e in events)
    capped, events = submit(batcher, PROMPTS[1], max_tokens=3)
    while not capped.cancelled.is_set():
        batcher.step()
    (end,) = events
    assert 0 <= end.pop("first_token_s") < 60
    assert end == {
        "event": "end",
        "text": end["text"],
        "stop_reason": "max_tokens",
        "input_tokens": 53,
        "output_tokens": 3,
    }


def test_cancelled_request_leaves_the_batch(model_and_tokenizer: tuple[Any, Any]) -> None:
    model, tokenizer = model_and_tokenizer
    batcher = ContinuousBatcher(model, tokenizer)
    batcher.eos_ids = set()
    keep, _ = submit(batcher, PROMPTS[0], max_tokens=20)
    gone, _ = submit(batcher, PROMPTS[1], max_tokens=20)
    batcher.step()
    assert batcher.running == 2
    gone.cancelled.set()
    batcher.step()
    assert batcher.running == 1
    while batcher.running:
        batcher.step()
    assert keep.generated == solo_greedy(model, tokenizer, PROMPTS[0], 20)


def test_prompt_longer_than_the_context_is_refused(model_and_tokenizer: tuple[Any, Any]) -> None:
    model, tokenizer = model_and_tokenizer
    batcher = ContinuousBatcher(model, tokenizer)
    with pytest.raises(ValueError, match="Input is too long for requested model"):
        batcher.tokenize("x" * 500, 100)


def test_stream_holds_back_what_may_start_a_stop_sequence() -> None:
    assert _safe_length("hello wor", ("world",)) == len("hello ")
    assert _safe_length("hello", ("xyz",)) == 5
    assert _safe_length("caf\ufffd", ()) == 3


def test_seeded_sampling_repeats_and_top_p_near_zero_is_greedy(model_and_tokenizer: tuple[Any, Any]) -> None:
    model, tokenizer = model_and_tokenizer
    batcher = ContinuousBatcher(model, tokenizer)
    batcher.eos_ids = set()
    same = [submit(batcher, PROMPTS[0], max_tokens=10, temperature=1.0, seed=3)[0] for _ in range(2)]
    other, _ = submit(batcher, PROMPTS[0], max_tokens=10, temperature=1.0, seed=4)
    nucleus, _ = submit(batcher, PROMPTS[0], max_tokens=10, temperature=1.0, top_p=1e-6, seed=5)
    while batcher.running or not other.cancelled.is_set():
        batcher.step()
    assert same[0].generated == same[1].generated != other.generated
    assert nucleus.generated == solo_greedy(model, tokenizer, PROMPTS[0], 10)


def run_to_end(batcher: ContinuousBatcher, sequence: Sequence) -> None:
    while not sequence.cancelled.is_set():
        batcher.step()


def test_logprobs_are_the_models_own_and_follow_the_greedy_choice(model_and_tokenizer: tuple[Any, Any]) -> None:
    model, tokenizer = model_and_tokenizer
    batcher = ContinuousBatcher(model, tokenizer)
    batcher.eos_ids = set()
    sequence, events = submit(batcher, PROMPTS[0], max_tokens=4, logprobs=3, stream=True)
    run_to_end(batcher, sequence)
    entries = events[-1]["logprobs"]
    assert len(entries) == 4 == len(sequence.generated)
    from tuneforge.model.prompts import encode_prompt

    ids = encode_prompt(tokenizer, PROMPTS[0])
    for token, entry in zip(sequence.generated, entries, strict=True):
        expected = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].float(), dim=-1)
        assert entry["logprob"] == pytest.approx(float(expected[token]), abs=1e-4)
        tops = entry["top_logprobs"]
        assert len(tops) == 3 and tops[0]["logprob"] == pytest.approx(entry["logprob"], abs=1e-4)  # greedy = top 1
        assert [t["logprob"] for t in tops] == sorted((t["logprob"] for t in tops), reverse=True)
        ids.append(token)
    text = b"".join(bytes(entry["bytes"]) for entry in entries).decode("utf-8", errors="replace")
    assert text == tokenizer.decode(sequence.generated)  # each entry holds its token's exact bytes
    streamed = [e for event in events if event["event"] == "text" for e in event.get("logprobs", [])]
    assert streamed == entries


def test_prefill_runs_the_output_layer_on_the_last_prompt_position_only(
    model_and_tokenizer: tuple[Any, Any],
) -> None:
    model, tokenizer = model_and_tokenizer
    batcher = ContinuousBatcher(model, tokenizer)
    positions: list[int] = []
    hook = model.get_output_embeddings().register_forward_hook(
        lambda _module, inputs, _output: positions.append(inputs[0].shape[1])
    )
    try:
        sequence, _ = submit(batcher, PROMPTS[1], max_tokens=2)
        batcher.step()  # prefill and the first decoding step
    finally:
        hook.remove()
    assert len(sequence.prompt_ids) > 1
    assert positions == [1, 1]


def test_prompt_logprobs_cover_every_prompt_token_after_bos(model_and_tokenizer: tuple[Any, Any]) -> None:
    model, tokenizer = model_and_tokenizer
    batcher = ContinuousBatcher(model, tokenizer)
    sequence, events = submit(batcher, PROMPTS[1], max_tokens=1, logprobs=0, prompt_logprobs=True)
    run_to_end(batcher, sequence)
    prompt_entries = events[-1]["prompt_logprobs"]
    assert "".join(e["token"] for e in prompt_entries) == PROMPTS[1]
    assert all(isinstance(e["logprob"], float) and e["logprob"] <= 0 for e in prompt_entries)


def test_json_schema_response_format_makes_a_random_model_write_valid_json(
    model_and_tokenizer: tuple[Any, Any],
) -> None:
    import json

    model, tokenizer = model_and_tokenizer
    batcher = ContinuousBatcher(model, tokenizer)
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "label": {"type": "string", "maxLength": 5}},
        "required": ["ok", "label"],
        "additionalProperties": False,
    }
    response_format = {"type": "json_schema", "schema": schema}
    free, _ = submit(batcher, PROMPTS[0], max_tokens=60)  # an unconstrained neighbour in the same batch
    request = GenerationRequest(prompt=PROMPTS[0], max_tokens=60, response_format=response_format)
    events: list[dict[str, Any]] = []
    sequence = Sequence(
        request, batcher.tokenize(PROMPTS[0], 60), events.append, matcher=batcher.matcher(response_format)
    )
    batcher.submit(sequence)
    run_to_end(batcher, sequence)
    run_to_end(batcher, free)
    end = events[-1]
    assert end["stop_reason"] == "end_turn", end
    value = json.loads(end["text"])
    assert set(value) == {"ok", "label"} and isinstance(value["ok"], bool) and isinstance(value["label"], str)
    assert len(value["label"]) <= 5


def test_json_object_response_format_and_bad_schemas(model_and_tokenizer: tuple[Any, Any]) -> None:
    import json

    model, tokenizer = model_and_tokenizer
    batcher = ContinuousBatcher(model, tokenizer)
    response_format = {"type": "json_object"}
    events: list[dict[str, Any]] = []
    prompt = "User: Ticket: my invoice is wrong\nAssistant:"
    request = GenerationRequest(prompt=prompt, max_tokens=200, response_format=response_format)
    sequence = Sequence(request, batcher.tokenize(prompt, 200), events.append, matcher=batcher.matcher(response_format))
    batcher.submit(sequence)
    sampled_events: list[dict[str, Any]] = []
    request = GenerationRequest(prompt="x", max_tokens=8, response_format=response_format, temperature=0.7, seed=3)
    sampled = Sequence(
        request, batcher.tokenize("x", 8), sampled_events.append, matcher=batcher.matcher(response_format)
    )
    batcher.submit(sampled)
    run_to_end(batcher, sequence)
    run_to_end(batcher, sampled)
    assert events[-1]["stop_reason"] == "end_turn" and isinstance(json.loads(events[-1]["text"]), dict)
    # Out of tokens before the object closed: a partial document and "max_tokens" (OpenAI's "length").
    assert sampled_events[-1]["stop_reason"] == "max_tokens" and sampled_events[-1]["text"].startswith("{")
    with pytest.raises(ValueError, match="not supported"):
        batcher.matcher({"type": "yaml"})
    with pytest.raises(ValueError):
        batcher.matcher({"type": "json_schema", "schema": {"type": "no-such-type"}})


def test_top_k_one_is_greedy_even_when_sampling(model_and_tokenizer: tuple[Any, Any]) -> None:
    model, tokenizer = model_and_tokenizer
    batcher = ContinuousBatcher(model, tokenizer)
    batcher.eos_ids = set()
    greedy, _ = submit(batcher, PROMPTS[0], max_tokens=8)
    sampled, _ = submit(batcher, PROMPTS[0], max_tokens=8, temperature=1.0, top_k=1, seed=5)
    run_to_end(batcher, greedy)
    run_to_end(batcher, sampled)
    assert sampled.generated == greedy.generated


def test_a_final_assistant_message_is_continued_not_repeated(model_and_tokenizer: tuple[Any, Any]) -> None:
    from tuneforge.model.prompts import render_prompt

    batcher = ContinuousBatcher(*model_and_tokenizer)
    conversation = {
        "system": [],
        "messages": [
            {"role": "user", "content": [{"text": "Say it"}]},
            {"role": "assistant", "content": [{"text": "The answer is"}]},
        ],
    }
    rendered = batcher.render(GenerationRequest(max_tokens=4, conversation=conversation))
    assert rendered.text == render_prompt(conversation) + " The answer is" == "User: Say it\nAssistant: The answer is"
    assert rendered.ids == batcher.tokenize(rendered.text, 4)
    assert rendered.strip_leading_space is False
    plain = batcher.render(
        GenerationRequest(max_tokens=4, conversation={"system": [], "messages": conversation["messages"][:1]})
    )
    assert (plain.text, plain.strip_leading_space) == ("User: Say it\nAssistant:", True)


def test_logit_bias_and_penalties_steer_greedy_decoding(model_and_tokenizer: tuple[Any, Any]) -> None:
    model, tokenizer = model_and_tokenizer
    batcher = ContinuousBatcher(model, tokenizer)
    batcher.eos_ids = set()
    (z,) = tokenizer.encode("z", add_special_tokens=False)
    biased, _ = submit(batcher, PROMPTS[0], max_tokens=6, logit_bias={z: 100.0})
    present, _ = submit(batcher, PROMPTS[0], max_tokens=12, presence_penalty=1000.0)
    frequent, _ = submit(batcher, PROMPTS[0], max_tokens=12, frequency_penalty=1000.0)
    plain, _ = submit(batcher, PROMPTS[0], max_tokens=12, logprobs=1)
    for sequence in (biased, present, frequent, plain):
        run_to_end(batcher, sequence)
    assert biased.generated == [z] * 6
    assert len(set(present.generated)) == 12 and len(set(frequent.generated)) == 12, "no token comes twice"
    assert plain.generated == solo_greedy(model, tokenizer, PROMPTS[0], 12), "neighbours' settings stay in their rows"
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        batcher.check_logit_bias({10_000: 1.0})


def lone_step(model: Any, max_length: int, compile_mode: str | None = None) -> LoneSequenceStep:
    lone = LoneSequenceStep(model, max_length, compile_mode=compile_mode)
    lone.prepare()
    assert lone.ready.is_set(), lone.failure
    return lone


def test_a_lone_sequence_decodes_in_the_static_step_and_hands_its_cache_back_when_others_join(
    model_and_tokenizer: tuple[Any, Any],
) -> None:
    model, tokenizer = model_and_tokenizer
    batcher = ContinuousBatcher(model, tokenizer, max_batch=8)
    batcher.eos_ids = set()
    batcher.lone = lone_step(model, 128)
    first, _ = submit(batcher, PROMPTS[0], max_tokens=20)
    batcher.step()
    batcher.step()
    assert batcher._lone_active, "a lone sequence should decode in the static step"
    others = [submit(batcher, p, max_tokens=6)[0] for p in PROMPTS[1:]]
    batcher.step()
    assert not batcher._lone_active and batcher.running == 3, "joining requests take the cache back"
    lone_again = False
    while batcher.running:
        batcher.step()
        lone_again |= batcher._lone_active
    assert lone_again, "the first request, alone again after the others ended, should return to the static step"
    for sequence in [first, *others]:
        assert sequence.generated == solo_greedy(model, tokenizer, sequence.request.prompt, sequence.request.max_tokens)


def test_a_request_longer_than_the_static_cache_decodes_in_the_dynamic_one(
    model_and_tokenizer: tuple[Any, Any],
) -> None:
    model, tokenizer = model_and_tokenizer
    batcher = ContinuousBatcher(model, tokenizer, max_batch=8)
    batcher.eos_ids = set()
    batcher.lone = lone_step(model, 16)
    sequence, _ = submit(batcher, PROMPTS[0], max_tokens=12)  # about 30 prompt tokens + 12 > 16
    while not sequence.cancelled.is_set():
        batcher.step()
        assert not batcher._lone_active
    assert sequence.generated == solo_greedy(model, tokenizer, PROMPTS[0], 12)


def test_the_compiled_lone_step_decodes_generates_greedy_tokens(model_and_tokenizer: tuple[Any, Any]) -> None:
    model, tokenizer = model_and_tokenizer
    batcher = ContinuousBatcher(model, tokenizer, max_batch=8)
    batcher.eos_ids = set()
    batcher.lone = lone_step(model, 64, compile_mode="default")
    sequence, _ = submit(batcher, PROMPTS[0], max_tokens=12)
    used = False
    while not sequence.cancelled.is_set():
        batcher.step()
        used |= batcher._lone_active
    assert used
    assert sequence.generated == solo_greedy(model, tokenizer, PROMPTS[0], 12)
