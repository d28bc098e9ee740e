"""The advisor: data profiling, the rules of docs/customization-approaches.md, and ``POST /advice``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tuneforge.advisor.bakeoff import Arm, completion, make_plan, recommend
from tuneforge.advisor.profile import LABELED, PROMPTS, TEXT, profile, read_examples
from tuneforge.advisor.rules import (
    CONTINUED_PRE_TRAINING,
    DISTILLATION,
    FINE_TUNING,
    PREFERENCE_TUNING,
    PROMPT_ONLY,
    RAG,
    Goals,
    advise,
    arms,
    goals_from_options,
)
from tuneforge.api.app import create_app
from tuneforge.data.tasks import (
    make_changing_facts,
    make_classification_task,
    make_conversation_task,
    make_domain_documents,
)
from tuneforge.errors import ValidationException
from tuneforge.settings import Settings
from tuneforge.storage import ObjectStore


def jsonl(records: list[dict[str, object]]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def test_profile_tells_labeled_prompts_and_text_apart_and_measures_repetition() -> None:
    tickets, _ = make_conversation_task(n_train=50, n_test=1, seed=1)
    labeled = profile(read_examples(jsonl(tickets)))
    assert (labeled.kind, labeled.records) == (LABELED, 50)
    assert labeled.answer_tokens_p50 > 0 and labeled.prompt_tokens_max >= labeled.prompt_tokens_p50 > 0
    prompts = profile(read_examples(jsonl([{"messages": t["messages"][:1]} for t in tickets])))
    assert prompts.kind == PROMPTS and prompts.answer_tokens_p50 == 0
    documents, _, _ = make_domain_documents(n_train=30, n_test=1)
    assert profile(read_examples(jsonl(documents))).kind == TEXT

    repeated = profile(read_examples(jsonl([{"prompt": "Same question?", "completion": "yes"}] * 4)))
    assert repeated.duplicate_share == 0.75 and repeated.distinct_records == 1
    assert repeated.distinct_bigram_ratio == 0.25
    varied = profile(read_examples(jsonl([{"prompt": f"q{i} about {i * 7}", "completion": "a"} for i in range(4)])))
    assert varied.duplicate_share == 0 and varied.distinct_bigram_ratio == 1.0


def test_profile_refuses_a_record_of_no_known_format_naming_line_and_field() -> None:
    with pytest.raises(ValidationException, match=r'line 2, field "completion": expected a non-empty string'):
        read_examples(b'{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": ""}\n')
    with pytest.raises(ValidationException, match="line 1: not valid JSON"):
        read_examples(b"{nope\n")
    with pytest.raises(ValidationException, match='line 1: no "prompt"'):
        read_examples(b'{"text": "x"}\n')


def labeled_profile(count: int) -> object:
    train, _ = make_classification_task(n_train=count, n_test=1, seed=3)
    return profile(read_examples(jsonl(train)))


def test_rules_follow_the_customization_approaches_doc() -> None:
    many, few = labeled_profile(200), labeled_profile(5)
    documents, _, _ = make_domain_documents(n_train=60, n_test=1)
    corpus = profile(read_examples(jsonl(documents)))

    assert advise(many, Goals()).approach == FINE_TUNING
    assert advise(few, Goals()).approach == PROMPT_ONLY
    changing = advise(many, Goals(knowledgeChanges=True), corpus)
    assert changing.approach == RAG and "knowledge changes" in changing.reasons[0]
    assert {a["approach"] for a in changing.alternatives} == {FINE_TUNING, CONTINUED_PRE_TRAINING}
    assert advise(many, Goals(mustCite=True)).approach == RAG
    assert advise(corpus, Goals()).approach == RAG, "a small stable corpus: retrieval, not training"
    large = profile(read_examples(jsonl([{"input": f"document {i} says {i * 3}"} for i in range(1000)])))
    assert advise(large, Goals()).approach == CONTINUED_PRE_TRAINING
    distil = advise(many, Goals(teacherModelIdentifier="tuneforge.forge-small-v1:0:512", latencyBudgetMs=50))
    assert distil.approach == DISTILLATION and len(distil.reasons) == 2
    tuned = advise(many, Goals(qualityTarget=0.9))
    assert "AUTOMATIC_TUNING" in [a["approach"] for a in tuned.alternatives]

    assert arms(changing, has_documents=True) == [PROMPT_ONLY, FINE_TUNING, CONTINUED_PRE_TRAINING, RAG]
    assert arms(distil, has_documents=False) == [PROMPT_ONLY, FINE_TUNING, DISTILLATION]


def test_preference_pairs_get_preference_tuning_in_either_spelling_and_bad_ones_their_line() -> None:
    def openai_pair(i: int) -> dict[str, object]:
        return {
            "input": {"messages": [{"role": "user", "content": f"Reply to ticket {i}"}]},
            "preferred_output": [{"role": "assistant", "content": f"Sorry about ticket {i}; fixed."}],
            "non_preferred_output": [{"role": "assistant", "content": "Not my problem."}],
        }

    def bedrock_pair(i: int) -> dict[str, object]:
        return {
            "messages": [{"role": "user", "content": [{"text": f"Reply to ticket {i}"}]}],
            "preferredResponse": {"role": "assistant", "content": [{"text": f"Sorry about ticket {i}; fixed."}]},
            "nonPreferredResponse": {"role": "assistant", "content": [{"text": "Not my problem."}]},
        }

    for pair in (openai_pair, bedrock_pair):
        examples = read_examples(jsonl([pair(i) for i in range(40)]))
        assert examples[3].prompt == "Reply to ticket 3" and examples[3].answer == "Sorry about ticket 3; fixed."
        advice = advise(profile(examples), Goals())
        assert advice.approach == PREFERENCE_TUNING and "DPO" in advice.reasons[0]
        assert [a["approach"] for a in advice.alternatives] == [FINE_TUNING, PROMPT_ONLY]
        assert advise(profile(read_examples(jsonl([pair(i) for i in range(5)]))), Goals()).approach == PROMPT_ONLY
    same = {**openai_pair(1), "non_preferred_output": openai_pair(1)["preferred_output"]}
    with pytest.raises(ValidationException, match='line 2, field "non_preferred_output": the same answer'):
        read_examples(jsonl([openai_pair(0), same]))


def test_goal_options_parse_and_refuse_by_name() -> None:
    goals = goals_from_options(["quality=90", "latency-ms=300", "knowledge-changes", "cite=no", "teacher=m"])
    assert goals == Goals(
        qualityTarget=0.9, latencyBudgetMs=300, knowledgeChanges=True, mustCite=False, teacherModelIdentifier="m"
    )
    with pytest.raises(ValidationException, match="unknown goal"):
        goals_from_options(["speed=1"])
    with pytest.raises(ValidationException, match="latency-ms=NUMBER"):
        goals_from_options(["latency-ms=fast"])


def test_advice_endpoint_shares_the_rules_and_refuses_bad_bodies(fast_tmp: Path) -> None:
    settings = Settings(data_dir=fast_tmp / "data")
    store = ObjectStore.from_settings(settings)
    train, _ = make_classification_task(n_train=120, n_test=1, seed=3)
    documents, _, _ = make_domain_documents(n_train=20, n_test=1)
    store.write_bytes("s3://advice/train.jsonl", jsonl(train))
    store.write_bytes("s3://advice/docs/a.jsonl", jsonl(documents[:10]))
    store.write_bytes("s3://advice/docs/b.jsonl", jsonl(documents[10:]))
    with TestClient(create_app(settings, run_supervisor=False), base_url="http://127.0.0.1") as client:
        response = client.post(
            "/advice",
            json={
                "trainingDataUri": "s3://advice/train.jsonl",
                "documentsUri": "s3://advice/docs/",
                "goals": {"knowledgeChanges": True},
            },
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["approach"] == RAG and body["profile"]["records"] == 120
        assert body["documentsProfile"]["records"] == 20
        assert body["bakeOffArms"] == [PROMPT_ONLY, FINE_TUNING, CONTINUED_PRE_TRAINING, RAG]
        for bad, message in (
            ({"trainingDataUri": "s3://advice/none.jsonl"}, "does not exist"),
            ({"trainingDataUri": "/etc/passwd"}, "expected an s3:// URI"),
            ({"trainingDataUri": "s3://advice/train.jsonl", "goals": {"speed": 1}}, "unknown member 'speed'"),
            ({"trainingDataUri": "s3://advice/train.jsonl", "extra": 1}, "unknown member 'extra'"),
        ):
            refused = client.post("/advice", json=bad)
            assert refused.status_code == 400, refused.text
            assert refused.headers["x-amzn-ErrorType"].startswith("ValidationException")
            assert message in refused.json()["message"]


def test_rag_answers_are_scored_without_a_restated_prompt() -> None:
    assert completion("The capital of Tolbek is", "The capital of Tolbek is Quelmerlem.") == " Quelmerlem."
    assert completion("The capital of Tolbek is", " the capital of tolbek is X") == " X"
    assert completion("Ticket: refund\nCategory:", "billing") == "billing"


def test_the_bake_off_plan_states_its_budget_and_sizes_the_sample_to_it() -> None:
    before, after, questions = make_changing_facts(seed=0)
    examples = read_examples(jsonl(questions))
    documents, updated = read_examples(jsonl(before)), read_examples(jsonl(after))
    arms_wanted = [PROMPT_ONLY, FINE_TUNING, CONTINUED_PRE_TRAINING, RAG]
    plan = make_plan(
        examples,
        documents,
        arms_wanted,
        Goals(),
        budget_minutes=1.5,
        base_model="b",
        student_model="s",
        generator=None,
        task_type="QuestionAndAnswer",
        updated_documents=updated,
        held_out=12,
    )
    assert plan.arms == [PROMPT_ONLY, CONTINUED_PRE_TRAINING, RAG], "no records left to fine-tune on"
    assert plan.generator == "b" and plan.epochs[CONTINUED_PRE_TRAINING] == 4
    described = "\n".join(plan.describe())
    assert described.startswith("budget: 1.5 min; training jobs still running after 0.9 min are stopped")
    assert "knowledge base over 12 documents (the updated ones)" in described
    labeled = read_examples(jsonl(make_classification_task(n_train=400, n_test=1, seed=1)[0]))
    sized = make_plan(
        labeled,
        documents,
        [PROMPT_ONLY, FINE_TUNING, RAG],
        Goals(),
        budget_minutes=2,
        base_model="b",
        student_model="s",
        generator=None,
        task_type="Classification",
    )
    assert (len(sized.held_out), len(sized.train)) == (50, 80)
    assert "  RAG: knowledge base over 12 documents, RetrieveAndGenerate with b (top 5 passages)" in sized.describe()
    with pytest.raises(ValidationException, match="--held-out must be between 1 and the 12 labeled records"):
        make_plan(
            examples,
            [],
            [PROMPT_ONLY],
            Goals(),
            budget_minutes=1,
            base_model="b",
            student_model="s",
            generator=None,
            task_type="QuestionAndAnswer",
            held_out=13,
        )


def test_the_measured_recommendation_weighs_quality_cost_and_the_goals() -> None:
    def measured(name: str, quality: float, cost: float, latency: float) -> Arm:
        return Arm(name, "b", "measured", quality=quality, serving_per_1k=cost, latency_p50_ms=latency)

    arms_run = [
        measured(PROMPT_ONLY, 0.1, 0.01, 100),
        measured(FINE_TUNING, 0.95, 0.03, 100),
        measured(RAG, 0.96, 0.20, 900),
        Arm(CONTINUED_PRE_TRAINING, "b", "cut by the budget"),
    ]
    assert recommend(arms_run, Goals())["approach"] == FINE_TUNING, "within 0.02 of the best, and cheaper"
    assert recommend(arms_run, Goals(qualityTarget=0.05))["approach"] == PROMPT_ONLY
    assert recommend(arms_run[1:], Goals(latencyBudgetMs=500, qualityTarget=0.96))["approach"] == FINE_TUNING
    assert recommend([measured(PROMPT_ONLY, 0.0, 0.01, 100)], Goals())["approach"] is None
    assert recommend(arms_run[3:], Goals())["approach"] is None
